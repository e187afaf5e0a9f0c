package session_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/internal/devid"
	"github.com/dmsnap/dmsnap/internal/hostfiles"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/session/sessiontest"
)

var (
	sdb1   = session.Identity{Dev: session.DevNum{Major: 8, Minor: 17}, Size: 1 << 30, FSType: "ext4", FSUUID: "0b9a4c8e-1111-4d7e-9d43-5a1b2c3d4e5f", Stable: sdb1ID}
	sdb1ID = &devid.ID{Kind: devid.KindPartition, PartUUID: "5a1b2c3d-01", PartNumber: 1, Start: 2048, Sectors: 1 << 21,
		Disk: &devid.ID{Kind: devid.KindDisk, Serial: "DISK-B"}}
	t0     = time.Unix(1700000000, 0).UTC()
	bgctx  = context.Background()
	rawDev = "/dev/sdb1"
)

// world is a fake system, a state directory and a store, and a clock the
// test moves.
type world struct {
	t            *testing.T
	sys          *sessiontest.System
	state, store string
	clock        time.Time
}

func newWorld(t *testing.T) *world {
	t.Helper()
	dir := t.TempDir()
	w := &world{t: t, sys: sessiontest.NewSystem(), state: filepath.Join(dir, "state"), store: filepath.Join(dir, "store"), clock: t0}
	w.sys.Prober.Add(rawDev, sdb1)
	return w
}

// manager returns a fresh Manager, as a new dmsnap process would be.
func (w *world) manager() *session.Manager {
	m := w.sys.Manager(w.state, w.store)
	m.Now = func() time.Time { return w.clock }
	m.LockWait = 2 * time.Second
	return m
}

func (w *world) tick(d time.Duration) { w.clock = w.clock.Add(d) }

func (w *world) registry() *session.Registry {
	w.t.Helper()
	reg, err := session.LoadRegistry(w.state)
	if err != nil {
		w.t.Fatal(err)
	}
	return reg
}

func (w *world) device() *session.Device {
	w.t.Helper()
	d := w.registry().Device("sdb1")
	if d == nil {
		w.t.Fatal("sdb1 is not in the registry")
	}
	return d
}

func (w *world) activate() *session.Device {
	w.t.Helper()
	d, err := w.manager().Activate(bgctx, session.ActivateRequest{Device: rawDev, Store: w.store})
	if err != nil {
		w.t.Fatalf("activate: %v", err)
	}
	return d
}

func (w *world) reconcile() session.Report {
	w.t.Helper()
	rep, err := w.manager().Reconcile(bgctx)
	if err != nil {
		w.t.Fatalf("reconcile: %v", err)
	}
	return rep
}

func (w *world) origin() session.DevNum {
	w.t.Helper()
	o := w.sys.Kernel.OriginDev("sdb1")
	if o.IsZero() {
		w.t.Fatal("no origin dmsnap-sdb1")
	}
	return o
}

func (w *world) mount() { w.sys.Mount(w.origin(), "/mnt/data", "ext4") }

func (w *world) unmount() { w.sys.Unmount(w.origin()) }

// crashes runs fn and reports whether it died of an injected crash.
func crashes(t *testing.T, fn func()) (crashed bool) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(sessiontest.Crash); !ok {
				panic(r)
			}
			crashed = true
		}
	}()
	fn()
	return false
}

// steady checks the state every completed operation must leave: sdb1
// active with exactly one session, number n, armed (or open when mounted),
// its snapshot and only it in the kernel, attached to its own COW; every
// other session directory finished (meta.json); no broken invariant.
func (w *world) steady(n int, mounted bool) *session.Session {
	w.t.Helper()
	d := w.device()
	if d.State != session.DeviceActive {
		w.t.Fatalf("device state %s, want active", d.State)
	}
	if len(d.Sessions) != 1 || d.Sessions[0].N != n {
		w.t.Fatalf("sessions %+v, want only session %d", sessions(d), n)
	}
	s := d.Sessions[0]
	want := session.SessionArmed
	if mounted {
		want = session.SessionOpen
	}
	if s.State != want {
		w.t.Fatalf("session %d is %s, want %s", n, s.State, want)
	}
	if d.Error != "" || s.Error != "" {
		w.t.Fatalf("errors left in the registry: %q %q", d.Error, s.Error)
	}
	if got := w.sys.Kernel.Snapshots("sdb1"); !slices.Equal(got, []int{n}) {
		w.t.Fatalf("kernel snapshots %v, want [%d]", got, n)
	}
	cow := w.sys.Kernel.SnapshotFile("sdb1", n)
	fi, err := os.Stat(filepath.Join(s.Dir, sessiontest.COWFile))
	if err != nil || cow == nil || !os.SameFile(cow, fi) {
		w.t.Fatalf("snapshot %d is not attached to its session's COW in %s (attached as %s): %v",
			n, s.Dir, w.sys.Kernel.SnapshotCOW("sdb1", n), err)
	}
	if d.Origin != w.origin() {
		w.t.Fatalf("registry origin %s, kernel %s", d.Origin, w.origin())
	}
	for _, name := range w.sys.Store.Sessions(w.store) {
		dir := filepath.Join(w.store, name)
		if dir == s.Dir {
			continue
		}
		if _, err := sessiontest.ReadMeta(dir); err != nil {
			w.t.Fatalf("session directory %s is not finished: %v", name, err)
		}
		if _, err := os.Stat(filepath.Join(dir, sessiontest.StateFile)); err == nil {
			w.t.Fatalf("session directory %s still has its state file", name)
		}
	}
	if len(w.sys.Violations) > 0 {
		w.t.Fatalf("invariants broken: %v", w.sys.Violations)
	}
	return s
}

