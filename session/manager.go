package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/internal/hostfiles"
	"github.com/dmsnap/dmsnap/internal/trustdir"
	"github.com/dmsnap/dmsnap/snapstore"
)

// DefaultChunkSize is the snapshot chunk size when none is given (LVM's
// default too).
const DefaultChunkSize = 4096

// Chunk sizes dmsnap accepts, as LVM does: powers of two from 4 KiB to
// 512 KiB. Smaller chunks copy less per write and cost more memory and
// metadata per changed byte (README, "Benchmarks").
const (
	MinChunkSize = 4 << 10
	MaxChunkSize = 512 << 10
)

// maxRounds bounds a reconcile: a plan applied in full leaves nothing to do
// but noting what the kernel assigned (the new origin's number), so a
// reconcile that does not settle within a few rounds is a bug or a kernel
// that does not do what it says.
const maxRounds = 5

// Manager runs the session life cycle of the devices in one state
// directory. Every method takes the state lock for the time it changes
// something, and follows one pattern: record the intent in the registry,
// then reconcile. The zero value is not usable: set StateDir, Kernel, Store
// and Prober.
type Manager struct {
	StateDir string
	Kernel   Kernel
	Store    Store
	Prober   Prober
	// Images binds image files to loop devices (nil: only block devices
	// can be activated).
	Images Images
	// ReadMounts returns the mount table (nil: /proc/self/mountinfo).
	ReadMounts func() ([]MountInfo, error)
	// Stores are scanned for unfinished session directories besides the
	// stores of the registered devices (the default store, typically).
	Stores []string
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// LockWait is how long to wait for the lock (0: DefaultLockWait;
	// NoLockWait: not at all).
	LockWait time.Duration
	// LockNotice, when set, is told once when the lock is found held,
	// before the wait (who holds it, for how long at most it waits).
	LockNotice WaitNotice
	// HostLock, when set, is taken before the state directory's lock
	// (HostLockPath on the running system; tests leave it empty).
	HostLock string
	// Log receives what reconcile does (nil: discarded).
	Log *slog.Logger
	// UdevRule, when set, is the udev rule file kept in step with the
	// registry (hostfiles.UdevRules with Gen, whose empty paths
	// HostFileOptions fills in): rewritten whenever the set of devices or
	// their identities change.
	UdevRule string
	// UnitDir, when set, is the systemd unit directory whose drop-ins
	// (hostfiles.WriteStoresDropIns) order the attach units and the
	// watcher after the mounts of every store in use, kept in step with
	// the registry as the udev rule is.
	UnitDir string
	Gen     hostfiles.Options
}

func (m *Manager) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

