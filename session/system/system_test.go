//go:build !vm

package system

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

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/dm/dmtest"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

// prober knows the fake kernel's block devices.
type prober map[string]session.Identity

func (p prober) Identify(_ context.Context, path string) (session.Identity, error) {
	id, ok := p[path]
	if !ok {
		return session.Identity{}, fmt.Errorf("%s: %w", path, os.ErrNotExist)
	}
	return id, nil
}

type rig struct {
	t      *testing.T
	fk     *dmtest.Fake
	m      *session.Manager
	store  string
	mounts []session.MountInfo
	clock  time.Time
}

const rawPath = "/dev/vdb"

func newRig(t *testing.T) *rig {
	dir := t.TempDir()
	r := &rig{t: t, fk: dmtest.New(), store: filepath.Join(dir, "store"), clock: time.Unix(1700000000, 0).UTC()}
	d := r.fk.AddBlockDevice(rawPath, 64<<11) // 64 MiB
	r.m = &session.Manager{
		StateDir:   filepath.Join(dir, "state"),
		Kernel:     Kernel{DM: r.fk},
		Store:      Store{},
		Prober:     prober{rawPath: {Dev: d, Size: 64 << 20}},
		ReadMounts: func() ([]session.MountInfo, error) { return slices.Clone(r.mounts), nil },
		Stores:     []string{r.store},
		Now:        func() time.Time { return r.clock },
	}
	return r
}

func (r *rig) origin() dm.DeviceInfo {
	r.t.Helper()
	oi, err := r.fk.Info("dmsnap-vdb")
	if err != nil {
		r.t.Fatal(err)
	}
	return oi
}

func (r *rig) mount() {
	oi := r.origin()
	r.fk.SetMounted("/dev/mapper/dmsnap-vdb", "/mnt")
	r.mounts = []session.MountInfo{{ID: 70, ParentID: 1, Dev: oi.Dev, Root: "/", MountPoint: "/mnt", FSType: "ext4", Source: "/dev/mapper/dmsnap-vdb"}}
}

func (r *rig) unmount() {
	r.fk.SetMounted("/dev/mapper/dmsnap-vdb", "")
	r.mounts = nil
}

func (r *rig) reconcile() session.Report {
	r.t.Helper()
	rep, err := r.m.Reconcile(context.Background())
	if err != nil {
		r.t.Fatalf("reconcile: %v", err)
	}
	return rep
}

func (r *rig) devices() []string {
	var out []string
	for _, d := range r.fk.Devices() {
		out = append(out, strings.Fields(d)[0])
	}
	return out
}

