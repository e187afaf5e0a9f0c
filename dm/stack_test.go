package dm_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/dm/dmtest"
	"golang.org/x/sys/unix"
)

const sdbSectors = 131072 // 64 MiB

func newStack(t *testing.T) (*dmtest.Fake, dm.Stack, dm.Dev) {
	t.Helper()
	f := dmtest.New()
	dev := f.AddBlockDevice("/dev/sdb1", sdbSectors)
	return f, dm.Stack{Name: "sdb1", Device: "/dev/sdb1", DM: f}, dev
}

// cowLoop attaches a fake loop over a real temporary file of the given size.
func cowLoop(t *testing.T, f *dmtest.Fake, size int64) *dm.Loop {
	t.Helper()
	l, err := f.AttachLoop(cowFile(t, size), dm.LoopOptions{AutoClear: true})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func wantLog(t *testing.T, f *dmtest.Fake, want ...string) {
	t.Helper()
	if got := f.Log(); !reflect.DeepEqual(got, want) {
		t.Errorf("kernel calls:\n got %q\nwant %q", got, want)
	}
}

func wantDevices(t *testing.T, f *dmtest.Fake, want ...string) {
	t.Helper()
	got := f.Devices()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("devices = %q, want %q", got, want)
	}
}

func TestStackNames(t *testing.T) {
	s := dm.Stack{Name: "sdb1"}
	if s.OriginName() != "dmsnap-sdb1" || s.RealName() != "dmsnap-sdb1-real" || s.SnapshotName(7) != "dmsnap-sdb1-snap7" {
		t.Errorf("names: %s %s %s", s.OriginName(), s.RealName(), s.SnapshotName(7))
	}
	if s.OriginPath() != "/dev/mapper/dmsnap-sdb1" || s.SnapshotPath(2) != "/dev/mapper/dmsnap-sdb1-snap2" {
		t.Errorf("paths: %s %s", s.OriginPath(), s.SnapshotPath(2))
	}
	for _, bad := range []string{"", "a/b", "a b", "..", "x-real", "x-snap3", strings.Repeat("n", 101), "my.disk_1+x", "a\x00"} {
		if err := dm.ValidateName(bad); err == nil {
			t.Errorf("ValidateName(%q) accepted", bad)
		}
	}
	for _, good := range []string{"sdb1", "nvme0n1p2", "my.disk_1-x", "x-snapshot", "real"} {
		if err := dm.ValidateName(good); err != nil {
			t.Errorf("ValidateName(%q): %v", good, err)
		}
	}
}

func TestBuild(t *testing.T) {
	f, s, dev := newStack(t)
	if err := s.Build(); err != nil {
		t.Fatal(err)
	}
	wantLog(t, f,
		"create dmsnap-sdb1-real", "load dmsnap-sdb1-real linear", "resume dmsnap-sdb1-real",
		"create dmsnap-sdb1", "load dmsnap-sdb1 snapshot-origin", "resume dmsnap-sdb1")
	real, _ := f.Info("dmsnap-sdb1-real")
	tbl, _ := f.Table("dmsnap-sdb1-real")
	if want := "0 131072 linear " + dev.String() + " 0"; len(tbl) != 1 || tbl[0].String() != want {
		t.Errorf("real table %v, want %q", tbl, want)
	}
	tbl, _ = f.Table("dmsnap-sdb1")
	if want := "0 131072 snapshot-origin " + real.Dev.String(); len(tbl) != 1 || tbl[0].String() != want {
		t.Errorf("origin table %v, want %q", tbl, want)
	}
	if ok, err := s.Active(); !ok || err != nil {
		t.Errorf("Active = %v, %v", ok, err)
	}
	// A second activation of the same name is refused by the kernel.
	f2 := dm.Stack{Name: "sdb1", Device: "/dev/sdb1", DM: f}
	if err := f2.Build(); !errors.Is(err, dm.ErrBusy) {
		t.Errorf("second Build: %v, want ErrBusy", err)
	}
}

func TestBuildRefusesMountedDevice(t *testing.T) {
	f, s, _ := newStack(t)
	f.SetMounted("/dev/sdb1", "/mnt")
	err := s.Build()
	if !errors.Is(err, dm.ErrBusy) || !strings.Contains(err.Error(), "is mounted on /mnt") {
		t.Fatalf("err = %v, want ErrBusy saying it is mounted", err)
	}
	wantDevices(t, f)
}