func (m *Manager) log() *slog.Logger {
	if m.Log != nil {
		return m.Log
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func (m *Manager) mounts() ([]MountInfo, error) {
	if m.ReadMounts != nil {
		return m.ReadMounts()
	}
	f, err := os.Open(SelfMountInfo)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ms, err := ParseMountInfo(f)
	if err != nil {
		return nil, err
	}
	return ResolveSourceDevs(ms, BlockDevNum), nil
}

// Report is what a reconcile did and what it could not fix.
type Report struct {
	Done   []Action
	Issues []Issue
	// Hold is the origin of device HoldName, held for its pending revert
	// (AttachOptions.Hold); the caller reverts and closes it.
	Hold     *os.File
	HoldName string
}

// Lock takes the host lock (when m.HostLock is set) and the state
// directory's lock, waiting up to m.LockWait. Every state change of every
// command goes through it, so they all wait alike.
func (m *Manager) Lock(ctx context.Context) (*Lock, error) {
	var paths []string
	if m.HostLock != "" {
		paths = append(paths, m.HostLock)
	}
	return acquireLocks(ctx, m.LockWait, m.LockNotice, append(paths, filepath.Join(m.StateDir, LockFile))...)
}

// withLock runs fn with the lock held and the registry loaded.
func (m *Manager) withLock(ctx context.Context, fn func(reg *Registry) error) error {
	l, err := m.Lock(ctx)
	if err != nil {
		return err
	}
	defer l.Release()
	reg, err := LoadRegistry(m.StateDir)
	if err != nil {
		return err
	}
	return fn(reg)
}

// Registry returns the registry as it is on disk. It takes no lock: the
// file is replaced atomically, so a reader sees a whole registry, one that
// may be outdated by the time it is shown.
func (m *Manager) Registry() (*Registry, error) { return LoadRegistry(m.StateDir) }

// Observe gathers what Plan needs: the kernel's stacks, the mount table,
// the raw devices of registered devices whose stack is not complete (looked
// for at hints[name], the registered path, then /dev/disk/by-uuid), and the
// unfinished session directories of every store.
//
// With forced, the device at a hint is taken without comparing identities
// (AttachOptions.ForceIdentity).
func (m *Manager) Observe(ctx context.Context, reg *Registry, hints map[string]string, forced bool) (Observed, error) {
	obs := Observed{Now: m.now(), Stacks: map[string]StackInfo{}, Raw: map[string]RawDevice{}}
	stacks, err := m.Kernel.Stacks(ctx)
	if err != nil {
		return obs, fmt.Errorf("list dmsnap stacks: %w", err)
	}
	for _, s := range stacks {
		obs.Stacks[s.Name] = s
	}
	table, err := m.mounts()
	if err != nil {
		return obs, fmt.Errorf("read mount table: %w", err)
	}
	obs.Mounts = MountsByDev(table, nil)

	for _, d := range reg.Devices {
		st, ok := obs.Stacks[d.Name]
		if ok && st.Complete() && d.Identity.Stable == nil && !st.RawDev.IsZero() && st.RawDev == d.Identity.Dev {
			// Registered by a dmsnap that kept no stable identity: the stack
			// holds the device it was activated on, so what identifies it can
			// be learnt now, before a reboot needs it.
			if id, err := m.Prober.Identify(ctx, d.Path); err == nil && id.Dev == st.RawDev && id.Stable != nil {
				if obs.Learnt == nil {
					obs.Learnt = map[string]Identity{}
				}
				obs.Learnt[d.Name] = id
			}
		}
		if (ok && st.Complete()) || d.State == DeviceDeactivating {
			continue
		}
		var own DevNum // the loop device of a half-built stack's -real
		if ok && st.HasReal {
			own = st.RawDev
		}
		obs.Raw[d.Name] = m.findRaw(ctx, d, hints[d.Name], forced, own)
	}

	stores := slices.Clone(m.Stores)
	for _, d := range reg.Devices {
		stores = append(stores, d.Store)
	}
	slices.Sort(stores)
	scanned := map[string]bool{}
	for _, s := range slices.Compact(stores) {
		if s == "" {
			continue
		}
		// Checked, and by its real path: a session is then known by one
		// directory whatever symlink led to its store, and is never
		// "relocated" to a path through a symlink that can be swapped.
		real, err := trustdir.ResolveStore(s)
		if err != nil {
			return obs, fmt.Errorf("list unfinished sessions: %w", err)
		}
		if scanned[real] {
			continue
		}
		scanned[real] = true
		p, err := m.Store.Pending(ctx, real)
		if err != nil {
			return obs, fmt.Errorf("list unfinished sessions in %s: %w", real, err)
		}
		obs.Pending = append(obs.Pending, p...)
	}
	// A directory no registered session owns is finished as an orphan —
	// unless the kernel still writes its COW: then it is another state
	// directory's, or its registry was lost, and it is live.
	for i, ps := range obs.Pending {
		if ownedBy(reg, ps) {
			continue
		}
		users, err := m.Kernel.FileUsers(ctx, m.Store.COWFile(ps.Dir))
		if err != nil {
			return obs, fmt.Errorf("what uses the COW of %s: %w", ps.Dir, err)
		}
		obs.Pending[i].Users = users
	}
	return obs, nil
}

// findRaw looks for the raw device of d, whose stack is not complete. own
// is the raw device a half-built stack of d still maps (zero: none).
func (m *Manager) findRaw(ctx context.Context, d *Device, hint string, forced bool, own DevNum) RawDevice {
	var tried, mismatch []string
	found := func(p string, id Identity) RawDevice {
		if !id.Image {
			return RawDevice{Path: p, Identity: id}
		}
		problem, err := m.imageProblem(ctx, p, own)
		if err != nil {
			problem = err.Error()
		}
		return RawDevice{Path: p, Identity: id, Problem: problem}
	}
	for _, p := range rawCandidates(d, hint) {
		id, err := m.Prober.Identify(ctx, p)
		if err != nil {
			tried = append(tried, p)
			continue
		}
		if forced && p == hint {
			return found(p, id)
		}
		if err := d.Identity.Matches(id); err != nil {
			mismatch = append(mismatch, fmt.Sprintf("%s: %v", p, err))
			continue
		}
		return found(p, id)
	}
	if len(mismatch) > 0 {
		return RawDevice{Problem: fmt.Sprintf("not re-stacked, the device found is not the one activated: %s; if it really is, `dmsnap attach --force-identity --name %s DEVICE`",
			strings.Join(mismatch, "; "), d.Name)}
	}
	if d.Identity.Image {
		return RawDevice{Problem: fmt.Sprintf("the image file is not there (looked at %s); dmsnap does not look for it elsewhere: protection resumes when it is back (`dmsnap attach %s`)",
			strings.Join(tried, ", "), d.Path)}
	}
	return RawDevice{Problem: fmt.Sprintf("the device is not present (looked at %s); protection resumes when it appears (`dmsnap attach DEVICE`)",
		strings.Join(tried, ", "))}
}

func rawCandidates(d *Device, hint string) []string {
	var c []string
	for _, p := range []string{hint, d.Path} {
		if p != "" && !slices.Contains(c, p) {
			c = append(c, p)
		}
	}
	if d.Identity.FSUUID != "" && !d.Identity.Image {
		c = append(c, "/dev/disk/by-uuid/"+d.Identity.FSUUID)
	}
	return c
}

// scope limits a reconcile.
type scope struct {
	only  []string          // these devices only (nil: all devices and the orphans)
	hints map[string]string // where to look for a device's raw device first
	// forced: the hinted path is the device, whatever its identity
	// (AttachOptions.ForceIdentity); others are checked as usual.
	forced bool
	// deferConvert leaves conversions (and forgetting the converted
	// sessions) to a later reconcile: `dmsnap attach` runs from udev, which
	// kills slow programs, and converting can take minutes.
	deferConvert bool
}

// reconcile plans and applies until nothing is left to do. It stops a
// device at its first failed step and goes on with the others.
func (m *Manager) reconcile(ctx context.Context, reg *Registry, sc scope) (Report, error) {
	var rep Report
	defer m.syncUdev(reg)
	for round := 0; round < maxRounds; round++ {
		obs, err := m.Observe(ctx, reg, sc.hints, sc.forced)
		if err != nil {
			return rep, err
		}
		var acts []Action
		var issues []Issue
		if sc.only == nil {
			acts, issues = Plan(reg, obs)
		} else {
			for _, name := range sc.only {
				if d := reg.Device(name); d != nil {
					a, is := PlanDevice(d, obs)
					acts, issues = append(acts, a...), append(issues, is...)
				}
			}
		}
		if sc.deferConvert {
			acts = withoutConversions(acts)
		}
		rep.Issues = issues
		if len(acts) == 0 {
			return rep, nil
		}
		done, err := m.Apply(ctx, reg, acts)
		rep.Done = append(rep.Done, done...)
		if err != nil {
			return rep, err
		}
	}
	return rep, fmt.Errorf("reconcile did not settle after %d rounds; last steps: %v", maxRounds, rep.Done[max(0, len(rep.Done)-5):])
}

// withoutConversions drops the conversions from a plan, with the steps that
// forget the sessions they convert.
func withoutConversions(acts []Action) []Action {
	type key struct {
		dev string
		n   int
	}
	skip := map[key]bool{}
	var out []Action
	for _, a := range acts {
		switch a.Kind {
		case ActConvert:
			skip[key{a.Device, a.Session}] = true
			continue
		case ActConvertDir:
			continue
		case ActForgetSession:
			if skip[key{a.Device, a.Session}] {
				continue
			}
		case ActForgetDevice:
			if len(skip) > 0 {
				continue
			}
		}
		out = append(out, a)
	}
	return out
}

// syncUdev rewrites the udev rule and the units' drop-ins when they no
// longer match the registry. A failure is logged, not returned: they
// only matter at the next boot, and the next change retries.
func (m *Manager) syncUdev(reg *Registry) {
	if m.UnitDir != "" {
		if _, err := hostfiles.WriteStoresDropIns(m.UnitDir, RegistryPath(HostFileOptions(m.Gen).StateDir), reg.Stores()); err != nil {
			m.log().Error("systemd drop-in not updated; a device's store may not be mounted before its attach at boot", "dir", m.UnitDir, "err", err)
		}
	}
	if m.UdevRule == "" {
		return
	}
	gen, devs := HostFileOptions(m.Gen), reg.UdevDevices()
	want, err := hostfiles.UdevRules(RegistryPath(gen.StateDir), devs, gen)
	if err == nil {
		if have, rerr := os.ReadFile(m.UdevRule); rerr == nil && string(have) == want {
			return
		}
		err = hostfiles.WriteUdevRules(m.UdevRule, RegistryPath(gen.StateDir), devs, gen)
	}
	if err != nil {
		m.log().Error("udev rule not updated; activated devices may not be re-attached at boot", "file", m.UdevRule, "err", err)
	}
}

// Reconcile brings the kernel and the stores in line with the registry:
// re-stacks registered devices whose tables are gone, re-attaches the armed
// sessions' COW, opens and closes sessions after mounts and unmounts it did
// not see, finishes interrupted conversions, and removes what half-built
// stacks left behind. The watcher runs it at start and on every change.
func (m *Manager) Reconcile(ctx context.Context) (Report, error) {
	var rep Report
	err := m.withLock(ctx, func(reg *Registry) error {
		var err error
		rep, err = m.reconcile(ctx, reg, scope{})
		return err
	})
	return rep, err
}

// Apply performs steps in order, writing the registry to disk after each
// step that changes it. A step that fails is recorded in the registry
// (Device.Error or Session.Error) and the device's remaining steps are
// skipped — except when a closed session's conversion (or discard) fails:
// then only that session's remaining steps are, so one damaged session does
// not hold up the others. The other devices' steps still run. It returns
// the steps done and the failures joined.
func (m *Manager) Apply(ctx context.Context, reg *Registry, acts []Action) ([]Action, error) {
	var done []Action
	var errs []error
	failed := map[string]bool{}
	sessionKey := func(a Action) string { return fmt.Sprintf("%s\x00%d", a.Device, a.Session) }
	for _, a := range acts {
		if failed[a.Device] || (a.Session > 0 && failed[sessionKey(a)]) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return done, errors.Join(append(errs, err)...)
		}
		err := m.apply(ctx, reg, a)
		if err == nil {
			Crashpoint(string(a.Kind))
			m.log().Info("reconcile", "step", string(a.Kind), "device", a.Device, "session", a.Session, "dir", a.Dir, "reason", a.Reason)
			done = append(done, a)
			continue
		}
		if a.Kind == ActConvert || a.Kind == ActDiscard {
			failed[sessionKey(a)] = true
		} else {
			failed[a.Device] = true
		}
		err = deviceErr(stepOp(a), a.Device, "", err)
		m.log().Error("reconcile", "step", string(a.Kind), "device", a.Device, "session", a.Session, "err", err)
		errs = append(errs, err)
		if d := reg.Device(a.Device); d != nil {
			if s := d.Session(a.Session); s != nil {
				s.Error = err.Error()
			} else {
				d.Error = err.Error()
			}
			if serr := reg.Save(m.StateDir); serr != nil {
				errs = append(errs, serr)
			}
		}
	}
	// A device whose steps all succeeded has no error left to show.
	dirty := false
	for _, d := range reg.Devices {
		if failed[d.Name] {
			continue
		}
		touched := slices.ContainsFunc(done, func(a Action) bool { return a.Device == d.Name })
		if !touched {
			continue
		}
		if d.Error != "" {
			d.Error, dirty = "", true
		}
		for _, s := range d.Sessions {
			if s.Error != "" && !failed[sessionKey(Action{Device: d.Name, Session: s.N})] {
				s.Error, dirty = "", true
			}
		}
	}
	if dirty {
		if err := reg.Save(m.StateDir); err != nil {
			errs = append(errs, err)
		}
	}
	return done, errors.Join(errs...)
}

func stepOp(a Action) string {
	if a.Session > 0 {
		return fmt.Sprintf("%s (session %d)", a.Kind, a.Session)
	}
	return string(a.Kind)
}

// apply performs one step. Steps that change the registry save it before
// returning; intents are saved before the work they announce.
func (m *Manager) apply(ctx context.Context, reg *Registry, a Action) error {
	if done, err := m.applyStoreStep(ctx, a); done {
		return err
	}
	d := reg.Device(a.Device)
	if d == nil {
		return fmt.Errorf("device %s is not in the registry", a.Device)
	}
	if done, err := m.applyDeviceStep(ctx, reg, d, a); done {
		return err
	}
	s := d.Session(a.Session)
	if s == nil {
		return fmt.Errorf("session %d is not in the registry", a.Session)
	}
	return m.applySessionStep(ctx, reg, d, s, a)
}

// applyStoreStep performs the steps that need no registry record: they act
// on the kernel or the store by name or directory alone. done is false for
// any other step.
func (m *Manager) applyStoreStep(ctx context.Context, a Action) (done bool, err error) {
	switch a.Kind {
	case ActRemoveStack:
		return true, m.Kernel.StackDown(ctx, a.Device)
	case ActDiscardDir:
		return true, m.Store.Discard(ctx, a.Dir)
	case ActCloseDir:
		return true, m.Store.MarkClosing(ctx, a.Dir)
	case ActConvertDir:
		return true, m.Store.Convert(ctx, a.Dir)
	}
	return false, nil
}

// applyDeviceStep performs the steps on device d that need no session
// record. done is false for any other step.
func (m *Manager) applyDeviceStep(ctx context.Context, reg *Registry, d *Device, a Action) (done bool, err error) {
	save := func() error { return reg.Save(m.StateDir) }
	switch a.Kind {
	case ActNoteOrigin:
		d.Origin = a.Dev
		return true, save()
	case ActNoteIdentity:
		if a.Identity == nil {
			return true, errors.New("no identity to note")
		}
		d.Identity.Stable = a.Identity.Stable
		return true, save()
	case ActStackUp:
		if a.Image {
			return true, m.stackUpImage(ctx, reg, d, a.Path)
		}
		if !a.Dev.IsZero() && d.Identity.Dev != a.Dev {
			d.Identity.Dev = a.Dev // the device came back under another number
			if err := save(); err != nil {
				return true, err
			}
		}
		return true, m.Kernel.StackUp(ctx, d.Name, a.Path)
	case ActStackDown:
		return true, m.Kernel.StackDown(ctx, d.Name)
	case ActRepair:
		return true, m.Kernel.Repair(ctx, d.Name)
	case ActNewSession:
		if d.Session(a.Session) == nil {
			d.Sessions = append(d.Sessions, &Session{N: a.Session, State: SessionArming, Armed: a.At.UTC()})
		}
		if d.NextSession <= a.Session {
			d.NextSession = a.Session + 1
		}
		return true, save()
	case ActMarkActive:
		d.State = DeviceActive
		return true, save()
	case ActForgetDevice:
		reg.Remove(d.Name)
		return true, save()
	case ActRemoveSnapshot:
		// Also for stray snapshots, which no session record owns.
		return true, m.Kernel.RemoveSnapshot(ctx, d.Name, a.Session)
	}
	return false, nil
}

// applySessionStep performs the steps on session s of device d.
func (m *Manager) applySessionStep(ctx context.Context, reg *Registry, d *Device, s *Session, a Action) error {
	save := func() error { return reg.Save(m.StateDir) }
	switch a.Kind {
	case ActRelocate:
		s.Dir = a.Dir
		return save()
	case ActArm:
		return m.armSession(ctx, reg, d, s)
	case ActAttach:
		if s.Dir == "" {
			return errors.New("session has no directory")
		}
		return m.Kernel.AttachSnapshot(ctx, d.Name, s.N, m.Store.COWFile(s.Dir), d.ChunkSectors())
	case ActMarkArmed:
		s.State = SessionArmed
		return save()
	case ActOpen:
		return m.openSession(ctx, reg, d, s, a)
	case ActClose:
		s.State = SessionClosing
		if !a.At.IsZero() {
			s.Unmounted = a.At.UTC()
		}
		return save()
	case ActInvalidate:
		return m.invalidateSession(ctx, reg, d, s, a)
	case ActConvert:
		return m.convertSession(ctx, s)
	case ActDiscard:
		return m.Store.Discard(ctx, s.Dir)
	case ActForgetSession:
		d.removeSession(s.N)
		return save()
	}
	return fmt.Errorf("unknown step %q", a.Kind)
}

// armSession creates session s's directory in the store and records it.
func (m *Manager) armSession(ctx context.Context, reg *Registry, d *Device, s *Session) error {
	// The checked real path, so that a symlink swapped after the check
	// cannot redirect the new session.
	store, err := trustdir.ResolveStore(d.Store)
	if err != nil {
		return err
	}
	dir, err := m.Store.ArmSession(ctx, store, ArmSpec{
		Name: d.Name, DevicePath: d.Path, Identity: d.Identity, ChunkSize: d.ChunkSize, Armed: s.Armed,
		Prealloc: d.Prealloc, Sequence: s.N,
	})
	if err != nil {
		return err
	}
	s.Dir = dir
	return reg.Save(m.StateDir)
}

// openSession records the mount of session s: in the registry first, then
// in the store, then the registry again.
func (m *Manager) openSession(ctx context.Context, reg *Registry, d *Device, s *Session, a Action) error {
	save := func() error { return reg.Save(m.StateDir) }
	s.State, s.Mounted, s.FSType = SessionOpening, a.At.UTC(), a.FSType
	// Saved with the open: a crash while mounted still reverts.
	d.RevertPending = d.RevertPending || d.Reverts()
	if err := save(); err != nil {
		return err
	}
	Crashpoint(CrashpointOpenMarked)
	dir, err := m.Store.MarkMounted(ctx, s.Dir, s.Mounted, s.FSType)
	if err != nil {
		return err
	}
	s.Dir, s.State = dir, SessionOpen
	return save()
}

// invalidateSession records that the kernel dropped session s's snapshot,
// then logs the restore points lost with it.
func (m *Manager) invalidateSession(ctx context.Context, reg *Registry, d *Device, s *Session, a Action) error {
	s.State, s.InvalidReason = SessionInvalid, a.Reason
	if err := reg.Save(m.StateDir); err != nil {
		return err
	}
	// Every restore point of the device goes through this session:
	// they are all lost. Say so loudly, with the count.
	lost, err := m.Store.RestorePoints(ctx, d.Store, d.Name)
	if err != nil {
		lost = -1
	}
	m.log().Error("session invalid: the kernel dropped its snapshot; its pre-images are incomplete, and no state before it can be restored any more",
		"device", d.Name, "session", s.N, "dir", s.Dir, "reason", a.Reason, "restore_points_lost", lost)
	return nil
}

// convertSession tells the store how session s ended, then converts it.
// The store learns of the close here, right before converting, so a crash
// between the registry's "closing" and this step is finished by the same
// step.
func (m *Manager) convertSession(ctx context.Context, s *Session) error {
	var err error
	switch {
	case s.State == SessionInvalid:
		err = m.Store.MarkInvalid(ctx, s.Dir, s.InvalidReason)
		if err == nil && !s.Unmounted.IsZero() {
			err = m.Store.MarkUnmounted(ctx, s.Dir, s.Unmounted)
		}
	case !s.Unmounted.IsZero():
		err = m.Store.MarkUnmounted(ctx, s.Dir, s.Unmounted)
	default:
		err = m.Store.MarkClosing(ctx, s.Dir)
	}
	if err != nil && !isConverted(ctx, m.Store, s.Dir) {
		return err
	}
	return m.Store.Convert(ctx, s.Dir)
}

// isConverted reports whether dir is no longer pending: a session converted
// before a crash has no state to mark any more, and Convert leaves it alone.
func isConverted(ctx context.Context, st Store, dir string) bool {
	p, err := st.Pending(ctx, filepath.Dir(dir))
	if err != nil {
		return false
	}
	_, pending := pendingByDir(p, dir)
	if pending {
		return false
	}
	_, err = os.Stat(dir)
	return err == nil
}

// ActivateRequest is what `dmsnap activate` asks for.
type ActivateRequest struct {
	Device    string // block device path, e.g. /dev/sdb1
	Name      string // "" : SanitizeName(Device)
	ChunkSize uint32 // bytes; 0: DefaultChunkSize
	Store     string // "" : DefaultStore
	Prealloc  int64  // bytes of each new cow.img written ahead (ArmSpec.Prealloc); 0: none
	// Retention is the policy the watcher applies (zero: keep every
	// session).
	Retention snapstore.Retention
	// OnUnmount is Device.OnUnmount ("" or OnUnmountRevert).
	OnUnmount string
}

// DefaultPrealloc is what `dmsnap activate` writes ahead of each new
// session's COW when not told (--prealloc): enough for the first 256 MiB
// of pre-images to go straight to the store's device (README, "Benchmarks").
const DefaultPrealloc = 256 << 20

// ValidateChunkSize checks a chunk size in bytes: a power of two from
// MinChunkSize to MaxChunkSize.
func ValidateChunkSize(c uint32) error {
	if c < MinChunkSize || c > MaxChunkSize || bits.OnesCount32(c) != 1 {
		return fmt.Errorf("chunk size %d bytes: use a power of two from 4KiB to 512KiB", c)
	}
	return nil
}

// Activate puts a device under dmsnap: it checks the device (a block
// device, not mounted, not activated, not holding the store), registers it,
// builds the stack and arms the first session. If that fails, what was
// built is taken down again and the device leaves the registry.
func (m *Manager) Activate(ctx context.Context, req ActivateRequest) (*Device, error) {
	const op = "activate"
	name, store, err := req.check()
	if err != nil {
		return nil, deviceErr(op, req.Device, "", err)
	}
	var out *Device
	err = m.withLock(ctx, func(reg *Registry) error {
		id, err := m.Prober.Identify(ctx, req.Device)
		if err != nil {
			return deviceErr(op, req.Device, "give the path of a block device such as /dev/sdb1, or of an image file", err)
		}
		path, err := m.checkNew(ctx, reg, req.Device, name, id)
		if err != nil {
			return err
		}
		stacks, err := m.Kernel.Stacks(ctx)
		if err != nil {
			return deviceErr(op, req.Device, "", err)
		}
		next, err := adoptableStacks(stacks, req.Device, name, id)
		if err != nil {
			return err
		}
		table, err := m.mounts()
		if err != nil {
			return deviceErr(op, req.Device, "", err)
		}
		if ms := MountsByDev(table, nil)[id.Dev]; !id.Image && len(ms) > 0 {
			return deviceErrf(op, req.Device, "unmount it, activate, then mount /dev/mapper/dmsnap-"+name+" instead", ErrBusy,
				"mounted on %s", mountPoints(ms))
		}
		store, last, err := m.prepareStore(ctx, store, req.Device, name, id)
		if err != nil {
			return err
		}
		next = max(next, last+1)

		d := &Device{
			Name: name, Path: path, Identity: id, ChunkSize: req.ChunkSize, Store: store, Prealloc: req.Prealloc, Retention: retentionOrNil(req.Retention),
			State: DeviceActivating, Activated: m.now().UTC(), NextSession: next,
		}
		if req.OnUnmount == OnUnmountRevert {
			// The first session starts from the state every revert puts back.
			d.OnUnmount, d.RevertBase = OnUnmountRevert, next
		}
		if err := reg.Add(d); err != nil {
			return deviceErr(op, req.Device, "", err)
		}
		if err := reg.Save(m.StateDir); err != nil {
			return deviceErr(op, req.Device, "", err)
		}
		// The hint is the device just identified: no identity to compare.
		rep, err := m.reconcile(ctx, reg, scope{only: []string{name}, hints: map[string]string{name: path}, forced: true})
		if err == nil && (reg.Device(name) == nil || reg.Device(name).State != DeviceActive) {
			err = fmt.Errorf("activation did not finish: %s", issuesText(rep.Issues))
		}
		if err != nil {
			return errors.Join(deviceErr(op, req.Device, "", err), m.rollback(ctx, reg, name))
		}
		c := *reg.Device(name)
		out = &c
		return nil
	})
	return out, err
}

// check fills in req's defaults and refuses what is wrong before anything
// is looked at: it returns the device's name and the store's absolute
// path.
func (req *ActivateRequest) check() (name, store string, err error) {
	if req.ChunkSize == 0 {
		req.ChunkSize = DefaultChunkSize
	}
	if req.Store == "" {
		req.Store = DefaultStore
	}
	if err := ValidateChunkSize(req.ChunkSize); err != nil {
		return "", "", err
	}
	if err := req.Retention.Validate(); err != nil {
		return "", "", err
	}
	if req.Prealloc < 0 {
		return "", "", fmt.Errorf("preallocation of %d bytes: want 0 or more", req.Prealloc)
	}
	if req.OnUnmount != "" && req.OnUnmount != OnUnmountRevert && req.OnUnmount != OnUnmountKeep {
		return "", "", fmt.Errorf("on-unmount %q: want keep or revert", req.OnUnmount)
	}
	name = req.Name
	if name == "" {
		name = SanitizeName(req.Device)
	}
	if err := ValidateName(name); err != nil {
		return "", "", err
	}
	store, err = filepath.Abs(req.Store)
	return name, store, err
}

// checkNew refuses a name or a device the registry has already, and an
// image file that cannot be protected now; it returns the path to record
// (an image file's absolute path: found again after a reboot).
func (m *Manager) checkNew(ctx context.Context, reg *Registry, device, name string, id Identity) (string, error) {
	const op = "activate"
	if d := reg.Device(name); d != nil {
		return "", deviceErrf(op, device, "choose another name with --name", ErrAlreadyActivated,
			"the name %s is taken by %s", name, d.Path)
	}
	path := device
	if id.Image {
		path = id.Stable.LoopFile
		if d := reg.ByStable(id.Stable); d != nil {
			return "", deviceErrf(op, device, "`dmsnap status "+d.Name+"` shows it", ErrAlreadyActivated,
				"already activated as %s", d.Name)
		}
		if problem, err := m.imageProblem(ctx, path, DevNum{}); err != nil {
			return "", deviceErr(op, device, "", err)
		} else if problem != "" {
			return "", deviceErrf(op, device, "nothing was changed", ErrBusy, "%s", problem)
		}
	}
	if d := reg.ByDevNum(id.Dev); d != nil {
		return "", deviceErrf(op, device, "`dmsnap status "+d.Name+"` shows it", ErrAlreadyActivated,
			"already activated as %s", d.Name)
	}
	return path, nil
}

// adoptableStacks refuses a device that is itself a dmsnap device, and a
// name whose stack in the kernel is over another device. A stack of this
// device that no registry holds (a lost registry, another state
// directory's) is adopted: its live snapshots are replaced by a new
// session numbered after them, the number returned (1 when none).
func adoptableStacks(stacks []StackInfo, device, name string, id Identity) (next int, err error) {
	const op = "activate"
	next = 1
	for _, st := range stacks {
		if st.OriginDev == id.Dev || slices.ContainsFunc(st.Snapshots, func(s SnapshotInfo) bool { return s.Dev == id.Dev }) {
			return 0, deviceErrf(op, device, "activate the raw device instead", nil, "%s is a dmsnap device of %s", device, st.Name)
		}
		if st.Name == name && st.HasReal && st.RawDev != id.Dev {
			return 0, deviceErrf(op, device, "choose another name with --name", ErrAlreadyActivated,
				"a stack dmsnap-%s over another device (%s) is there, in no registry of this state directory", name, st.RawDev)
		}
		for _, sn := range st.Snapshots {
			if st.Name == name {
				next = max(next, sn.N+1)
			}
		}
	}
	return next, nil
}

// prepareStore checks the store, makes it, and returns its real path
// (what is recorded and used) and the last session number of name in it.
func (m *Manager) prepareStore(ctx context.Context, store, device, name string, id Identity) (string, int, error) {
	const op = "activate"
	// Checked before it is made; its real path is what is made,
	// recorded and used.
	store, err := trustdir.ResolveStore(store)
	if err != nil {
		return "", 0, deviceErr(op, device, "", err)
	}
	if err := os.MkdirAll(store, 0o755); err != nil {
		return "", 0, deviceErr(op, device, "", fmt.Errorf("store: %w", err))
	}
	// Session numbers are the sequence that orders a device's sessions
	// (the clock may step back): they go on after the store's last one.
	last, err := m.Store.LastSequence(ctx, store, name)
	if err != nil {
		return "", 0, deviceErr(op, device, "", fmt.Errorf("store %s: %w", store, err))
	}
	var st unix.Stat_t
	if err := unix.Stat(store, &st); err != nil {
		return "", 0, deviceErr(op, device, "", fmt.Errorf("store: %w", err))
	}
	// A COW file on the filesystem of the device it protects would wait
	// on itself (docs/kernel.md).
	if !id.Image && DevNumFromRdev(st.Dev) == id.Dev {
		return "", 0, deviceErrf(op, device, "give a --store on another device", nil, "the store %s is on the device itself", store)
	}
	return store, last, nil
}

// rollback takes down what a failed activation built.
func (m *Manager) rollback(ctx context.Context, reg *Registry, name string) error {
	d := reg.Device(name)
	if d == nil {
		return nil
	}
	d.State = DeviceDeactivating
	if err := reg.Save(m.StateDir); err != nil {
		return err
	}
	rep, err := m.reconcile(ctx, reg, scope{only: []string{name}})
	if err == nil && reg.Device(name) != nil {
		err = fmt.Errorf("%v", rep.Issues)
	}
	if err != nil {
		return fmt.Errorf("undoing the activation also failed (`dmsnap deactivate %s` retries): %w", name, err)
	}
	return nil
}

// Deactivate takes a device out of dmsnap: it refuses while the device is
// mounted (ErrBusy), closes and converts its sessions, tears the stack down
// and removes it from the registry. The device keeps its content; its
// sessions stay in the store.
func (m *Manager) Deactivate(ctx context.Context, arg string) error {
	const op = "deactivate"
	return m.withLock(ctx, func(reg *Registry) error {
		d, err := m.lookup(ctx, reg, arg)
		if errors.Is(err, ErrNotActivated) && !strings.Contains(arg, "/") {
			return m.deactivateUnregistered(ctx, reg, arg, err)
		}
		if err != nil {
			return deviceErr(op, arg, "", err)
		}
		name := d.Name
		// Refuse before recording the intent: a device left "deactivating"
		// while mounted would be deactivated by the watcher at its unmount.
		if why, err := BlockersOf(m.StateDir, name); err != nil {
			return deviceErr(op, name, "", err)
		} else if why != "" {
			return deviceErrf(op, name, "nothing was changed", ErrBusy, "%s", why)
		}
		stacks, err := m.Kernel.Stacks(ctx)
		if err != nil {
			return deviceErr(op, name, "", err)
		}
		table, err := m.mounts()
		if err != nil {
			return deviceErr(op, name, "", err)
		}
		for _, st := range stacks {
			if st.Name != name || !st.HasOrigin {
				continue
			}
			if ms := MountsByDev(table, nil)[st.OriginDev]; len(ms) > 0 {
				return deviceErrf(op, name, "unmount it and retry", ErrBusy, "/dev/mapper/dmsnap-%s is mounted on %s", name, mountPoints(ms))
			}
			if st.OriginOpen > 0 {
				return deviceErrf(op, name, "stop the programs using it and retry", ErrBusy, "/dev/mapper/dmsnap-%s is open (%d openers)", name, st.OriginOpen)
			}
		}
		d.State = DeviceDeactivating
		if err := reg.Save(m.StateDir); err != nil {
			return deviceErr(op, name, "", err)
		}
		rep, err := m.reconcile(ctx, reg, scope{only: []string{name}})
		if err != nil {
			return deviceErr(op, name, "", err)
		}
		if reg.Device(name) != nil {
			return deviceErrf(op, name, "fix what is reported and run `dmsnap deactivate "+name+"` again", issueKind(rep.Issues),
				"not finished: %s", issuesText(rep.Issues))
		}
		return nil
	})
}

// deactivateUnregistered takes down the stack dmsnap-NAME that no device of
// this registry owns (another state directory's, or one whose registry was
// lost), when asked by name: reconcile leaves such a stack alone, so this is
// the way to remove it. Its session directories are then orphans that the
// same reconcile finishes. notFound is returned when there is no such stack.
func (m *Manager) deactivateUnregistered(ctx context.Context, reg *Registry, name string, notFound error) error {
	const op = "deactivate"
	stacks, err := m.Kernel.Stacks(ctx)
	if err != nil {
		return deviceErr(op, name, "", err)
	}
	i := slices.IndexFunc(stacks, func(s StackInfo) bool { return s.Name == name })
	if i < 0 {
		return deviceErr(op, name, "", notFound)
	}
	st := stacks[i]
	table, err := m.mounts()
	if err != nil {
		return deviceErr(op, name, "", err)
	}
	if ms := MountsByDev(table, nil)[st.OriginDev]; st.HasOrigin && len(ms) > 0 {
		return deviceErrf(op, name, "unmount it and retry", ErrBusy, "/dev/mapper/dmsnap-%s is mounted on %s", name, mountPoints(ms))
	}
	if st.OriginOpen > 0 {
		return deviceErrf(op, name, "stop the programs using it and retry", ErrBusy, "/dev/mapper/dmsnap-%s is open (%d openers)", name, st.OriginOpen)
	}
	m.log().Warn("deactivate: taking down a stack no device of this state directory owns", "device", name, "state", m.StateDir)
	if err := m.Kernel.StackDown(ctx, name); err != nil {
		return deviceErr(op, name, "", err)
	}
	if _, err := m.reconcile(ctx, reg, scope{}); err != nil {
		return deviceErr(op, name, "the stack is down; its session directories are finished by the next reconcile (dmsnap watch)", err)
	}
	return nil
}

// lookup finds a device by name, or by path through the Prober (so the
// number compared is the one the Prober sees; see Registry.Lookup).
func (m *Manager) lookup(ctx context.Context, reg *Registry, arg string) (*Device, error) {
	if !strings.Contains(arg, "/") {
		return reg.Lookup(arg)
	}
	id, err := m.Prober.Identify(ctx, arg)
	if err != nil {
		return nil, err
	}
	if id.Image {
		if d := reg.ByStable(id.Stable); d != nil {
			return d, nil
		}
		return nil, fmt.Errorf("%s (an image file): %w; `dmsnap status` lists the activated devices", arg, ErrNotActivated)
	}
	if d := reg.ByDevNum(id.Dev); d != nil {
		return d, nil
	}
	return nil, fmt.Errorf("%s (%s): %w; `dmsnap status` lists the activated devices", arg, id.Dev, ErrNotActivated)
}

func issueKind(is []Issue) error {
	for _, i := range is {
		if strings.Contains(i.Problem, "mounted") {
			return ErrBusy
		}
	}
	return nil
}

func issuesText(is []Issue) string {
	if len(is) == 0 {
		return "no progress"
	}
	var s []string
	for _, i := range is {
		s = append(s, i.String())
	}
	return strings.Join(s, "; ")
}

// AttachOptions change how Attach decides that a device is the activated one.
type AttachOptions struct {
	// Name: the dmsnap name the device must be attached as (needed with
	// ForceIdentity when the device matches no registered one by number,
	// stable identity or filesystem UUID).
	Name string
	// ForceIdentity attaches the device although its identity differs from
	// the recorded one (or none was recorded), and records its identity:
	// for a person who knows that it is the same device (a disk moved to
	// another controller, a partition table rewritten). The caller asks for
	// the control password first.
	ForceIdentity bool
	// Hold, when set, opens an origin exclusively (Reverter.Hold without
	// waiting): Attach calls it under the lock, as soon as the stack of a
	// device whose revert on unmount is pending is up and not mounted, so
	// that nothing mounts the device before the caller has reverted it
	// (Report.Hold).
	Hold func(name string) (*os.File, error)
}

// Attach brings protection back for an activated device that (re)appeared
// at devicePath: a boot or a hot-plug, run by the udev rule. The device is
// found by its stable identity, then by number, then by filesystem UUID,
// and must match the registered identity (Identity.Matches) — else nothing
// is written anywhere and the error names both devices; then its stack is
// rebuilt and its armed session's COW re-attached. Attaching a device whose
// stack is up does nothing. Conversions of sessions a crash left closing
// are left to the watcher (udev kills slow programs): attach is quick.
func (m *Manager) Attach(ctx context.Context, devicePath string, opts AttachOptions) (Report, error) {
	const op = "attach"
	var rep Report
	err := m.withLock(ctx, func(reg *Registry) error {
		id, err := m.Prober.Identify(ctx, devicePath)
		if err != nil {
			return deviceErr(op, devicePath, "", err)
		}
		var d *Device
		if opts.Name != "" {
			if d = reg.Device(opts.Name); d == nil {
				return deviceErr(op, devicePath, "", fmt.Errorf("%s: %w", opts.Name, ErrNotActivated))
			}
		} else if d = reg.ByStable(id.Stable); d == nil {
			if d = reg.ByDevNum(id.Dev); d == nil {
				d = reg.ByFSUUID(id.FSUUID)
			}
		}
		if d == nil {
			return deviceErr(op, devicePath, "", fmt.Errorf("%s (%s): %w", devicePath, id.Dev, ErrNotActivated))
		}
		if d.Origin == id.Dev {
			return nil // the origin itself appeared: nothing to attach
		}
		if err := d.Identity.Matches(id); err != nil {
			if !opts.ForceIdentity {
				return deviceErr(op, devicePath, fmt.Sprintf("nothing was written to either device; if it really is the device activated as %s, `dmsnap attach --force-identity --name %s %s` attaches it and records its identity (asks for the control password)",
					d.Name, d.Name, devicePath),
					fmt.Errorf("%s (%s) is not the device activated as %s (%s): %w", devicePath, id.Describe(), d.Name, d.Identity.Describe(), err))
			}
			m.log().Warn("attach: identity forced", "device", d.Name, "path", devicePath, "was", d.Identity.Describe(), "now", id.Describe(), "mismatch", err)
			d.Identity = id
			if err := reg.Save(m.StateDir); err != nil {
				return deviceErr(op, d.Name, "", err)
			}
		}
		rep, err = m.reconcile(ctx, reg, scope{only: []string{d.Name}, hints: map[string]string{d.Name: devicePath}, forced: opts.ForceIdentity, deferConvert: true})
		if err != nil {
			return deviceErr(op, d.Name, "", err)
		}
		if d = reg.Device(d.Name); opts.Hold != nil && d != nil && d.Reverts() && d.RevertPending {
			table, err := m.mounts()
			if err != nil {
				return deviceErr(op, d.Name, "", err)
			}
			if len(MountsByDev(table, nil)[d.Origin]) == 0 {
				// Busy: someone else holds it (the watcher, for this very
				// revert), and reverts it.
				if f, err := opts.Hold(d.Name); err == nil {
					rep.Hold, rep.HoldName = f, d.Name
				} else {
					m.log().Warn("attach: the device's revert is pending, but it is held by another", "device", d.Name, "err", err)
				}
			}
		}
		return nil
	})
	return rep, err
}

// Rotate closes the live session of a device and arms the next one (before
// a restore, or when the watcher saw an unmount and a mount between two
// reads of the mount table). The closed session is converted.
func (m *Manager) Rotate(ctx context.Context, arg, reason string) (Report, error) {
	const op = "close session"
	var rep Report
	err := m.withLock(ctx, func(reg *Registry) error {
		d, err := m.lookup(ctx, reg, arg)
		if err != nil {
			return deviceErr(op, arg, "", err)
		}
		if cur := d.Current(); cur != nil && cur.State != SessionArming {
			if cur.State == SessionOpen || cur.State == SessionOpening {
				cur.Unmounted = m.now().UTC()
			}
			cur.State = SessionClosing
			if err := reg.Save(m.StateDir); err != nil {
				return deviceErr(op, d.Name, "", err)
			}
			Crashpoint(string(ActClose))
			m.log().Info("rotate", "device", d.Name, "session", cur.N, "reason", reason)
		}
		rep, err = m.reconcile(ctx, reg, scope{only: []string{d.Name}})
		if err != nil {
			return deviceErr(op, d.Name, "", err)
		}
		return nil
	})
	return rep, err
}