// TestLifeCycleOverDMFake drives the Manager through the adapters over dm's
// in-memory kernel and the real snapstore: the interfaces fit, the stack is
// named and built as dm builds it, sessions land in the store as snapstore
// writes them.
func TestLifeCycleOverDMFake(t *testing.T) {
	ctx := context.Background()
	r := newRig(t)
	d, err := r.m.Activate(ctx, session.ActivateRequest{Device: rawPath, Store: r.store})
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "vdb" {
		t.Fatalf("name %s", d.Name)
	}
	if got, want := r.devices(), []string{"dmsnap-vdb", "dmsnap-vdb-cow1", "dmsnap-vdb-real", "dmsnap-vdb-snap1"}; !slices.Equal(got, want) {
		t.Fatalf("devices %v, want %v", got, want)
	}
	stacks, err := (Kernel{DM: r.fk}).Stacks(ctx)
	if err != nil || len(stacks) != 1 || !stacks[0].Complete() || stacks[0].NeedsRepair ||
		len(stacks[0].Snapshots) != 1 || stacks[0].Snapshots[0].State != session.SnapshotActive || stacks[0].RawDev != d.Identity.Dev {
		t.Fatalf("stacks %+v %v", stacks, err)
	}
	if r.fk.LoopCount() != 1 {
		t.Fatalf("%d loop devices", r.fk.LoopCount())
	}
	pend, err := (Store{}).Pending(ctx, r.store)
	if err != nil || len(pend) != 1 || pend[0].Phase != session.SessionArmed || pend[0].Name != "vdb" || !pend[0].Armed.Equal(r.clock) {
		t.Fatalf("pending %+v %v", pend, err)
	}
	if rep := r.reconcile(); len(rep.Done) != 0 {
		t.Fatalf("reconcile after activate did %v", rep.Done)
	}

	r.clock = r.clock.Add(time.Minute)
	r.mount()
	r.reconcile()
	reg, _ := r.m.Registry()
	s1 := reg.Devices[0].Sessions[0]
	if s1.State != session.SessionOpen || filepath.Base(s1.Dir) != "vdb_1700000060" {
		t.Fatalf("session after mount %+v", s1)
	}
	st, err := snapstore.ReadState(s1.Dir)
	if err != nil || st.Phase != snapstore.PhaseOpen || st.FsType != "ext4" {
		t.Fatalf("state.json %+v %v", st, err)
	}

	r.clock = r.clock.Add(time.Hour)
	r.unmount()
	r.fk.ResetLog()
	r.reconcile()
	if got, want := r.devices(), []string{"dmsnap-vdb", "dmsnap-vdb-cow2", "dmsnap-vdb-real", "dmsnap-vdb-snap2"}; !slices.Equal(got, want) {
		t.Fatalf("devices after rotation %v, want %v", got, want)
	}
	if r.fk.LoopCount() != 1 {
		t.Fatalf("%d loop devices after rotation", r.fk.LoopCount())
	}
	// dm's log: snap2 created and resumed before snap1 is removed.
	log := r.fk.Log()
	created := slices.IndexFunc(log, func(l string) bool { return strings.HasPrefix(l, "create dmsnap-vdb-snap2") })
	removed := slices.IndexFunc(log, func(l string) bool { return strings.HasPrefix(l, "remove dmsnap-vdb-snap1") })
	if created < 0 || removed < 0 || created > removed {
		t.Fatalf("rotation order in dm's log: %v", log)
	}
	sessions, err := snapstore.ListSessions(r.store)
	if err != nil || len(sessions) != 2 {
		t.Fatalf("sessions %+v %v", sessions, err)
	}
	if sessions[0].ID != "vdb_1700000060" || sessions[0].Meta == nil || sessions[0].Status == snapstore.StatusIncomplete {
		t.Fatalf("session 1 not converted: %+v", sessions[0])
	}
	if sessions[1].Status != snapstore.StatusIncomplete || sessions[1].Phase != snapstore.PhaseArmed {
		t.Fatalf("session 2: %+v", sessions[1])
	}

	// Deactivation while mounted is refused; then it tears everything down.
	r.clock = r.clock.Add(time.Minute)
	r.mount()
	r.reconcile() // session 2 opens
	if err := r.m.Deactivate(ctx, "vdb"); !errors.Is(err, session.ErrBusy) {
		t.Fatalf("deactivate while mounted: %v", err)
	}
	r.unmount()
	r.reconcile() // session 2 closes, 3 is armed
	reg, _ = r.m.Registry()
	s3 := reg.Devices[0].Current()
	if s3 == nil || s3.N != 3 {
		t.Fatalf("current session %+v", s3)
	}
	if err := r.m.Deactivate(ctx, rawPath); err != nil {
		t.Fatal(err)
	}
	if got := r.devices(); len(got) != 0 {
		t.Fatalf("devices left %v", got)
	}
	if r.fk.LoopCount() != 0 {
		t.Fatalf("%d loop devices left", r.fk.LoopCount())
	}
	sessions, _ = snapstore.ListSessions(r.store)
	for _, s := range sessions {
		if s.Status == snapstore.StatusIncomplete || s.Status == snapstore.StatusDamaged {
			t.Errorf("session %s left %s: %v", s.ID, s.Status, s.Err)
		}
	}
	if len(sessions) != 2 {
		t.Fatalf("%d sessions, want 2", len(sessions))
	}
	// dm's fake does not write COW headers: session 3's COW reads as never
	// used by the kernel, so its directory was discarded, not converted.
	if _, err := os.Stat(s3.Dir); !os.IsNotExist(err) {
		t.Fatalf("session 3's unused directory: %v", err)
	}
}

