package sessiontest

import (
	"context"
	"fmt"
	"os"
	"slices"

	"github.com/dmsnap/dmsnap/session"
)

// Kernel is the fake device-mapper.
type Kernel struct {
	sys       *System
	stacks    map[string]*stack
	nextMinor uint32
}

type stack struct {
	name      string
	path      string // the device given to StackUp
	hasOrigin bool
	hasReal   bool
	broken    bool // an operation was interrupted: the origin is left suspended
	origin    session.DevNum
	raw       session.DevNum
	snaps     []*snap
}

type snap struct {
	n     int
	dev   session.DevNum
	cow   string      // path at attach time
	file  os.FileInfo // the COW file itself: a loop device follows it across renames
	state session.SnapshotState
	use   session.COWUse // SetCOWUse; GrowCOW moves FastEnd
	base  []byte         // ModelData: the device when the snapshot was taken
	chunk int            // ModelData: chunk size, bytes
	data  uint64         // SetSnapshotData: sectors of pre-images, beyond the metadata
}

var _ session.Kernel = (*Kernel)(nil)

func (k *Kernel) dev() session.DevNum {
	k.nextMinor++
	return session.DevNum{Major: 253, Minor: k.nextMinor}
}

// Stacks implements session.Kernel.
func (k *Kernel) Stacks(context.Context) ([]session.StackInfo, error) {
	k.sys.mu.Lock()
	defer k.sys.mu.Unlock()
	var out []session.StackInfo
	for _, st := range k.stacks {
		info := session.StackInfo{Name: st.name, HasOrigin: st.hasOrigin, HasReal: st.hasReal, OriginDev: st.origin, RawDev: st.raw, NeedsRepair: st.broken}
		if st.hasOrigin && k.sys.mountedLocked(st.origin) {
			info.OriginOpen = 1
		}
		for _, s := range st.snaps {
			info.Snapshots = append(info.Snapshots, session.SnapshotInfo{N: s.n, Dev: s.dev, State: s.state, Allocated: 16 + s.data, Total: 1024, Metadata: 16})
		}
		slices.SortFunc(info.Snapshots, func(a, b session.SnapshotInfo) int { return a.N - b.N })
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b session.StackInfo) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out, nil
}

// StackUp implements session.Kernel.
func (k *Kernel) StackUp(_ context.Context, name, devicePath string) error {
	return k.sys.call("StackUp "+name, func() error {
		if _, ok := k.stacks[name]; ok {
			return fmt.Errorf("stack up %s: dmsnap-%s-real: %w", name, name, errExists)
		}
		id, ok := k.sys.Prober.devices[devicePath]
		if !ok {
			return fmt.Errorf("stack up %s: %s: %w", name, devicePath, os.ErrNotExist)
		}
		if k.sys.mountedLocked(id.Dev) {
			return fmt.Errorf("stack up %s: %s is mounted: %w", name, devicePath, ErrBusy)
		}
		for _, st := range k.stacks {
			if st.hasReal && st.raw == id.Dev {
				return fmt.Errorf("stack up %s: %s is held by dmsnap-%s-real: %w", name, devicePath, st.name, ErrBusy)
			}
		}
		k.stacks[name] = &stack{name: name, path: devicePath, hasReal: true, hasOrigin: true, raw: id.Dev, origin: k.dev()}
		return nil
	})
}

// BuildHalf leaves a half-built stack, as a crash in the middle of a real
// StackUp would: -real only, or the origin without -real.
func (k *Kernel) BuildHalf(name string, raw session.DevNum, withReal, withOrigin bool) {
	k.sys.mu.Lock()
	defer k.sys.mu.Unlock()
	st := &stack{name: name, hasReal: withReal, hasOrigin: withOrigin}
	if withReal {
		st.raw = raw
	}
	if withOrigin {
		st.origin = k.dev()
	}
	k.stacks[name] = st
}

// AttachSnapshot implements session.Kernel.
func (k *Kernel) AttachSnapshot(_ context.Context, name string, n int, cowFile string, chunkSectors uint32) error {
	return k.sys.call(fmt.Sprintf("AttachSnapshot %s %d", name, n), func() error {
		st, ok := k.stacks[name]
		if !ok || !st.hasOrigin || !st.hasReal {
			return fmt.Errorf("attach snapshot %d: stack %s is not complete: %w", n, name, os.ErrNotExist)
		}
		if st.broken {
			return fmt.Errorf("attach snapshot %d: dmsnap-%s is suspended", n, name)
		}
		if chunkSectors == 0 {
			return fmt.Errorf("attach snapshot %d: chunk size 0", n)
		}
		for _, s := range st.snaps {
			if s.n == n {
				return fmt.Errorf("attach snapshot: dmsnap-%s-snap%d: %w", name, n, errExists)
			}
		}
		fi, err := os.Stat(cowFile)
		if err != nil {
			return fmt.Errorf("attach snapshot %d: %w", n, err)
		}
		if k.attachedLocked(cowFile) {
			k.sys.violate("%s is attached twice", cowFile)
		}
		if err := initCOW(cowFile); err != nil {
			return fmt.Errorf("attach snapshot %d: %w", n, err)
		}
		sn := &snap{n: n, dev: k.dev(), cow: cowFile, file: fi, state: session.SnapshotActive, chunk: int(chunkSectors) * 512}
		if k.sys.data != nil {
			if sn.base, err = os.ReadFile(st.path); err != nil {
				return fmt.Errorf("attach snapshot %d: %w", n, err)
			}
		}
		st.snaps = append(st.snaps, sn)
		return nil
	})
}