// settled checks that reconciling again does nothing at all.
func (w *world) settled() {
	w.t.Helper()
	before := w.sys.MutatingCalls()
	regBefore, _ := os.ReadFile(session.RegistryPath(w.state))
	rep := w.reconcile()
	if len(rep.Done) != 0 {
		w.t.Fatalf("a second reconcile did %v", rep.Done)
	}
	if after := w.sys.MutatingCalls(); after != before {
		w.t.Fatalf("a second reconcile made %d calls", after-before)
	}
	regAfter, _ := os.ReadFile(session.RegistryPath(w.state))
	if string(regBefore) != string(regAfter) {
		w.t.Fatalf("a second reconcile changed the registry:\n%s\n%s", regBefore, regAfter)
	}
}

func sessions(d *session.Device) []string {
	var out []string
	for _, s := range d.Sessions {
		out = append(out, fmt.Sprintf("%d:%s", s.N, s.State))
	}
	return out
}

// index returns the position of the first call starting with prefix.
func index(t *testing.T, calls []string, prefix string) int {
	t.Helper()
	for i, c := range calls {
		if strings.HasPrefix(c, prefix) {
			return i
		}
	}
	t.Fatalf("no call %q in %v", prefix, calls)
	return -1
}

func TestActivateBuildsStackAndArmsFirstSession(t *testing.T) {
	w := newWorld(t)
	d := w.activate()
	if d.Name != "sdb1" || d.Path != rawDev || d.Identity != sdb1 || d.ChunkSize != 4096 || d.State != session.DeviceActive {
		t.Fatalf("device %+v", d)
	}
	s := w.steady(1, false)
	if want := filepath.Join(w.store, "sdb1_1700000000"); s.Dir != want {
		t.Fatalf("session directory %s, want %s", s.Dir, want)
	}
	calls := w.sys.Calls
	if !(index(t, calls, "StackUp sdb1") < index(t, calls, "ArmSession sdb1") &&
		index(t, calls, "ArmSession sdb1") < index(t, calls, "AttachSnapshot sdb1 1")) {
		t.Fatalf("calls %v: want StackUp, ArmSession, AttachSnapshot", calls)
	}
	w.settled()
}