func TestStacksRecognisesLeftoversAndIgnoresOthers(t *testing.T) {
	ctx := context.Background()
	fk := dmtest.New()
	raw := fk.AddBlockDevice("/dev/vdc", 2048)
	// A device with a dmsnap- name but not dmsnap's UUID (a restore view,
	// say) is not part of any stack.
	if _, err := fk.Create("dmsnap-vdc-view", "OTHER-x"); err != nil {
		t.Fatal(err)
	}
	// A half-built stack: -real only, and a snapshot device without table.
	if _, err := fk.Create("dmsnap-vdc-real", "DMSNAP-vdc-real"); err != nil {
		t.Fatal(err)
	}
	if err := fk.Load("dmsnap-vdc-real", dm.Linear{Length: 2048, Device: raw}); err != nil {
		t.Fatal(err)
	}
	if err := fk.Resume("dmsnap-vdc-real"); err != nil {
		t.Fatal(err)
	}
	if _, err := fk.Create("dmsnap-vdc-snap4", "DMSNAP-vdc-snap4"); err != nil {
		t.Fatal(err)
	}
	stacks, err := (Kernel{DM: fk}).Stacks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(stacks) != 1 {
		t.Fatalf("stacks %+v", stacks)
	}
	s := stacks[0]
	if s.Name != "vdc" || !s.HasReal || s.HasOrigin || s.RawDev != raw || !s.NeedsRepair || len(s.Snapshots) != 0 {
		t.Fatalf("stack %+v", s)
	}
	if err := (Kernel{DM: fk}).StackDown(ctx, "vdc"); err != nil {
		t.Fatal(err)
	}
	if err := (Kernel{DM: fk}).RemoveSnapshot(ctx, "vdc", 9); err != nil {
		t.Fatalf("removing a snapshot that is gone: %v", err)
	}
}

func TestStoreDiscardAndPending(t *testing.T) {
	ctx := context.Background()
	store := t.TempDir()
	spec := session.ArmSpec{Name: "vdb", DevicePath: "/dev/vdb", Identity: session.Identity{Size: 64 << 20}, ChunkSize: 4096, Armed: time.Unix(1700000000, 5).UTC()}
	dir, err := (Store{}).ArmSession(ctx, store, spec)
	if err != nil {
		t.Fatal(err)
	}
	p, err := (Store{}).Pending(ctx, store)
	if err != nil || len(p) != 1 || p[0].COWUsed || !p[0].Armed.Equal(spec.Armed) {
		t.Fatalf("pending %+v %v", p, err)
	}
	// The kernel initialises the header when it loads the table.
	f, _ := os.OpenFile(filepath.Join(dir, snapstore.CowFile), os.O_RDWR, 0)
	f.WriteAt([]byte("SnAp"), 0)
	f.Close()
	if p, _ := (Store{}).Pending(ctx, store); !p[0].COWUsed {
		t.Fatal("a used COW is reported unused")
	}
	if err := (Store{}).Discard(ctx, dir); err == nil {
		t.Fatal("discarded a used COW")
	}
	dir2, _ := (Store{}).ArmSession(ctx, store, session.ArmSpec{Name: "vdb", ChunkSize: 4096, Identity: session.Identity{Size: 1 << 20}, Armed: time.Unix(1700000100, 0)})
	if err := (Store{}).Discard(ctx, dir2); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir2); !os.IsNotExist(err) {
		t.Fatalf("discarded directory still there: %v", err)
	}
	if err := (Store{}).Discard(ctx, dir2); err != nil {
		t.Fatalf("discarding twice: %v", err)
	}
}