// RemoveSnapshot implements session.Kernel.
func (k *Kernel) RemoveSnapshot(_ context.Context, name string, n int) error {
	return k.sys.call(fmt.Sprintf("RemoveSnapshot %s %d", name, n), func() error {
		st, ok := k.stacks[name]
		if !ok {
			return nil
		}
		if st.broken {
			return fmt.Errorf("remove snapshot %d: dmsnap-%s is suspended", n, name)
		}
		i := slices.IndexFunc(st.snaps, func(s *snap) bool { return s.n == n })
		if i < 0 {
			return nil
		}
		if k.sys.data != nil && st.snaps[i].state == session.SnapshotActive {
			if err := k.sys.data.keepLocked(st.path, st.snaps[i]); err != nil {
				return fmt.Errorf("remove snapshot %d: %w", n, err)
			}
		}
		st.snaps = slices.Delete(st.snaps, i, i+1)
		if st.hasOrigin && st.hasReal && len(st.snaps) == 0 {
			k.sys.violate("RemoveSnapshot %s %d left the live stack with no snapshot armed", name, n)
		}
		return nil
	})
}

// StackDown implements session.Kernel.
func (k *Kernel) StackDown(_ context.Context, name string) error {
	return k.sys.call("StackDown "+name, func() error {
		st, ok := k.stacks[name]
		if !ok {
			return nil
		}
		if st.hasOrigin && k.sys.mountedLocked(st.origin) {
			return fmt.Errorf("stack down %s: dmsnap-%s is mounted: %w", name, name, ErrBusy)
		}
		if k.sys.data != nil {
			for _, sn := range st.snaps {
				if sn.state == session.SnapshotActive {
					if err := k.sys.data.keepLocked(st.path, sn); err != nil {
						return fmt.Errorf("stack down %s: %w", name, err)
					}
				}
			}
		}
		delete(k.stacks, name)
		k.sys.Images.clearLocked()
		return nil
	})
}

// Repair implements session.Kernel.
func (k *Kernel) Repair(_ context.Context, name string) error {
	return k.sys.call("Repair "+name, func() error {
		if st, ok := k.stacks[name]; ok {
			st.broken = false
		}
		return nil
	})
}

// Break leaves stack name as a crash in the middle of a snapshot operation
// does: the origin suspended, so snapshot operations fail until Repair.
func (k *Kernel) Break(name string) {
	k.sys.mu.Lock()
	defer k.sys.mu.Unlock()
	if st, ok := k.stacks[name]; ok {
		st.broken = true
	}
}

// Invalidate makes the kernel drop snapshot n of stack name, as when its
// COW fills up.
func (k *Kernel) Invalidate(name string, n int) {
	k.sys.mu.Lock()
	defer k.sys.mu.Unlock()
	if st, ok := k.stacks[name]; ok {
		for _, s := range st.snaps {
			if s.n == n {
				s.state = session.SnapshotInvalid
			}
		}
	}
}

// SetOriginDev gives dmsnap-NAME another device number: tests make it the
// number of a real filesystem they mount and unmount, to drive a watcher
// with real mount-table events.
func (k *Kernel) SetOriginDev(name string, dev session.DevNum) {
	k.sys.mu.Lock()
	defer k.sys.mu.Unlock()
	if st, ok := k.stacks[name]; ok {
		st.origin = dev
	}
}

// SetSnapshotData makes snapshot n of stack name report sectors of
// pre-images beyond its metadata (Stacks), as after writes to the origin.
func (k *Kernel) SetSnapshotData(name string, n int, sectors uint64) {
	k.sys.mu.Lock()
	defer k.sys.mu.Unlock()
	if st, ok := k.stacks[name]; ok {
		for _, s := range st.snaps {
			if s.n == n {
				s.data = sectors
			}
		}
	}
}

// OriginDev returns dmsnap-NAME's number (zero when absent).
func (k *Kernel) OriginDev(name string) session.DevNum {
	k.sys.mu.Lock()
	defer k.sys.mu.Unlock()
	if st, ok := k.stacks[name]; ok && st.hasOrigin {
		return st.origin
	}
	return session.DevNum{}
}

// Snapshots returns the numbers of stack name's snapshots, sorted.
func (k *Kernel) Snapshots(name string) []int {
	k.sys.mu.Lock()
	defer k.sys.mu.Unlock()
	var ns []int
	if st, ok := k.stacks[name]; ok {
		for _, s := range st.snaps {
			ns = append(ns, s.n)
		}
	}
	slices.Sort(ns)
	return ns
}