func TestBuildUndoesEachStep(t *testing.T) {
	steps := []struct{ op, target string }{
		{"create", "dmsnap-sdb1-real"}, {"load", "dmsnap-sdb1-real"}, {"resume", "dmsnap-sdb1-real"},
		{"create", "dmsnap-sdb1"}, {"load", "dmsnap-sdb1"}, {"resume", "dmsnap-sdb1"},
	}
	for _, st := range steps {
		t.Run(st.op+" "+st.target, func(t *testing.T) {
			f, s, _ := newStack(t)
			f.FailNext(st.op, st.target, unix.EINVAL)
			err := s.Build()
			if !errors.Is(err, unix.EINVAL) {
				t.Fatalf("err = %v, want EINVAL", err)
			}
			wantDevices(t, f)
		})
	}
}

func TestAddSnapshotOrder(t *testing.T) {
	f, s, _ := newStack(t)
	if err := s.Build(); err != nil {
		t.Fatal(err)
	}
	cow := cowLoop(t, f, 80<<20)
	f.ResetLog()
	if err := s.AddSnapshot(1, cow.Path, 8); err != nil {
		t.Fatal(err)
	}
	wantLog(t, f,
		"zero "+cow.Path,
		"create dmsnap-sdb1-snap1", "load dmsnap-sdb1-snap1 snapshot",
		"load dmsnap-sdb1 snapshot-origin", "suspend dmsnap-sdb1",
		"resume dmsnap-sdb1-snap1", "resume dmsnap-sdb1")
	// The snapshot names -real, never the origin.
	real, _ := f.Info("dmsnap-sdb1-real")
	snaps, err := s.Snapshots()
	if err != nil {
		t.Fatal(err)
	}
	want := dm.Snapshot{Length: sdbSectors, Origin: real.Dev, COW: cow.Dev, ChunkSectors: 8}
	if len(snaps) != 1 || snaps[0].N != 1 || snaps[0].Target != want {
		t.Fatalf("snapshots = %+v, want one with %+v", snaps, want)
	}
	st, err := s.SnapshotStatus(1)
	if err != nil {
		t.Fatal(err)
	}
	if st != (dm.SnapshotStatus{State: dm.SnapshotActive, Allocated: 16, Total: 80 << 20 / 512, Metadata: 16}) {
		t.Errorf("status = %+v", st)
	}
	if f.Suspended("dmsnap-sdb1") || f.HasInactive("dmsnap-sdb1") {
		t.Error("origin left suspended or with an inactive table")
	}
}

func TestAddSnapshotUndoesEachStep(t *testing.T) {
	steps := []struct{ op, target string }{
		{"zero", ""}, {"create", "dmsnap-sdb1-snap1"}, {"load", "dmsnap-sdb1-snap1"},
		{"load", "dmsnap-sdb1"}, {"suspend", "dmsnap-sdb1"}, {"resume", "dmsnap-sdb1-snap1"},
	}
	for _, st := range steps {
		t.Run(st.op+" "+st.target, func(t *testing.T) {
			f, s, _ := newStack(t)
			if err := s.Build(); err != nil {
				t.Fatal(err)
			}
			cow := cowLoop(t, f, 1<<20)
			f.FailNext(st.op, st.target, unix.EIO)
			if err := s.AddSnapshot(1, cow.Path, 8); !errors.Is(err, unix.EIO) {
				t.Fatalf("err = %v, want EIO", err)
			}
			wantDevices(t, f, "dmsnap-sdb1", "dmsnap-sdb1-real")
			if f.Suspended("dmsnap-sdb1") || f.HasInactive("dmsnap-sdb1") {
				t.Error("origin left suspended or with an inactive table")
			}
			// The stack still works: a retry succeeds.
			if err := s.AddSnapshot(1, cow.Path, 8); err != nil {
				t.Fatalf("retry: %v", err)
			}
		})
	}
}

// A failing origin resume is retried once: the origin must not stay
// suspended.
func TestAddSnapshotRetriesOriginResume(t *testing.T) {
	f, s, _ := newStack(t)
	if err := s.Build(); err != nil {
		t.Fatal(err)
	}
	cow := cowLoop(t, f, 1<<20)
	f.FailNext("resume", "dmsnap-sdb1", unix.EAGAIN)
	if err := s.AddSnapshot(1, cow.Path, 8); err != nil {
		t.Fatalf("err = %v", err)
	}
	if f.Suspended("dmsnap-sdb1") {
		t.Error("origin left suspended")
	}
	// Both attempts failing: say that the origin is stuck.
	cow2 := cowLoop(t, f, 1<<20)
	f.FailNext("resume", "dmsnap-sdb1", unix.EAGAIN)
	f.FailNext("resume", "dmsnap-sdb1", unix.EAGAIN)
	err := s.AddSnapshot(2, cow2.Path, 8)
	if err == nil || !strings.Contains(err.Error(), "left suspended") {
		t.Fatalf("err = %v, want it to say the origin is left suspended", err)
	}
}

