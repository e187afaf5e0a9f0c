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
		Images:   Images{},
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

// Stacks implements session.Kernel (dm.Stacks).
func (k Kernel) Stacks(ctx context.Context) ([]session.StackInfo, error) {
	sts, err := dm.Stacks(k.dm())
	if err != nil {
		return nil, err
	}
	out := make([]session.StackInfo, 0, len(sts))
	for _, s := range sts {
		si := session.StackInfo{Name: s.Name, HasOrigin: s.HasOrigin, HasReal: s.HasReal, OriginDev: s.OriginDev,
			RawDev: s.RawDev, OriginOpen: s.OriginOpen, NeedsRepair: s.NeedsRepair}
		for _, sn := range s.Snapshots {
			ss := sn.Status
			info := session.SnapshotInfo{N: sn.N, Dev: sn.Dev, Allocated: ss.Allocated, Total: ss.Total, Metadata: ss.Metadata}
			switch ss.State {
			case dm.SnapshotActive:
				info.State = session.SnapshotActive
			case dm.SnapshotInvalid:
				info.State = session.SnapshotInvalid
			case dm.SnapshotOverflow:
				info.State = session.SnapshotOverflow
			default:
				info.State = session.SnapshotUnknown
			}
			si.Snapshots = append(si.Snapshots, info)
		}
		out = append(out, si)
	}
	return out, nil
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
			DevNum: spec.Identity.Dev,
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

// Images is session.Images over package dm's loop devices.
type Images struct{}

var _ session.Images = Images{}

// Loops implements session.Images (dm.LoopsOf).
func (Images) Loops(_ context.Context, path string) ([]session.ImageLoop, error) {
	loops, err := dm.LoopsOf(path)
	if err != nil {
		return nil, err
	}
	out := make([]session.ImageLoop, 0, len(loops))
	for _, l := range loops {
		out = append(out, session.ImageLoop{Path: l.Path, Dev: session.DevNum(l.Dev), DirectIO: l.DirectIO})
	}
	return out, nil
}

// Bind implements session.Images: an auto-clear loop device over path,
// with direct I/O where the file's filesystem allows it (the kernel drops
// it silently where not; ImageLoop.DirectIO says which).
func (Images) Bind(_ context.Context, path string) (session.ImageLoop, func() error, error) {
	l, err := dm.AttachLoop(path, dm.LoopOptions{AutoClear: true, DirectIO: true})
	if err != nil {
		return session.ImageLoop{}, nil, err
	}
	return session.ImageLoop{Path: l.Path, Dev: session.DevNum(l.Dev), DirectIO: l.DirectIO}, l.Close, nil
}

// SetMark implements session.Store (snapstore.SetMark).
func (Store) SetMark(_ context.Context, dir string, m session.Mark) (session.Marked, error) {
	label, pinned, err := snapstore.SetMark(dir, snapstore.Mark{Label: m.Label, Pinned: m.Pinned})
	return session.Marked{Dir: dir, Label: label, Pinned: pinned}, err
}
