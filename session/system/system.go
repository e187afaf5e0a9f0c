// Package system wires the session life cycle to the running system: the
// session.Kernel interface over package dm (device-mapper stacks and loop
// devices), the session.Store interface over package snapstore (session
// directories, state.json, conversion), and the superblock prober. Each
// method is a thin translation; the logic lives in the packages on either
// side.
package system

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/filemap"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

// NewManager returns a Manager for the running system with the given state
// directory, also scanning store for unfinished sessions.
func NewManager(stateDir, store string) *session.Manager {
	return &session.Manager{
		StateDir: stateDir,
		Kernel:   Kernel{},
		Store:    Store{},
		Prober:   session.SystemProber{},
		Stores:   []string{store},
		HostLock: session.HostLockPath,
	}
}

// Kernel is session.Kernel over package dm. DM nil means the running kernel
// (dm.System); tests give dmtest.Fake.
type Kernel struct {
	DM dm.Kernel
}

var _ session.Kernel = Kernel{}

func (k Kernel) dm() dm.Kernel {
	if k.DM == nil {
		return dm.System{}
	}
	return k.DM
}

func (k Kernel) stack(name, device string) dm.Stack {
	return dm.Stack{Name: name, Device: device, DM: k.dm()}
}

func dev(d dm.Dev) session.DevNum { return session.DevNum{Major: d.Major, Minor: d.Minor} }

