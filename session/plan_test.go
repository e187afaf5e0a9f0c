package session

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

var (
	planNow = time.Unix(1700003600, 0).UTC()
	armedAt = time.Unix(1700000000, 0).UTC()
	rawID   = Identity{Dev: DevNum{Major: 8, Minor: 17}, Size: 1 << 30}
	originN = DevNum{Major: 253, Minor: 0}
)

func planDevice(state DeviceState, sessions ...*Session) *Device {
	next := 1
	for _, s := range sessions {
		next = max(next, s.N+1)
	}
	return &Device{Name: "sdb1", Path: "/dev/sdb1", Identity: rawID, Origin: originN, ChunkSize: 4096,
		Store: "/snapshot", State: state, NextSession: next, Sessions: sessions}
}

func liveStack(snaps ...int) StackInfo {
	st := StackInfo{Name: "sdb1", HasOrigin: true, HasReal: true, OriginDev: originN, RawDev: rawID.Dev}
	for _, n := range snaps {
		st.Snapshots = append(st.Snapshots, SnapshotInfo{N: n, Dev: DevNum{Major: 253, Minor: uint32(n)}, State: SnapshotActive})
	}
	return st
}

func observed(stacks []StackInfo, mounted ...DevNum) Observed {
	obs := Observed{Now: planNow, Stacks: map[string]StackInfo{}, Mounts: map[DevNum][]MountInfo{}, Raw: map[string]RawDevice{}}
	for _, s := range stacks {
		obs.Stacks[s.Name] = s
	}
	for _, d := range mounted {
		obs.Mounts[d] = []MountInfo{{ID: 50, Dev: d, MountPoint: "/mnt", FSType: "xfs"}}
	}
	return obs
}

// kinds renders a plan as "kind session" strings.
func kinds(acts []Action) []string {
	var out []string
	for _, a := range acts {
		s := string(a.Kind)
		if a.Session > 0 {
			s += " " + string(rune('0'+a.Session))
		}
		out = append(out, s)
	}
	return out
}

func sess(n int, state SessionState) *Session {
	return &Session{N: n, State: state, Dir: "/snapshot/sdb1_" + string(rune('0'+n)), Armed: armedAt.Add(time.Duration(n) * time.Minute)}
}

func TestPlanSteadyStatesNeedNothing(t *testing.T) {
	cases := map[string]struct {
		d   *Device
		obs Observed
	}{
		"armed":  {planDevice(DeviceActive, sess(1, SessionArmed)), observed([]StackInfo{liveStack(1)})},
		"open":   {planDevice(DeviceActive, sess(1, SessionOpen)), observed([]StackInfo{liveStack(1)}, originN)},
		"absent": {planDevice(DeviceActive, sess(1, SessionArmed)), observed(nil)},
	}
	for name, c := range cases {
		acts, _ := PlanDevice(c.d, c.obs)
		if len(acts) != 0 {
			t.Errorf("%s: plan %v", name, kinds(acts))
		}
	}
}

func TestPlanRotationOrder(t *testing.T) {
	d := planDevice(DeviceActive, sess(1, SessionOpen))
	acts, issues := PlanDevice(d, observed([]StackInfo{liveStack(1)}))
	want := []string{"close 1", "new-session 2", "arm 2", "attach 2", "mark-armed 2", "remove-snapshot 1", "convert 1", "forget-session 1"}
	if !reflect.DeepEqual(kinds(acts), want) || len(issues) != 0 {
		t.Fatalf("plan %v, issues %v\nwant %v", kinds(acts), issues, want)
	}
	if !acts[0].At.Equal(planNow) || !acts[1].At.Equal(planNow) {
		t.Fatalf("close and new session at %v %v, want now", acts[0].At, acts[1].At)
	}
}

func TestPlanMountOpens(t *testing.T) {
	d := planDevice(DeviceActive, sess(1, SessionArmed))
	acts, _ := PlanDevice(d, observed([]StackInfo{liveStack(1)}, originN))
	if got := kinds(acts); !reflect.DeepEqual(got, []string{"open 1"}) || acts[0].FSType != "xfs" || !acts[0].At.Equal(planNow) {
		t.Fatalf("plan %v %+v", got, acts)
	}
	// An open interrupted after the intent keeps its recorded mount time.
	s := sess(1, SessionOpening)
	s.Mounted, s.FSType = armedAt.Add(time.Hour), "ext4"
	acts, _ = PlanDevice(planDevice(DeviceActive, s), observed([]StackInfo{liveStack(1)}, originN))
	if len(acts) != 1 || acts[0].Kind != ActOpen || !acts[0].At.Equal(s.Mounted) || acts[0].FSType != "ext4" {
		t.Fatalf("resumed open %+v", acts)
	}
}