func TestActivateRefusals(t *testing.T) {
	t.Run("mounted", func(t *testing.T) {
		w := newWorld(t)
		w.sys.Mount(sdb1.Dev, "/mnt", "ext4")
		_, err := w.manager().Activate(bgctx, session.ActivateRequest{Device: rawDev, Store: w.store})
		if !errors.Is(err, session.ErrBusy) || !strings.Contains(err.Error(), "/mnt") {
			t.Fatalf("err %v, want ErrBusy naming /mnt", err)
		}
		if len(w.registry().Devices) != 0 || len(w.sys.Calls) != 0 {
			t.Fatalf("a refused activation left %v / %v", w.registry().Devices, w.sys.Calls)
		}
	})
	t.Run("twice", func(t *testing.T) {
		w := newWorld(t)
		w.activate()
		_, err := w.manager().Activate(bgctx, session.ActivateRequest{Device: rawDev, Name: "other", Store: w.store})
		if !errors.Is(err, session.ErrAlreadyActivated) {
			t.Fatalf("err %v, want ErrAlreadyActivated", err)
		}
		w.sys.Prober.Add("/dev/sdc1", session.Identity{Dev: session.DevNum{Major: 8, Minor: 33}, Size: 1 << 20})
		_, err = w.manager().Activate(bgctx, session.ActivateRequest{Device: "/dev/sdc1", Name: "sdb1", Store: w.store})
		if !errors.Is(err, session.ErrAlreadyActivated) {
			t.Fatalf("same name: err %v, want ErrAlreadyActivated", err)
		}
	})
	t.Run("store on the device", func(t *testing.T) {
		w := newWorld(t)
		if err := os.MkdirAll(w.store, 0o755); err != nil {
			t.Fatal(err)
		}
		// Pretend sdb1 is the device holding the store's filesystem.
		id := sdb1
		dev, err := storeDev(w.store)
		if err != nil {
			t.Fatal(err)
		}
		id.Dev = dev
		w.sys.Prober.Add("/dev/root", id)
		_, err = w.manager().Activate(bgctx, session.ActivateRequest{Device: "/dev/root", Store: w.store})
		if err == nil || !strings.Contains(err.Error(), "on the device itself") {
			t.Fatalf("err %v, want a refusal of the store", err)
		}
	})
	t.Run("bad chunk size", func(t *testing.T) {
		w := newWorld(t)
		for _, c := range []uint32{512, 3000, 1 << 20} {
			if _, err := w.manager().Activate(bgctx, session.ActivateRequest{Device: rawDev, Store: w.store, ChunkSize: c}); err == nil {
				t.Fatalf("chunk size %d accepted", c)
			}
		}
	})
	t.Run("dmsnap device", func(t *testing.T) {
		w := newWorld(t)
		w.activate()
		w.sys.Prober.Add("/dev/mapper/dmsnap-sdb1", session.Identity{Dev: w.origin(), Size: sdb1.Size})
		_, err := w.manager().Activate(bgctx, session.ActivateRequest{Device: "/dev/mapper/dmsnap-sdb1", Name: "x", Store: w.store})
		if err == nil {
			t.Fatal("activating a dmsnap device was accepted")
		}
	})
}

func TestActivateFailureRollsBack(t *testing.T) {
	w := newWorld(t)
	// The device is held by someone the mount table does not show: StackUp
	// fails. Activation must leave nothing behind.
	w.sys.Kernel.BuildHalf("other", sdb1.Dev, true, false)
	_, err := w.manager().Activate(bgctx, session.ActivateRequest{Device: rawDev, Store: w.store})
	if !errors.Is(err, session.ErrBusy) {
		t.Fatalf("err %v, want ErrBusy", err)
	}
	if len(w.registry().Devices) != 0 {
		t.Fatalf("registry after failed activation: %+v", w.registry().Devices[0])
	}
	if got := w.sys.Kernel.StackNames(); !slices.Equal(got, []string{"other"}) {
		t.Fatalf("stacks %v", got)
	}
}

func TestMountOpensSessionAndRenamesIt(t *testing.T) {
	w := newWorld(t)
	w.activate()
	w.tick(90 * time.Second)
	w.mount()
	w.reconcile()
	s := w.steady(1, true)
	if want := filepath.Join(w.store, session.SessionDirName("sdb1", w.clock)); s.Dir != want {
		t.Fatalf("open session in %s, want %s", s.Dir, want)
	}
	if !s.Mounted.Equal(w.clock) || s.FSType != "ext4" {
		t.Fatalf("session %+v", s)
	}
	st, err := sessiontest.ReadState(s.Dir)
	if err != nil || st.Phase != session.SessionOpen || !st.Mounted.Equal(w.clock) {
		t.Fatalf("store state %+v, %v", st, err)
	}
	w.settled()
}

func TestUnmountRotatesInOrder(t *testing.T) {
	w := newWorld(t)
	w.activate()
	w.tick(time.Minute)
	w.mount()
	w.reconcile()
	old := w.device().Sessions[0]
	w.tick(time.Hour)
	w.unmount()
	w.sys.ResetCalls()
	w.reconcile()

	calls := w.sys.Calls
	arm := index(t, calls, "ArmSession sdb1")
	attach := index(t, calls, "AttachSnapshot sdb1 2")
	remove := index(t, calls, "RemoveSnapshot sdb1 1")
	mark := index(t, calls, "MarkUnmounted "+old.Dir)
	conv := index(t, calls, "Convert "+old.Dir)
	if !(arm < attach && attach < remove && remove < mark && mark < conv) {
		t.Fatalf("rotation order %v: want arm next, attach next, remove old, mark, convert", calls)
	}
	w.steady(2, false)
	m, err := sessiontest.ReadMeta(old.Dir)
	if err != nil || m.Final != "complete" || !m.Unmounted.Equal(w.clock) || !m.Mounted.Equal(old.Mounted) {
		t.Fatalf("old session meta %+v, %v", m, err)
	}
	w.settled()

	// And the next mount opens session 2.
	w.tick(time.Minute)
	w.mount()
	w.reconcile()
	w.steady(2, true)
	w.settled()
}