// Stacks implements session.Kernel.
func (k Kernel) Stacks(ctx context.Context) ([]session.StackInfo, error) {
	m := k.dm()
	items, err := m.List()
	if err != nil {
		return nil, err
	}
	stacks := map[string]*session.StackInfo{}
	cows := map[string][]int{} // stack name → numbers of its COW devices
	snaps := map[string]bool{} // "name/N" of every snapshot device
	get := func(name string) *session.StackInfo {
		if s, ok := stacks[name]; ok {
			return s
		}
		s := &session.StackInfo{Name: name}
		stacks[name] = s
		return s
	}
	for _, it := range items {
		if !strings.HasPrefix(it.Name, dm.Prefix) {
			continue
		}
		info, err := m.Info(it.Name)
		if errors.Is(err, dm.ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		// Devices are recognised by UUID (dm.ParseUUID), not by name, so
		// that another dmsnap-* device (a view, say) is never taken for
		// part of a stack. The COW devices, DMSNAP-<name>-cow<N>, are not
		// listed: one without its snapshot makes the stack need repair.
		name, part, ok := dm.ParseUUID(info.UUID)
		if !ok {
			continue
		}
		if it.Name != dm.Prefix+name+partSuffix(part) {
			continue // a UUID that does not match its name: not ours
		}
		broken := info.Suspended || info.Inactive
		switch {
		case part == "origin":
			s := get(name)
			s.HasOrigin, s.OriginDev, s.OriginOpen = info.LiveTable, dev(info.Dev), int(info.OpenCount)
			s.NeedsRepair = s.NeedsRepair || broken
		case part == "real":
			s := get(name)
			s.HasReal = info.LiveTable
			s.NeedsRepair = s.NeedsRepair || broken
			if info.LiveTable {
				if tbl, err := m.Table(it.Name); err == nil && len(tbl) == 1 {
					if t, err := dm.ParseTarget(tbl[0]); err == nil {
						if l, ok := t.(dm.Linear); ok {
							s.RawDev = dev(l.Device)
						}
					}
				}
			}
		case strings.HasPrefix(part, "cow"):
			n, err := strconv.Atoi(part[len("cow"):])
			if err != nil || n < 0 {
				continue
			}
			cows[name] = append(cows[name], n)
			// Left suspended or with a new table loaded: a crash while its
			// fast part grew (dm.Stack.GrowCOW); the snapshot's I/O waits.
			s := get(name)
			s.NeedsRepair = s.NeedsRepair || broken
		case strings.HasPrefix(part, "snap"):
			n, err := strconv.Atoi(part[len("snap"):])
			if err != nil || n < 0 {
				continue
			}
			s := get(name)
			snaps[name+"/"+strconv.Itoa(n)] = true
			if !info.LiveTable {
				s.NeedsRepair = true // a snapshot device that never got its table
				continue
			}
			s.NeedsRepair = s.NeedsRepair || broken
			snap, ok, err := k.snapshot(it.Name, n, info)
			if err != nil {
				return nil, err
			}
			if ok {
				s.Snapshots = append(s.Snapshots, snap)
			}
		}
	}
	// A COW device whose snapshot is not there is a crash's leftover
	// (between the two at arming, or at removal): Repair removes it.
	for name, ns := range cows {
		s := get(name)
		for _, n := range ns {
			if !snaps[name+"/"+strconv.Itoa(n)] {
				s.NeedsRepair = true
			}
		}
	}
	out := make([]session.StackInfo, 0, len(stacks))
	for _, s := range stacks {
		out = append(out, *s)
	}
	return out, nil
}

func partSuffix(part string) string {
	if part == "origin" {
		return ""
	}
	return "-" + part
}

// snapshot reads a snapshot device's status. A snapshot-merge (a restore
// in progress) is not reported: it belongs to the restore, not to a session.
func (k Kernel) snapshot(name string, n int, info dm.DeviceInfo) (session.SnapshotInfo, bool, error) {
	st, err := k.dm().Status(name)
	if errors.Is(err, dm.ErrNotFound) {
		return session.SnapshotInfo{}, false, nil
	}
	if err != nil {
		return session.SnapshotInfo{}, false, err
	}
	if len(st) != 1 || st[0].Type != "snapshot" {
		return session.SnapshotInfo{}, false, nil
	}
	ss, err := dm.ParseSnapshotStatus(st[0].Params)
	if err != nil {
		return session.SnapshotInfo{}, false, fmt.Errorf("%s: %w", name, err)
	}
	out := session.SnapshotInfo{N: n, Dev: dev(info.Dev), Allocated: ss.Allocated, Total: ss.Total, Metadata: ss.Metadata}
	switch ss.State {
	case dm.SnapshotActive:
		out.State = session.SnapshotActive
	case dm.SnapshotInvalid:
		out.State = session.SnapshotInvalid
	case dm.SnapshotOverflow:
		out.State = session.SnapshotOverflow
	default:
		out.State = session.SnapshotUnknown
	}
	return out, true, nil
}

// StackUp implements session.Kernel.
func (k Kernel) StackUp(_ context.Context, name, devicePath string) error {
	return k.stack(name, devicePath).Build()
}

// AttachSnapshot implements session.Kernel: the session's COW device over
// cowFile (dm.Stack.AttachCOW: the written part of the file mapped straight
// to the store's block device where the store allows it, the rest through
// a loop device over the file), then the snapshot over it without zeroing
// the COW (dm.Stack.ReattachSnapshot). When the snapshot cannot be made,
// the COW device goes again.
func (k Kernel) AttachSnapshot(_ context.Context, name string, n int, cowFile string, chunkSectors uint32) error {
	s := k.stack(name, "")
	cow, err := s.AttachCOW(n, cowFile, filepath.Join(filepath.Dir(cowFile), snapstore.CowTailFile))
	if err != nil {
		return err
	}
	if err := s.ReattachSnapshot(n, cow.Path(), chunkSectors); err != nil {
		if rerr := s.RemoveCOW(n); rerr != nil {
			return errors.Join(err, fmt.Errorf("removing its COW device: %w", rerr))
		}
		return err
	}
	return nil
}

// RemoveSnapshot implements session.Kernel.
func (k Kernel) RemoveSnapshot(_ context.Context, name string, n int) error {
	err := k.stack(name, "").RemoveSnapshot(n)
	if errors.Is(err, dm.ErrNotFound) {
		return nil
	}
	return err
}

// StackDown implements session.Kernel.
func (k Kernel) StackDown(_ context.Context, name string) error {
	return k.stack(name, "").Teardown()
}

// FileUsers implements session.Kernel (dm.FileUsers); a missing file has
// none.
func (k Kernel) FileUsers(_ context.Context, path string) ([]string, error) {
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return k.dm().FileUsers(path)
}

// Repair implements session.Kernel.
func (k Kernel) Repair(_ context.Context, name string) error {
	return k.stack(name, "").Repair()
}

// Store is session.Store over package snapstore. Options are passed to
// snapstore.Convert.
type Store struct {
	Options snapstore.ConvertOptions
	// Users lists what in the kernel holds or writes a file (nil:
	// dm.FileUsers). Convert and Discard refuse a session whose COW file
	// has any.
	Users func(path string) ([]string, error)
	// ReleaseWait is how long Convert and Discard wait for the users to let
	// go (0: defaultReleaseWait).
	ReleaseWait time.Duration
}

// defaultReleaseWait is how long Convert and Discard wait for loop devices
// to let go of a COW file: an auto-clear loop device is detached when the
// table that used it is removed, which the kernel may finish just after
// the removal returns.
const defaultReleaseWait = 5 * time.Second

// checkUnused refuses to touch dir while the kernel holds or writes its COW
// file (or its tail), whatever the registry says: the registry may be
// missing, damaged, or another state directory's.
func (s Store) checkUnused(ctx context.Context, dir string) error {
	users := s.Users
	if users == nil {
		users = dm.FileUsers
	}
	wait := s.ReleaseWait
	if wait <= 0 {
		wait = defaultReleaseWait
	}
	deadline := time.Now().Add(wait)
	for {
		var all []string
		for _, name := range []string{snapstore.CowFile, snapstore.CowTailFile} {
			p := filepath.Join(dir, name)
			if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
				continue
			}
			u, err := users(p)
			if err != nil {
				return fmt.Errorf("%s: checking what uses it: %w", p, err)
			}
			all = append(all, u...)
		}
		if len(all) == 0 {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s: the kernel still uses its COW (%s): not touched; its snapshot must be removed first (dmsnap status shows whose it is)",
				dir, strings.Join(all, "; "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var _ session.Store = Store{}

// ArmSession implements session.Store (snapstore.CreateSession). When
// that fails — typically a full store, which the watcher retries until it
// has room — the empty directory it may have made is removed, so retries
// do not litter the store with one empty <name>_<seconds> per attempt.
func (Store) ArmSession(_ context.Context, store string, spec session.ArmSpec) (string, error) {
	dir, err := createSession(store, spec)
	if err != nil {
		removeEmptySessionDirs(store, spec.Name)
	}
	return dir, err
}

// removeEmptySessionDirs removes the empty session directories of name in
// store. An empty directory is never a session (CreateSession writes
// state.json first thing), and os.Remove leaves any other one alone. The
// caller holds the state lock, under which sessions are created.
func removeEmptySessionDirs(store, name string) {
	infos, err := snapstore.ListSessions(store)
	if err != nil {
		return
	}
	for _, info := range infos {
		if info.Name == name && info.Status == snapstore.StatusIncomplete && info.Phase == "" {
			os.Remove(info.Dir)
		}
	}
}

func createSession(store string, spec session.ArmSpec) (string, error) {
	return snapstore.CreateSession(store, snapstore.State{
		Name: spec.Name,
		Device: snapstore.Device{
			Path:   spec.DevicePath,
			Size:   spec.Identity.Size,
			DevNum: snapstore.DevNum{Major: spec.Identity.Dev.Major, Minor: spec.Identity.Dev.Minor},
			FSUUID: spec.Identity.FSUUID,
		},
		ChunkSize: spec.ChunkSize,
		Times:     snapstore.Times{Armed: spec.Armed},
		Prealloc:  spec.Prealloc,
		Sequence:  spec.Sequence,
	})
}

// RestorePoints implements session.Store.
func (Store) RestorePoints(_ context.Context, store, name string) (int, error) {
	infos, err := snapstore.ListSessions(store)
	if err != nil {
		return 0, err
	}
	var mine []snapstore.SessionInfo
	for _, info := range infos {
		if info.Name == name {
			mine = append(mine, info)
		}
	}
	return snapstore.CountRestorable(snapstore.RestorePoints(mine)), nil
}

// LastSequence implements session.Store.
func (Store) LastSequence(_ context.Context, store, name string) (int, error) {
	infos, err := snapstore.ListSessions(store)
	if err != nil {
		return 0, err
	}
	last := 0
	for _, info := range infos {
		if info.Name == name {
			last = max(last, info.Sequence)
		}
	}
	return last, nil
}

// COWFile implements session.Store.
func (Store) COWFile(dir string) string { return filepath.Join(dir, snapstore.CowFile) }

// MarkMounted implements session.Store.
func (Store) MarkMounted(_ context.Context, dir string, at time.Time, fsType string) (string, error) {
	return snapstore.MarkMounted(dir, at, fsType)
}

// MarkUnmounted implements session.Store.
func (Store) MarkUnmounted(_ context.Context, dir string, at time.Time) error {
	return snapstore.MarkUnmounted(dir, at)
}

// MarkClosing implements session.Store.
func (Store) MarkClosing(_ context.Context, dir string) error { return snapstore.MarkClosing(dir) }

// MarkInvalid implements session.Store.
func (Store) MarkInvalid(_ context.Context, dir, reason string) error {
	return snapstore.MarkInvalid(dir, reason)
}

// Convert implements session.Store.
// Each conversion step is a crash point (session.CrashpointConvert).
func (s Store) Convert(ctx context.Context, dir string) error {
	if err := s.checkUnused(ctx, dir); err != nil {
		return err
	}
	opts := s.Options
	after := opts.AfterStep
	opts.AfterStep = func(step string) error {
		session.Crashpoint(session.CrashpointConvert + step)
		if after != nil {
			return after(step)
		}
		return nil
	}
	_, err := snapstore.Convert(ctx, dir, opts)
	return err
}

// Discard implements session.Store.
func (s Store) Discard(ctx context.Context, dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := s.checkUnused(ctx, dir); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, snapstore.MetaFile)); err == nil {
		return fmt.Errorf("discard %s: it is a finished session", dir)
	}
	used, err := snapstore.CowUsed(dir)
	if err != nil {
		return fmt.Errorf("discard %s: %w", dir, err)
	}
	if used {
		return fmt.Errorf("discard %s: its COW was used by the kernel and may hold pre-images", dir)
	}
	if err := filemap.UnpinPath(filepath.Join(dir, snapstore.CowFile)); err != nil {
		return fmt.Errorf("discard %s: %w", dir, err)
	}
	return os.RemoveAll(dir)
}

// Pending implements session.Store: the directories of store that have a
// state.json and no meta.json.
func (Store) Pending(_ context.Context, store string) ([]session.PendingSession, error) {
	ents, err := os.ReadDir(store)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []session.PendingSession
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(store, e.Name())
		if _, err := os.Stat(filepath.Join(dir, snapstore.MetaFile)); err == nil {
			continue
		}
		st, err := snapstore.ReadState(dir)
		if err != nil {
			continue // not a dmsnap session directory, or not one we can finish
		}
		used, err := snapstore.CowUsed(dir)
		if err != nil {
			return nil, err
		}
		out = append(out, session.PendingSession{
			Dir: dir, Name: st.Name, Armed: st.Times.Armed, Phase: phase(st.Phase), COWUsed: used,
		})
	}
	return out, nil
}

func phase(p snapstore.Phase) session.SessionState {
	switch p {
	case snapstore.PhaseArmed:
		return session.SessionArmed
	case snapstore.PhaseOpen:
		return session.SessionOpen
	case snapstore.PhaseInvalid:
		return session.SessionInvalid
	}
	return session.SessionClosing
}

var _ session.COWGrower = Kernel{}

// COWUse implements session.COWGrower: the snapshot's frontier, and the
// COW device's fast end and size (dm.Stack.COWInfo).
func (k Kernel) COWUse(_ context.Context, name string, n int) (session.COWUse, error) {
	s := k.stack(name, "")
	st, err := s.SnapshotStatus(n)
	if err != nil {
		return session.COWUse{}, err
	}
	cow, err := s.COWInfo(n)
	if err != nil {
		return session.COWUse{}, err
	}
	return session.COWUse{Allocated: st.Allocated * dm.SectorSize, FastEnd: cow.FastEnd(), Size: cow.Bytes}, nil
}

// GrowCOW implements session.COWGrower (dm.Stack.GrowCOW).
func (k Kernel) GrowCOW(_ context.Context, name string, n int, cowFile string, want uint64, fill func(from, to uint64) (uint64, error)) (session.COWUse, uint64, uint64, error) {
	s := k.stack(name, "")
	cow, from, to, err := s.GrowCOW(n, cowFile, want, dm.GrowFill(fill))
	if err != nil {
		return session.COWUse{}, 0, 0, err
	}
	use := session.COWUse{FastEnd: cow.FastEnd(), Size: cow.Bytes}
	if st, err := s.SnapshotStatus(n); err == nil {
		use.Allocated = st.Allocated * dm.SectorSize
	}
	return use, from, to, nil
}

var _ session.COWFiller = Store{}

// FillCOW implements session.COWFiller (snapstore.FillCow).
func (Store) FillCOW(_ context.Context, dir string, from, to uint64) (uint64, error) {
	end, err := snapstore.FillCow(dir, int64(from), int64(to))
	return uint64(max(end, int64(from))), err
}