func TestPlanAfterReboot(t *testing.T) {
	raw := map[string]RawDevice{"sdb1": {Path: "/dev/sdc1", Identity: Identity{Dev: DevNum{Major: 8, Minor: 33}, Size: rawID.Size}}}
	// Armed: re-stacked over the device where it is now, same COW re-attached.
	obs := observed(nil)
	obs.Raw = raw
	acts, _ := PlanDevice(planDevice(DeviceActive, sess(1, SessionArmed)), obs)
	if got := kinds(acts); !reflect.DeepEqual(got, []string{"stack-up", "attach 1"}) {
		t.Fatalf("armed after reboot: %v", got)
	}
	if acts[0].Path != "/dev/sdc1" || acts[0].Dev != (DevNum{Major: 8, Minor: 33}) {
		t.Fatalf("stack-up %+v", acts[0])
	}
	// Open: the crash ended the mount; the session is closed and a new one armed.
	acts, _ = PlanDevice(planDevice(DeviceActive, sess(1, SessionOpen)), obs)
	want := []string{"stack-up", "close 1", "new-session 2", "arm 2", "attach 2", "mark-armed 2", "convert 1", "forget-session 1"}
	if got := kinds(acts); !reflect.DeepEqual(got, want) {
		t.Fatalf("open after reboot: %v\nwant %v", got, want)
	}
	// A half-built stack is taken down first.
	obs.Stacks["sdb1"] = StackInfo{Name: "sdb1", HasReal: true, RawDev: DevNum{Major: 8, Minor: 33}}
	acts, _ = PlanDevice(planDevice(DeviceActive, sess(1, SessionArmed)), obs)
	if got := kinds(acts); !reflect.DeepEqual(got, []string{"stack-down", "stack-up", "attach 1"}) {
		t.Fatalf("half-built: %v", got)
	}
}

func TestPlanRefusesForeignStack(t *testing.T) {
	st := liveStack(1)
	st.RawDev = DevNum{Major: 8, Minor: 99}
	acts, issues := PlanDevice(planDevice(DeviceActive, sess(1, SessionArmed)), observed([]StackInfo{st}))
	if len(acts) != 0 || len(issues) != 1 || !strings.Contains(issues[0].Problem, "maps device 8:99") {
		t.Fatalf("plan %v issues %v", kinds(acts), issues)
	}
}

func TestPlanDeactivate(t *testing.T) {
	d := planDevice(DeviceDeactivating, sess(1, SessionArmed))
	acts, issues := PlanDevice(d, observed([]StackInfo{liveStack(1)}, originN))
	if len(acts) != 0 || len(issues) != 1 || !strings.Contains(issues[0].Problem, "mounted on /mnt") {
		t.Fatalf("mounted: plan %v issues %v", kinds(acts), issues)
	}
	acts, _ = PlanDevice(d, observed([]StackInfo{liveStack(1)}))
	want := []string{"close 1", "stack-down", "convert 1", "forget-session 1", "forget-device"}
	if got := kinds(acts); !reflect.DeepEqual(got, want) {
		t.Fatalf("plan %v, want %v", got, want)
	}
	// A session whose directory exists but whose COW the kernel never used
	// is discarded, not converted.
	obs := observed(nil)
	obs.Pending = []PendingSession{{Dir: "/snapshot/sdb1_1", Name: "sdb1", Armed: sess(1, "").Armed, Phase: SessionArmed}}
	acts, _ = PlanDevice(planDevice(DeviceDeactivating, sess(1, SessionArming)), obs)
	if got := kinds(acts); !reflect.DeepEqual(got, []string{"close 1", "discard 1", "forget-session 1", "forget-device"}) {
		t.Fatalf("never used: %v", got)
	}
}

func TestPlanInvalidSnapshot(t *testing.T) {
	st := liveStack(1)
	st.Snapshots[0].State = SnapshotInvalid
	acts, _ := PlanDevice(planDevice(DeviceActive, sess(1, SessionOpen)), observed([]StackInfo{st}, originN))
	want := []string{"invalidate 1", "new-session 2", "arm 2", "attach 2", "mark-armed 2", "open 2", "remove-snapshot 1", "convert 1", "forget-session 1"}
	if got := kinds(acts); !reflect.DeepEqual(got, want) {
		t.Fatalf("plan %v\nwant %v", got, want)
	}
}