// rotationWorld is a world with session 1 open and the device just
// unmounted: the next reconcile rotates.
func rotationWorld(t *testing.T) *world {
	w := newWorld(t)
	w.activate()
	w.tick(time.Minute)
	w.mount()
	w.reconcile()
	w.tick(time.Hour)
	w.unmount()
	return w
}

// TestRotationCrashAtEveryStep crashes the rotation before and after each
// of its kernel and store calls, then runs a reconcile in a new Manager
// (a restarted watcher): it must end exactly where an uninterrupted
// rotation ends, and a second reconcile must change nothing.
func TestRotationCrashAtEveryStep(t *testing.T) {
	w := rotationWorld(t)
	start := w.sys.MutatingCalls()
	w.reconcile()
	steps := w.sys.MutatingCalls() - start
	if steps < 5 {
		t.Fatalf("a rotation made only %d calls", steps)
	}
	for k := 1; k <= steps; k++ {
		for _, after := range []bool{false, true} {
			for _, reboot := range []bool{false, true} {
				name := fmt.Sprintf("call%d/after=%v/reboot=%v", k, after, reboot)
				t.Run(name, func(t *testing.T) {
					w := rotationWorld(t)
					if after {
						w.sys.CrashAfter(k)
					} else {
						w.sys.CrashBefore(k)
					}
					if !crashes(t, func() { w.manager().Reconcile(bgctx) }) {
						t.Fatalf("no crash at call %d", k)
					}
					crashedAt := w.sys.Calls[len(w.sys.Calls)-1]
					if reboot {
						w.sys.Reboot()
						w.sys.ResetCalls()
						if _, err := w.manager().Attach(bgctx, rawDev, session.AttachOptions{}); err != nil {
							t.Fatalf("attach after crash at %s: %v", crashedAt, err)
						}
						// attach (from udev) protects at once and leaves the
						// conversion to the watcher.
						if cur := w.device().Current(); cur == nil || cur.N != 2 || cur.State != session.SessionArmed {
							t.Fatalf("after attach: sessions %v", sessions(w.device()))
						}
						if got := w.sys.Kernel.Snapshots("sdb1"); !slices.Equal(got, []int{2}) {
							t.Fatalf("after attach: snapshots %v", got)
						}
						if got := w.sys.CallsMatching("Convert"); len(got) != 0 {
							t.Fatalf("attach converted: %v", got)
						}
						w.reconcile()
					} else {
						w.reconcile()
					}
					w.steady(2, false)
					w.settled()
					if n := len(w.sys.Store.Sessions(w.store)); n != 2 {
						t.Fatalf("crash at %s: %d session directories, want 2: %v", crashedAt, n, w.sys.Store.Sessions(w.store))
					}
				})
			}
		}
	}
}

func TestActivateCrashAtEveryStep(t *testing.T) {
	w := newWorld(t)
	w.activate()
	steps := w.sys.MutatingCalls()
	for k := 1; k <= steps; k++ {
		for _, after := range []bool{false, true} {
			for _, reboot := range []bool{false, true} {
				t.Run(fmt.Sprintf("call%d/after=%v/reboot=%v", k, after, reboot), func(t *testing.T) {
					w := newWorld(t)
					if after {
						w.sys.CrashAfter(k)
					} else {
						w.sys.CrashBefore(k)
					}
					if !crashes(t, func() {
						w.manager().Activate(bgctx, session.ActivateRequest{Device: rawDev, Store: w.store})
					}) {
						t.Fatalf("no crash at call %d", k)
					}
					if reboot {
						w.sys.Reboot()
					}
					w.reconcile()
					w.steady(1, false)
					w.settled()
					if n := len(w.sys.Store.Sessions(w.store)); n != 1 {
						t.Fatalf("%d session directories, want 1: %v", n, w.sys.Store.Sessions(w.store))
					}
				})
			}
		}
	}
}