func TestAddSnapshotRefusals(t *testing.T) {
	f, s, _ := newStack(t)
	if err := s.Build(); err != nil {
		t.Fatal(err)
	}
	if err := s.AddSnapshot(1, "/dev/mapper/dmsnap-sdb1-real", 8); err == nil || !strings.Contains(err.Error(), "stack's own device") {
		t.Errorf("COW = -real: err = %v", err)
	}
	cow := cowLoop(t, f, 1<<20)
	if err := s.AddSnapshot(1, cow.Path, 6); err == nil || !strings.Contains(err.Error(), "power of two") {
		t.Errorf("chunk 6: err = %v", err)
	}
	if err := s.AddSnapshot(1, cow.Path, 8); err != nil {
		t.Fatal(err)
	}
	// The live store on cow must never be zeroed for another snapshot.
	if err := s.AddSnapshot(2, cow.Path, 8); !errors.Is(err, dm.ErrBusy) {
		t.Errorf("reusing a live COW: err = %v, want ErrBusy", err)
	}
	none := dm.Stack{Name: "nothere", DM: f}
	if err := none.AddSnapshot(1, cow.Path, 8); !errors.Is(err, dm.ErrNotFound) {
		t.Errorf("no stack: err = %v, want ErrNotFound", err)
	}
}

func TestReattachDoesNotZero(t *testing.T) {
	f, s, _ := newStack(t)
	if err := s.Build(); err != nil {
		t.Fatal(err)
	}
	cow := cowLoop(t, f, 1<<20)
	f.ResetLog()
	if err := s.ReattachSnapshot(3, cow.Path, 8); err != nil {
		t.Fatal(err)
	}
	for _, l := range f.Log() {
		if strings.HasPrefix(l, "zero") {
			t.Fatalf("reattach zeroed the store: %q", f.Log())
		}
	}
}

func TestRotate(t *testing.T) {
	f, s, _ := newStack(t)
	if err := s.Build(); err != nil {
		t.Fatal(err)
	}
	cow1, cow2 := cowLoop(t, f, 1<<20), cowLoop(t, f, 1<<20)
	if err := s.AddSnapshot(1, cow1.Path, 8); err != nil {
		t.Fatal(err)
	}
	cow1.Close()
	f.ResetLog()
	if err := s.Rotate(1, 2, cow2.Path, 8); err != nil {
		t.Fatal(err)
	}
	wantLog(t, f,
		"zero "+cow2.Path,
		"create dmsnap-sdb1-snap2", "load dmsnap-sdb1-snap2 snapshot",
		"load dmsnap-sdb1 snapshot-origin", "suspend dmsnap-sdb1",
		"resume dmsnap-sdb1-snap2", "remove dmsnap-sdb1-snap1", "resume dmsnap-sdb1")
	wantDevices(t, f, "dmsnap-sdb1", "dmsnap-sdb1-real", "dmsnap-sdb1-snap2")
	// The auto-clear loop of the old store went away with its snapshot.
	if _, err := f.FindLoop(cow1.Backing); !errors.Is(err, dm.ErrNotFound) {
		t.Errorf("old COW loop still bound: %v", err)
	}
}

func TestRotateUndoesWhenOldCannotGo(t *testing.T) {
	f, s, _ := newStack(t)
	if err := s.Build(); err != nil {
		t.Fatal(err)
	}
	cow1, cow2 := cowLoop(t, f, 1<<20), cowLoop(t, f, 1<<20)
	if err := s.AddSnapshot(1, cow1.Path, 8); err != nil {
		t.Fatal(err)
	}
	f.FailNext("remove", "dmsnap-sdb1-snap1", unix.EBUSY)
	err := s.Rotate(1, 2, cow2.Path, 8)
	if !errors.Is(err, dm.ErrBusy) {
		t.Fatalf("err = %v, want ErrBusy", err)
	}
	wantDevices(t, f, "dmsnap-sdb1", "dmsnap-sdb1-real", "dmsnap-sdb1-snap1")
	if f.Suspended("dmsnap-sdb1") {
		t.Error("origin left suspended")
	}
	// An open old snapshot (a mounted view) is refused before any change.
	f.SetMounted("/dev/mapper/dmsnap-sdb1-snap1", "/view")
	f.ResetLog()
	if err := s.Rotate(1, 2, cow2.Path, 8); !errors.Is(err, dm.ErrBusy) {
		t.Fatalf("open old snapshot: err = %v, want ErrBusy", err)
	}
	wantLog(t, f)
}