func TestPlanRelocatesRenamedDirectory(t *testing.T) {
	s := sess(1, SessionOpening)
	s.Mounted = planNow
	obs := observed([]StackInfo{liveStack(1)}, originN)
	obs.Pending = []PendingSession{{Dir: "/snapshot/sdb1_1700003600", Name: "sdb1", Armed: s.Armed, Phase: SessionArmed, COWUsed: true}}
	acts, _ := PlanDevice(planDevice(DeviceActive, s), obs)
	if got := kinds(acts); !reflect.DeepEqual(got, []string{"relocate 1", "open 1"}) || acts[0].Dir != "/snapshot/sdb1_1700003600" {
		t.Fatalf("plan %v %+v", got, acts)
	}
}

func TestPlanOrphans(t *testing.T) {
	reg := &Registry{Devices: []*Device{planDevice(DeviceActive, sess(1, SessionArmed))}}
	obs := observed([]StackInfo{liveStack(1), {Name: "old", HasReal: true}, {Name: "busy", HasOrigin: true, HasReal: true, OriginDev: DevNum{Major: 253, Minor: 9}, OriginOpen: 1}})
	obs.Pending = []PendingSession{
		{Dir: "/snapshot/sdb1_1", Name: "sdb1", Armed: sess(1, "").Armed, Phase: SessionArmed, COWUsed: true}, // owned
		{Dir: "/snapshot/x_1", Name: "x", Armed: armedAt, Phase: SessionArmed},
		{Dir: "/snapshot/x_2", Name: "x", Armed: armedAt.Add(time.Second), Phase: SessionOpen, COWUsed: true},
		{Dir: "/snapshot/x_3", Name: "x", Armed: armedAt.Add(2 * time.Second), Phase: SessionClosing, COWUsed: true},
	}
	acts, issues := Plan(reg, obs)
	var got []string
	for _, a := range acts {
		got = append(got, string(a.Kind)+" "+a.Device+" "+a.Dir)
	}
	want := []string{"remove-stack old ", "discard-dir x /snapshot/x_1", "close-dir x /snapshot/x_2", "convert-dir x /snapshot/x_2", "convert-dir x /snapshot/x_3"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("plan %q\nwant %q", got, want)
	}
	if len(issues) != 1 || issues[0].Device != "busy" {
		t.Fatalf("issues %v", issues)
	}
}

func TestPlanIsPure(t *testing.T) {
	reg := &Registry{Devices: []*Device{planDevice(DeviceActive, sess(1, SessionOpen), sess(2, SessionClosing))}}
	before, _ := json.Marshal(reg)
	obs := observed([]StackInfo{liveStack(1, 2)})
	a1, i1 := Plan(reg, obs)
	a2, i2 := Plan(reg, obs)
	if !reflect.DeepEqual(a1, a2) || !reflect.DeepEqual(i1, i2) {
		t.Fatal("two plans of the same input differ")
	}
	after, _ := json.Marshal(reg)
	if string(before) != string(after) {
		t.Fatal("Plan changed the registry")
	}
	want := []string{"close 1", "new-session 3", "arm 3", "attach 3", "mark-armed 3",
		"remove-snapshot 1", "convert 1", "forget-session 1", "remove-snapshot 2", "convert 2", "forget-session 2"}
	if got := kinds(a1); !reflect.DeepEqual(got, want) {
		t.Fatalf("plan %v\nwant %v", got, want)
	}
}

// An orphan directory whose COW the kernel still uses is reported, never
// closed, converted or discarded; an unregistered stack with a live
// snapshot is reported, never removed.
func TestPlanLeavesLiveOrphansAlone(t *testing.T) {
	reg := &Registry{}
	live := StackInfo{Name: "x", HasOrigin: true, HasReal: true, OriginDev: DevNum{Major: 253, Minor: 4},
		Snapshots: []SnapshotInfo{{N: 3, State: SnapshotActive}}}
	obs := observed([]StackInfo{live})
	obs.Pending = []PendingSession{
		{Dir: "/snapshot/x_2", Name: "x", Armed: armedAt, Phase: SessionArmed, COWUsed: true, Users: []string{"/dev/mapper/dmsnap-x-cow3 maps its blocks"}},
		{Dir: "/snapshot/x_1", Name: "x", Armed: armedAt.Add(-time.Hour), Phase: SessionArmed, Users: []string{"/dev/loop2 is bound to it"}},
	}
	acts, issues := Plan(reg, obs)
	if len(acts) != 0 {
		t.Fatalf("plan %v, want nothing done", acts)
	}
	if len(issues) != 3 {
		t.Fatalf("issues %v, want the stack and both directories", issues)
	}
}