func TestDeactivate(t *testing.T) {
	w := newWorld(t)
	w.activate()
	w.tick(time.Minute)
	w.mount()
	w.reconcile()

	err := w.manager().Deactivate(bgctx, "sdb1")
	if !errors.Is(err, session.ErrBusy) {
		t.Fatalf("deactivate while mounted: %v, want ErrBusy", err)
	}
	if d := w.device(); d.State != session.DeviceActive {
		t.Fatalf("a refused deactivate left the device %s", d.State)
	}
	w.unmount()
	w.tick(time.Minute)
	if err := w.manager().Deactivate(bgctx, "sdb1"); err != nil {
		t.Fatalf("deactivate: %v", err)
	}
	if len(w.registry().Devices) != 0 {
		t.Fatal("device still registered")
	}
	if got := w.sys.Kernel.StackNames(); len(got) != 0 {
		t.Fatalf("stacks left: %v", got)
	}
	// The unmount was not reconciled before the deactivation: session 1
	// is closed by it, and no session 2 is armed.
	names := w.sys.Store.Sessions(w.store)
	if !slices.Equal(names, []string{"sdb1_1700000060"}) {
		t.Fatalf("sessions %v, want only sdb1_1700000060", names)
	}
	for _, n := range names {
		if m, err := sessiontest.ReadMeta(filepath.Join(w.store, n)); err != nil || m.Final != "complete" {
			t.Fatalf("%s: %+v %v", n, m, err)
		}
	}
	if len(w.sys.Violations) > 0 {
		t.Fatal(w.sys.Violations)
	}
	w.settled()
}

func TestDeactivateCrashAtEveryStep(t *testing.T) {
	prepare := func(t *testing.T) *world {
		w := newWorld(t)
		w.activate()
		w.tick(time.Minute)
		return w
	}
	w := prepare(t)
	start := w.sys.MutatingCalls()
	if err := w.manager().Deactivate(bgctx, rawDev); err != nil {
		t.Fatal(err)
	}
	steps := w.sys.MutatingCalls() - start
	for k := 1; k <= steps; k++ {
		for _, after := range []bool{false, true} {
			t.Run(fmt.Sprintf("call%d/after=%v", k, after), func(t *testing.T) {
				w := prepare(t)
				if after {
					w.sys.CrashAfter(k)
				} else {
					w.sys.CrashBefore(k)
				}
				if !crashes(t, func() { w.manager().Deactivate(bgctx, "sdb1") }) {
					t.Fatalf("no crash at call %d", k)
				}
				w.reconcile()
				if len(w.registry().Devices) != 0 || len(w.sys.Kernel.StackNames()) != 0 {
					t.Fatalf("after crash and reconcile: registry %d devices, stacks %v", len(w.registry().Devices), w.sys.Kernel.StackNames())
				}
				for _, n := range w.sys.Store.Sessions(w.store) {
					if _, err := sessiontest.ReadMeta(filepath.Join(w.store, n)); err != nil {
						t.Fatalf("%s not finished: %v", n, err)
					}
				}
				w.settled()
			})
		}
	}
}