func TestRemoveSnapshot(t *testing.T) {
	f, s, _ := newStack(t)
	if err := s.Build(); err != nil {
		t.Fatal(err)
	}
	cow := cowLoop(t, f, 1<<20)
	if err := s.AddSnapshot(1, cow.Path, 8); err != nil {
		t.Fatal(err)
	}
	f.SetMounted(s.SnapshotPath(1), "/view")
	if err := s.RemoveSnapshot(1); !errors.Is(err, dm.ErrBusy) {
		t.Fatalf("open snapshot: err = %v, want ErrBusy", err)
	}
	f.SetMounted(s.SnapshotPath(1), "")
	f.ResetLog()
	if err := s.RemoveSnapshot(1); err != nil {
		t.Fatal(err)
	}
	wantLog(t, f, "suspend dmsnap-sdb1", "remove dmsnap-sdb1-snap1", "resume dmsnap-sdb1")
	if err := s.RemoveSnapshot(1); !errors.Is(err, dm.ErrNotFound) {
		t.Errorf("second remove: err = %v, want ErrNotFound", err)
	}
	// A failed remove resumes the origin.
	if err := s.AddSnapshot(2, cow.Path, 8); err != nil {
		t.Fatal(err)
	}
	f.FailNext("remove", "dmsnap-sdb1-snap2", unix.EIO)
	if err := s.RemoveSnapshot(2); !errors.Is(err, unix.EIO) {
		t.Fatalf("err = %v, want EIO", err)
	}
	if f.Suspended("dmsnap-sdb1") {
		t.Error("origin left suspended")
	}
}

func TestTeardown(t *testing.T) {
	f, s, _ := newStack(t)
	if err := s.Build(); err != nil {
		t.Fatal(err)
	}
	cow := cowLoop(t, f, 1<<20)
	if err := s.AddSnapshot(4, cow.Path, 8); err != nil {
		t.Fatal(err)
	}
	cow.Close()
	f.SetMounted(s.OriginPath(), "/mnt")
	err := s.Teardown()
	if !errors.Is(err, dm.ErrBusy) || !strings.Contains(err.Error(), "/dev/mapper/dmsnap-sdb1 is open or mounted") {
		t.Fatalf("mounted origin: err = %v", err)
	}
	wantDevices(t, f, "dmsnap-sdb1", "dmsnap-sdb1-real", "dmsnap-sdb1-snap4")
	f.SetMounted(s.OriginPath(), "")
	f.ResetLog()
	if err := s.Teardown(); err != nil {
		t.Fatal(err)
	}
	wantLog(t, f, "remove dmsnap-sdb1", "remove dmsnap-sdb1-snap4", "remove dmsnap-sdb1-real")
	wantDevices(t, f)
	if f.LoopCount() != 0 {
		t.Errorf("%d loop devices left", f.LoopCount())
	}
	// Idempotent.
	if err := s.Teardown(); err != nil {
		t.Errorf("second teardown: %v", err)
	}
	// And the raw device is free again.
	if _, err := f.CheckUnused("/dev/sdb1"); err != nil {
		t.Errorf("raw device still held: %v", err)
	}
}

// Another stack whose name extends ours must not be mistaken for one of
// our snapshots.
func TestSnapshotsIgnoreOtherStacks(t *testing.T) {
	f := dmtest.New()
	f.AddBlockDevice("/dev/sdb1", sdbSectors)
	f.AddBlockDevice("/dev/sdc1", sdbSectors)
	a := dm.Stack{Name: "a", Device: "/dev/sdb1", DM: f}
	b := dm.Stack{Name: "a-snapx", Device: "/dev/sdc1", DM: f}
	for _, s := range []dm.Stack{a, b} {
		if err := s.Build(); err != nil {
			t.Fatal(err)
		}
	}
	cow := cowLoop(t, f, 1<<20)
	if err := b.AddSnapshot(1, cow.Path, 8); err != nil {
		t.Fatal(err)
	}
	snaps, err := a.Snapshots()
	if err != nil || len(snaps) != 0 {
		t.Fatalf("a's snapshots = %+v, %v", snaps, err)
	}
	if err := a.Teardown(); err != nil {
		t.Fatal(err)
	}
	wantDevices(t, f, "dmsnap-a-snapx", "dmsnap-a-snapx-real", "dmsnap-a-snapx-snap1")
}