func TestRemoveEmptySessionDirs(t *testing.T) {
	store := t.TempDir()
	mk := func(name string, files ...string) string {
		dir := filepath.Join(store, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	empty1, empty2 := mk("sdb1_1700000000"), mk("sdb1_1700000001")
	full := mk("sdb1_1700000002", "cow.img")
	other := mk("sdc1_1700000003")
	notSession := mk("lost+found")
	removeEmptySessionDirs(store, "sdb1")
	for _, d := range []string{empty1, empty2} {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: still there (%v)", d, err)
		}
	}
	for _, d := range []string{full, other, notSession} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s removed: %v", d, err)
		}
	}
}

// Convert and Discard leave a session alone while the kernel still uses its
// COW, whatever the registry says.
func TestStoreRefusesCOWInUse(t *testing.T) {
	ctx := context.Background()
	store := t.TempDir()
	spec := session.ArmSpec{Name: "vdb", DevicePath: "/dev/vdb", Identity: session.Identity{Size: 1 << 20}, ChunkSize: 4096, Armed: time.Unix(1700000000, 0).UTC()}
	dir, err := (Store{}).ArmSession(ctx, store, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := snapstore.MarkClosing(dir); err != nil {
		t.Fatal(err)
	}
	cow := filepath.Join(dir, snapstore.CowFile)
	busy := Store{ReleaseWait: 100 * time.Millisecond, Users: func(p string) ([]string, error) {
		if p == cow {
			return []string{"/dev/loop9 is bound to it"}, nil
		}
		return nil, nil
	}}
	before, _ := os.ReadDir(dir)
	for name, call := range map[string]func() error{
		"convert": func() error { return busy.Convert(ctx, dir) },
		"discard": func() error { return busy.Discard(ctx, dir) },
	} {
		err := call()
		if err == nil || !strings.Contains(err.Error(), "loop9") {
			t.Fatalf("%s of a COW in use: %v, want a refusal naming the loop device", name, err)
		}
	}
	after, _ := os.ReadDir(dir)
	if len(after) != len(before) {
		t.Fatalf("directory changed: %v → %v", before, after)
	}
	if _, err := os.Stat(cow); err != nil {
		t.Fatalf("cow.img: %v", err)
	}
	// Once nothing uses it, it converts.
	free := Store{Users: func(string) ([]string, error) { return nil, nil }}
	if err := free.Convert(ctx, dir); err != nil {
		t.Fatalf("convert once unused: %v", err)
	}
}

// Problems is what status --check fails on: a retention that cannot keep
// min-free, a snapshot the kernel dropped, a failed step, an issue.
func TestReportProblems(t *testing.T) {
	d := DeviceReport{Name: "sdb1", Sessions: []LiveSession{{N: 1, Snapshot: &SnapshotReport{State: session.SnapshotActive}}}}
	if p := d.Problems(); len(p) != 0 {
		t.Fatalf("a healthy device: %q", p)
	}
	d.RetentionShort = "sdb1 has 1 restore point"
	d.Sessions = append(d.Sessions, LiveSession{N: 2, Snapshot: &SnapshotReport{State: session.SnapshotInvalid}})
	d.Error, d.Issues = "arm: no room", []string{"store /x: EIO"}
	want := []string{"sdb1: sdb1 has 1 restore point", "sdb1: the kernel dropped the snapshot of session 2", "sdb1: arm: no room", "sdb1: store /x: EIO"}
	if p := d.Problems(); !slices.Equal(p, want) {
		t.Fatalf("problems %q, want %q", p, want)
	}
	if h := headroom(100, 40); h != 60 {
		t.Fatalf("headroom(100, 40) = %d", h)
	}
	if h := headroom(100, 140); h != 0 {
		t.Fatalf("headroom past the mapped part = %d, want 0", h)
	}
}