func TestRebootReattachesArmedSession(t *testing.T) {
	w := newWorld(t)
	w.activate()
	before := w.device().Sessions[0]
	w.sys.Reboot()
	w.tick(time.Minute)
	w.sys.ResetCalls()
	if _, err := w.manager().Attach(bgctx, rawDev, session.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	s := w.steady(1, false)
	if s.Dir != before.Dir {
		t.Fatalf("armed session moved from %s to %s", before.Dir, s.Dir)
	}
	if got := w.sys.CallsMatching("ArmSession"); len(got) != 0 {
		t.Fatalf("a new COW was made instead of re-attaching: %v", got)
	}
	// The udev rule may run attach again: nothing happens.
	w.sys.ResetCalls()
	if _, err := w.manager().Attach(bgctx, rawDev, session.AttachOptions{}); err != nil || len(w.sys.Calls) != 0 {
		t.Fatalf("second attach: %v, calls %v", err, w.sys.Calls)
	}
}

func TestRebootClosesOpenSession(t *testing.T) {
	w := newWorld(t)
	w.activate()
	w.tick(time.Minute)
	w.mount()
	w.reconcile()
	open := w.device().Sessions[0]
	w.sys.Reboot()
	w.tick(time.Minute)
	w.reconcile()
	w.steady(2, false)
	if m, err := sessiontest.ReadMeta(open.Dir); err != nil || m.Final != "complete" {
		t.Fatalf("the session open at the crash: %+v %v", m, err)
	}
	w.settled()
}

func TestAttachDeviceUnderNewNumber(t *testing.T) {
	w := newWorld(t)
	w.activate()
	w.sys.Reboot()
	w.sys.Prober.Remove(rawDev)
	moved := sdb1
	moved.Dev = session.DevNum{Major: 8, Minor: 33}
	w.sys.Prober.Add("/dev/sdc1", moved)
	if _, err := w.manager().Attach(bgctx, "/dev/sdc1", session.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	d := w.device()
	if d.Identity.Dev != moved.Dev || d.Path != rawDev {
		t.Fatalf("identity %+v path %s", d.Identity, d.Path)
	}
	w.steady(1, false)
}

func TestAttachRefusesAnotherDevice(t *testing.T) {
	w := newWorld(t)
	w.activate()
	w.sys.Reboot()
	other := sdb1
	other.FSUUID = "ffffffff-0000-0000-0000-000000000000"
	w.sys.Prober.Add(rawDev, other)
	_, err := w.manager().Attach(bgctx, rawDev, session.AttachOptions{})
	if !errors.Is(err, session.ErrIdentityMismatch) {
		t.Fatalf("err %v, want ErrIdentityMismatch", err)
	}
	if len(w.sys.Kernel.StackNames()) != 0 {
		t.Fatal("stacked a device that is not the activated one")
	}
	_, err = w.manager().Attach(bgctx, "/dev/nothing", session.AttachOptions{})
	if err == nil {
		t.Fatal("attach of a missing device succeeded")
	}
}

func TestDeviceAbsentIsAnIssueNotAnError(t *testing.T) {
	w := newWorld(t)
	w.activate()
	w.tick(time.Minute)
	w.mount()
	w.reconcile()
	open := w.device().Sessions[0]
	w.sys.Reboot()
	w.sys.Prober.Remove(rawDev)
	rep := w.reconcile()
	if len(rep.Issues) != 1 || !strings.Contains(rep.Issues[0].Problem, "not present") {
		t.Fatalf("issues %v", rep.Issues)
	}
	// The session of the mount the crash ended is finished anyway.
	if m, err := sessiontest.ReadMeta(open.Dir); err != nil || m.Final != "complete" {
		t.Fatalf("%+v %v", m, err)
	}
	if d := w.device(); len(d.Sessions) != 0 {
		t.Fatalf("sessions %v", sessions(d))
	}
	w.settled()
	// The device comes back: a new session is armed.
	w.sys.Prober.Add(rawDev, sdb1)
	if _, err := w.manager().Attach(bgctx, rawDev, session.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	w.steady(2, false)
}

func TestRawDeviceMountedDirectly(t *testing.T) {
	w := newWorld(t)
	w.activate()
	w.sys.Reboot()
	w.sys.Mount(sdb1.Dev, "/mnt/raw", "ext4")
	rep := w.reconcile()
	if len(rep.Issues) != 1 || !strings.Contains(rep.Issues[0].Problem, "mounted directly on /mnt/raw") {
		t.Fatalf("issues %v", rep.Issues)
	}
	if len(w.sys.Kernel.StackNames()) != 0 {
		t.Fatal("stacked a mounted device")
	}
}

func TestInvalidSnapshotIsClosedFlaggedAndReplaced(t *testing.T) {
	w := newWorld(t)
	w.activate()
	w.tick(time.Minute)
	w.mount()
	w.reconcile()
	bad := w.device().Sessions[0]
	w.sys.Kernel.Invalidate("sdb1", 1)
	w.tick(time.Minute)
	w.reconcile()
	// Still mounted: session 2 is armed and opened at once.
	s := w.steady(2, true)
	if !s.Mounted.Equal(w.clock) {
		t.Fatalf("session 2 mounted at %v", s.Mounted)
	}
	m, err := sessiontest.ReadMeta(bad.Dir)
	if err != nil || m.Final != "invalid" || m.InvalidReason == "" {
		t.Fatalf("invalid session meta %+v %v", m, err)
	}
	w.settled()
}

func TestRotateClosesArmedSession(t *testing.T) {
	w := newWorld(t)
	w.activate()
	w.tick(time.Minute)
	if _, err := w.manager().Rotate(bgctx, "sdb1", "restore"); err != nil {
		t.Fatal(err)
	}
	w.steady(2, false)
	w.settled()
}

func TestOrphansAreCleanedUp(t *testing.T) {
	w := newWorld(t)
	w.activate()
	ctx := bgctx
	st := w.sys.Store
	spec := func(name string, sec int64) session.ArmSpec {
		return session.ArmSpec{Name: name, ChunkSize: 4096, Armed: time.Unix(sec, 0).UTC()}
	}
	// A directory an interrupted arming left, COW never used.
	unused, err := st.ArmSession(ctx, w.store, spec("gone", 1600000000))
	if err != nil {
		t.Fatal(err)
	}
	// One whose conversion was interrupted.
	closing, _ := st.ArmSession(ctx, w.store, spec("gone", 1600000100))
	st.MarkClosing(ctx, closing)
	// One left armed with a used COW (a registry lost after a crash).
	used, _ := st.ArmSession(ctx, w.store, spec("gone", 1600000200))
	if err := os.WriteFile(filepath.Join(used, sessiontest.COWFile), []byte("SnAp"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A stack nobody registered.
	w.sys.Kernel.BuildHalf("gone", session.DevNum{Major: 8, Minor: 99}, true, true)

	rep := w.reconcile()
	if _, err := os.Stat(unused); !os.IsNotExist(err) {
		t.Fatalf("unused orphan directory still there: %v", err)
	}
	for _, dir := range []string{closing, used} {
		if m, err := sessiontest.ReadMeta(dir); err != nil || m.Final != "complete" {
			t.Fatalf("%s: %+v %v", dir, m, err)
		}
	}
	if got := w.sys.Kernel.StackNames(); !slices.Equal(got, []string{"sdb1"}) {
		t.Fatalf("stacks %v", got)
	}
	if len(rep.Issues) != 0 {
		t.Fatalf("issues %v", rep.Issues)
	}
	w.steady(1, false)
	w.settled()
}

func TestHalfBuiltStackIsRebuilt(t *testing.T) {
	w := newWorld(t)
	w.activate()
	w.sys.Reboot()
	w.sys.Kernel.BuildHalf("sdb1", sdb1.Dev, true, false)
	w.sys.ResetCalls()
	w.reconcile()
	calls := w.sys.Calls
	if !(index(t, calls, "StackDown sdb1") < index(t, calls, "StackUp sdb1")) {
		t.Fatalf("calls %v", calls)
	}
	w.steady(1, false)
	w.settled()
}

func TestStraySnapshotRemoved(t *testing.T) {
	w := newWorld(t)
	w.activate()
	cow := filepath.Join(t.TempDir(), "stray.img")
	if err := os.WriteFile(cow, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := w.sys.Kernel.AttachSnapshot(bgctx, "sdb1", 7, cow, 8); err != nil {
		t.Fatal(err)
	}
	w.reconcile()
	w.steady(1, false)
}

func TestLockIsHeldDuringOperations(t *testing.T) {
	w := newWorld(t)
	l, err := session.AcquireLock(bgctx, w.state, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	m := w.manager()
	m.LockWait = 100 * time.Millisecond
	_, err = m.Activate(bgctx, session.ActivateRequest{Device: rawDev, Store: w.store})
	var le *session.LockedError
	if !errors.As(err, &le) || le.Holder.PID != os.Getpid() {
		t.Fatalf("err %v, want a LockedError naming pid %d", err, os.Getpid())
	}
	if len(w.sys.Calls) != 0 {
		t.Fatalf("calls without the lock: %v", w.sys.Calls)
	}
}

// TestOpenCrashAtEveryStep crashes the opening of a session (the rename of
// its directory to the mount time) and checks that a reconcile finishes it
// with the mount time first seen.
func TestOpenCrashAtEveryStep(t *testing.T) {
	prepare := func(t *testing.T) *world {
		w := newWorld(t)
		w.activate()
		w.tick(time.Minute)
		w.mount()
		return w
	}
	w := prepare(t)
	start := w.sys.MutatingCalls()
	w.reconcile()
	steps := w.sys.MutatingCalls() - start
	if steps != 1 {
		t.Fatalf("opening made %d calls, want 1 (MarkMounted)", steps)
	}
	mountedAt := w.clock
	for _, after := range []bool{false, true} {
		t.Run(fmt.Sprintf("after=%v", after), func(t *testing.T) {
			w := prepare(t)
			if after {
				w.sys.CrashAfter(1)
			} else {
				w.sys.CrashBefore(1)
			}
			if !crashes(t, func() { w.manager().Reconcile(bgctx) }) {
				t.Fatal("no crash")
			}
			if got := w.device().Sessions[0].State; got != session.SessionOpening {
				t.Fatalf("after the crash the session is %s, want the intent (opening)", got)
			}
			w.tick(time.Hour) // the restart comes later: the mount time must not move
			w.reconcile()
			s := w.steady(1, true)
			if !s.Mounted.Equal(mountedAt) || filepath.Base(s.Dir) != session.SessionDirName("sdb1", mountedAt) {
				t.Fatalf("session mounted at %v in %s, want %v", s.Mounted, s.Dir, mountedAt)
			}
			if n := len(w.sys.Store.Sessions(w.store)); n != 1 {
				t.Fatalf("%d session directories: %v", n, w.sys.Store.Sessions(w.store))
			}
			w.settled()
		})
	}
}

func TestInterruptedStackOperationIsRepaired(t *testing.T) {
	w := newWorld(t)
	w.activate()
	w.tick(time.Minute)
	w.mount()
	w.reconcile()
	w.unmount()
	w.sys.Kernel.Break("sdb1")
	w.sys.ResetCalls()
	w.reconcile()
	calls := w.sys.Calls
	if index(t, calls, "Repair sdb1") != 0 {
		t.Fatalf("calls %v: repair first", calls)
	}
	w.steady(2, false)
	w.settled()
}

func TestStatus(t *testing.T) {
	w := newWorld(t)
	w.activate()
	w.tick(time.Minute)
	w.mount()
	w.reconcile()
	w.unmount()
	st, err := w.manager().Status(bgctx)
	if err != nil || len(st) != 1 {
		t.Fatalf("status %+v %v", st, err)
	}
	s := st[0]
	if s.Device.Name != "sdb1" || s.Stack == nil || len(s.Stack.Snapshots) != 1 || len(s.Mounts) != 0 {
		t.Fatalf("status %+v", s)
	}
	// The unmount is not handled yet: status shows the rotation to come,
	// and changes nothing.
	if len(s.Todo) == 0 || s.Todo[0].Kind != session.ActClose {
		t.Fatalf("todo %v", s.Todo)
	}
	if len(w.sys.CallsMatching("ArmSession")) != 1 {
		t.Fatal("Status made changes")
	}
	w.reconcile()
	st, _ = w.manager().Status(bgctx)
	if len(st[0].Todo) != 0 || len(st[0].Issues) != 0 {
		t.Fatalf("after reconcile: todo %v issues %v", st[0].Todo, st[0].Issues)
	}
}

func TestUdevRuleFollowsRegistry(t *testing.T) {
	w := newWorld(t)
	rule := filepath.Join(t.TempDir(), "90-dmsnap.rules")
	units := t.TempDir()
	m := w.manager()
	m.UdevRule = rule
	m.UnitDir = units
	if _, err := m.Activate(bgctx, session.ActivateRequest{Device: rawDev, Store: w.store}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(rule)
	if err != nil || !strings.Contains(string(b), `ENV{ID_FS_UUID}=="`+sdb1.FSUUID+`"`) {
		t.Fatalf("rule after activate: %v\n%s", err, b)
	}
	// The attach units and the watcher wait for the device's store.
	for _, p := range hostfiles.DropInPaths(units) {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), "RequiresMountsFor="+w.store+"\n") {
			t.Fatalf("%s after activate: %v\n%s", p, err, b)
		}
	}
	if err := m.Deactivate(bgctx, "sdb1"); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(rule)
	if strings.Contains(string(b), "RUN") || strings.Contains(string(b), "SYSTEMD_WANTS") {
		t.Fatalf("rule after deactivate still attaches:\n%s", b)
	}
	for _, p := range hostfiles.DropInPaths(units) {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("%s after deactivate: %v, want it gone", p, err)
		}
	}
}

func TestFailedConversionHoldsUpOnlyItsSession(t *testing.T) {
	w := newWorld(t)
	w.activate()
	w.tick(time.Minute)
	w.mount()
	w.reconcile()
	s1 := w.device().Sessions[0]
	damaged := errors.New("COW damaged")
	w.sys.FailCalls("Convert "+s1.Dir, damaged)
	w.tick(time.Minute)
	w.unmount()
	if _, err := w.manager().Reconcile(bgctx); !errors.Is(err, damaged) {
		t.Fatalf("reconcile: %v, want the conversion's error", err)
	}
	d := w.device()
	if cur := d.Current(); cur == nil || cur.N != 2 || cur.State != session.SessionArmed {
		t.Fatalf("the next session is not armed: %v", sessions(d))
	}
	if s := d.Session(1); s == nil || s.State != session.SessionClosing || !strings.Contains(s.Error, "COW damaged") {
		t.Fatalf("session 1 %+v", s)
	}
	// Session 2 opens, closes and converts while session 1 still fails
	// (every reconcile reports it).
	w.tick(time.Minute)
	w.mount()
	if _, err := w.manager().Reconcile(bgctx); !errors.Is(err, damaged) {
		t.Fatalf("reconcile: %v", err)
	}
	if cur := w.device().Current(); cur.N != 2 || cur.State != session.SessionOpen {
		t.Fatalf("session 2 did not open: %v", sessions(w.device()))
	}
	w.tick(time.Minute)
	w.unmount()
	w.manager().Reconcile(bgctx)
	d = w.device()
	if d.Session(2) != nil || d.Session(1) == nil || d.Current().N != 3 {
		t.Fatalf("sessions %v: want 1 (failing) and 3", sessions(d))
	}
	// Once the damage is dealt with, session 1 is finished too.
	w.sys.FailCalls("Convert "+s1.Dir, nil)
	w.reconcile()
	w.steady(3, false)
	w.settled()
}