// Repair brings back a stack a crash left in the middle of AddSnapshot:
// a snapshot with only an inactive table, a reloaded origin, suspended.
func TestRepairAfterCrashInAddSnapshot(t *testing.T) {
	f, s, _ := newStack(t)
	if err := s.Build(); err != nil {
		t.Fatal(err)
	}
	cow := cowLoop(t, f, 1<<20)
	real, _ := f.Info(s.RealName())
	snap := dm.Snapshot{Length: sdbSectors, Origin: real.Dev, COW: cow.Dev, ChunkSectors: 8}
	if _, err := f.Create(s.SnapshotName(1), ""); err != nil {
		t.Fatal(err)
	}
	if err := f.Load(s.SnapshotName(1), snap); err != nil {
		t.Fatal(err)
	}
	if err := f.Load(s.OriginName(), dm.SnapshotOrigin{Length: sdbSectors, Origin: real.Dev}); err != nil {
		t.Fatal(err)
	}
	if err := f.Suspend(s.OriginName()); err != nil {
		t.Fatal(err)
	}
	// A half-made snapshot is not a snapshot, but teardown would see it.
	if snaps, err := s.Snapshots(); err != nil || len(snaps) != 0 {
		t.Fatalf("Snapshots = %+v, %v; want none live", snaps, err)
	}
	if err := s.Repair(); err != nil {
		t.Fatal(err)
	}
	wantDevices(t, f, "dmsnap-sdb1", "dmsnap-sdb1-real")
	if f.Suspended(s.OriginName()) || f.HasInactive(s.OriginName()) {
		t.Error("origin still suspended or with an inactive table")
	}
	if err := s.AddSnapshot(1, cow.Path, 8); err != nil {
		t.Fatalf("AddSnapshot after repair: %v", err)
	}
	// Repair leaves a healthy stack as it is.
	f.ResetLog()
	if err := s.Repair(); err != nil {
		t.Fatal(err)
	}
	wantLog(t, f)
}

// Repair completes a Build a crash cut short after loading the origin.
func TestRepairAfterCrashInBuild(t *testing.T) {
	f, s, dev := newStack(t)
	ri, err := f.Create(s.RealName(), "")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Load(s.RealName(), dm.Linear{Length: sdbSectors, Device: dev}); err != nil {
		t.Fatal(err)
	}
	if err := f.Resume(s.RealName()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Create(s.OriginName(), ""); err != nil {
		t.Fatal(err)
	}
	if err := f.Load(s.OriginName(), dm.SnapshotOrigin{Length: sdbSectors, Origin: ri.Dev}); err != nil {
		t.Fatal(err)
	}
	if err := s.Repair(); err != nil {
		t.Fatal(err)
	}
	info, err := f.Info(s.OriginName())
	if err != nil || !info.LiveTable || info.Suspended {
		t.Fatalf("origin after repair: %+v, %v", info, err)
	}
	// A teardown of a stack with a table-less snapshot device removes it too.
	if _, err := f.Create(s.SnapshotName(9), ""); err != nil {
		t.Fatal(err)
	}
	if err := s.Teardown(); err != nil {
		t.Fatal(err)
	}
	wantDevices(t, f)
}

// TestParseUUID: the UUIDs a stack makes parse back to its name and part,
// names with dashes included; anything else is not dmsnap's.
func TestParseUUID(t *testing.T) {
	for _, part := range []string{"origin", "real", "snap3", "cow3", "at1700000000"} {
		for _, name := range []string{"sdb1", "my-disk", "a"} {
			u := dm.UUIDPrefix + name + "-" + part
			n, p, ok := dm.ParseUUID(u)
			if !ok || n != name || p != part {
				t.Errorf("ParseUUID(%q) = %q, %q, %v", u, n, p, ok)
			}
		}
	}
	for _, u := range []string{"", "LVM-abc", "DMSNAP-", "DMSNAP-origin", "DMSNAP--real", "dmsnap-sdb1-real"} {
		if n, p, ok := dm.ParseUUID(u); ok {
			t.Errorf("ParseUUID(%q) = %q, %q, true; want not dmsnap's", u, n, p)
		}
	}
}