// SnapshotCOW returns the COW file snapshot n of stack name was attached
// with ("" when absent).
func (k *Kernel) SnapshotCOW(name string, n int) string {
	k.sys.mu.Lock()
	defer k.sys.mu.Unlock()
	if st, ok := k.stacks[name]; ok {
		for _, s := range st.snaps {
			if s.n == n {
				return s.cow
			}
		}
	}
	return ""
}

// SnapshotFile returns the COW file snapshot n of stack name holds, as the
// loop device does: the file itself, whatever its path now (nil when absent).
func (k *Kernel) SnapshotFile(name string, n int) os.FileInfo {
	k.sys.mu.Lock()
	defer k.sys.mu.Unlock()
	if st, ok := k.stacks[name]; ok {
		for _, s := range st.snaps {
			if s.n == n {
				return s.file
			}
		}
	}
	return nil
}

// StackNames returns the names of the stacks present, sorted.
func (k *Kernel) StackNames() []string {
	k.sys.mu.Lock()
	defer k.sys.mu.Unlock()
	var out []string
	for n := range k.stacks {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// FileUsers implements session.Kernel: the snapshots whose COW the file is.
func (k *Kernel) FileUsers(_ context.Context, path string) ([]string, error) {
	k.sys.mu.Lock()
	defer k.sys.mu.Unlock()
	fi, err := os.Stat(path)
	if err != nil {
		return nil, nil
	}
	names := make([]string, 0, len(k.stacks))
	for n := range k.stacks {
		names = append(names, n)
	}
	slices.Sort(names)
	var users []string
	for _, name := range names {
		for _, s := range k.stacks[name].snaps {
			if os.SameFile(fi, s.file) {
				users = append(users, fmt.Sprintf("dmsnap-%s-snap%d holds it", name, s.n))
			}
		}
	}
	return users, nil
}

// attachedLocked reports whether the file at path is the COW of a live
// snapshot (compared by inode, as a loop device holds the file itself).
func (k *Kernel) attachedLocked(path string) bool {
	fi, err := os.Stat(path)
	if err != nil {
		return false
	}
	for _, st := range k.stacks {
		for _, s := range st.snaps {
			if os.SameFile(fi, s.file) {
				return true
			}
		}
	}
	return false
}

var _ session.COWGrower = (*Kernel)(nil)

// SetCOWUse sets what COWUse reports for snapshot n of stack name.
func (k *Kernel) SetCOWUse(name string, n int, u session.COWUse) {
	k.sys.mu.Lock()
	defer k.sys.mu.Unlock()
	if s := k.snapLocked(name, n); s != nil {
		s.use = u
	}
}

func (k *Kernel) snapLocked(name string, n int) *snap {
	if st, ok := k.stacks[name]; ok {
		for _, s := range st.snaps {
			if s.n == n {
				return s
			}
		}
	}
	return nil
}

// COWUse implements session.COWGrower.
func (k *Kernel) COWUse(_ context.Context, name string, n int) (session.COWUse, error) {
	k.sys.mu.Lock()
	defer k.sys.mu.Unlock()
	s := k.snapLocked(name, n)
	if s == nil {
		return session.COWUse{}, fmt.Errorf("COW use: dmsnap-%s-snap%d: %w", name, n, os.ErrNotExist)
	}
	return s.use, nil
}

// GrowCOW implements session.COWGrower as dm.Stack.GrowCOW plans it: the
// region from the later of the fast end and the frontier, on whole MiB,
// before the COW's last 4 KiB, filled by fill (called without the fake's
// lock) and then counted as mapped.
func (k *Kernel) GrowCOW(_ context.Context, name string, n int, cowFile string, want uint64, fill func(from, to uint64) (uint64, error)) (after session.COWUse, from, to uint64, err error) {
	const mib = 1 << 20
	err = k.sys.call(fmt.Sprintf("GrowCOW %s %d", name, n), func() error {
		s := k.snapLocked(name, n)
		if s == nil || s.state != session.SnapshotActive {
			return fmt.Errorf("grow COW: dmsnap-%s-snap%d: %w", name, n, os.ErrNotExist)
		}
		if fi, err := os.Stat(cowFile); err != nil || !os.SameFile(fi, s.file) {
			k.sys.violate("GrowCOW %s %d: %s is not the snapshot's COW", name, n, cowFile)
		}
		after = s.use
		from = (max(s.use.FastEnd, s.use.Allocated) + mib - 1) / mib * mib
		to = max(from, min(from+want, s.use.Size-4096)/mib*mib)
		return nil
	})
	if err != nil || to <= from {
		return after, 0, 0, err
	}
	end, err := fill(from, to)
	if err != nil || end <= from {
		return after, 0, 0, err
	}
	k.sys.mu.Lock()
	defer k.sys.mu.Unlock()
	if s := k.snapLocked(name, n); s != nil {
		s.use.FastEnd = end
		after = s.use
	}
	return after, from, end, nil
}
