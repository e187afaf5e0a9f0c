//go:build !vm

package snapstore

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// retentionInfos is n finished sessions of d, taken at the times given.
func retentionInfos(times ...time.Time) []SessionInfo {
	var out []SessionInfo
	for i, t := range times {
		id := "d_" + string(rune('a'+i))
		out = append(out, SessionInfo{ID: id, Dir: "/s/" + id, Name: "d", Time: t, Sequence: i + 1, Status: StatusComplete, Meta: &Meta{Dmsnap: &DmsnapMeta{}}})
	}
	return out
}

func ids(ss []SessionInfo) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.ID)
	}
	return out
}

func TestPlanRetentionKeepRules(t *testing.T) {
	day := func(d, h int) time.Time { return time.Date(2026, 3, d, h, 0, 0, 0, time.Local) }
	infos := retentionInfos(day(1, 9), day(1, 17), day(2, 9), day(3, 9), day(3, 18))
	now := day(3, 20)
	for _, c := range []struct {
		name string
		p    Retention
		want []string
	}{
		{"keep-last 2", Retention{KeepLast: 2}, []string{"d_a", "d_b", "d_c"}},
		{"keep-last 9", Retention{KeepLast: 9}, nil},
		{"keep-daily 2: the newest of days 3 and 2", Retention{KeepDaily: 2}, []string{"d_a", "d_b"}},
		{"keep-hourly 3", Retention{KeepHourly: 3}, []string{"d_a", "d_b"}},
		{"keep-within 36h", Retention{KeepWithin: 36 * time.Hour}, []string{"d_a", "d_b"}},
		{"the widest rule wins", Retention{KeepLast: 1, KeepDaily: 3}, []string{"d_a"}},
		{"min-free alone, with room", Retention{MinFree: 1 << 30}, nil},
	} {
		p := PlanRetention(infos, RetentionRequest{Name: "d", Policy: c.p, Now: now})
		if got := ids(p.Remove); !slices.Equal(got, c.want) {
			t.Errorf("%s: removes %v, want %v", c.name, got, c.want)
		}
		for _, id := range c.want {
			if p.Why[id] != "keep rules" {
				t.Errorf("%s: %s removed for %q", c.name, id, p.Why[id])
			}
		}
	}
}

// Labelled, pinned and live sessions end the run: nothing newer goes.
func TestPlanRetentionStopsAtKept(t *testing.T) {
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	mk := func() []SessionInfo {
		return retentionInfos(base, base.Add(time.Hour), base.Add(2*time.Hour), base.Add(3*time.Hour))
	}
	labelled := mk()
	labelled[1].Label = "before the upgrade"
	pinned := mk()
	pinned[1].Pinned = true
	live := mk()
	for name, infos := range map[string][]SessionInfo{"labelled": labelled, "pinned": pinned, "live": live} {
		held := map[string]bool{}
		if name == "live" {
			held["/s/d_b"] = true
		}
		p := PlanRetention(infos, RetentionRequest{Name: "d", Policy: Retention{KeepLast: 1}, Now: base.Add(4 * time.Hour), Held: held})
		if got := ids(p.Remove); !slices.Equal(got, []string{"d_a"}) {
			t.Errorf("%s d_b: removes %v, want d_a only", name, got)
		}
	}
}

// Short of min-free, the oldest sessions go whatever the keep rules say,
// until enough is freed; never the newest restore point, never past a
// labelled one; what is still short is said.
func TestPlanRetentionMinFree(t *testing.T) {
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	infos := retentionInfos(base, base.Add(time.Hour), base.Add(2*time.Hour), base.Add(3*time.Hour), base.Add(4*time.Hour))
	size := func(SessionInfo) int64 { return 100 }
	req := RetentionRequest{Name: "d", Policy: Retention{KeepLast: 5, MinFree: 1000}, Now: base.Add(5 * time.Hour), Need: 250, Size: size}
	p := PlanRetention(infos, req)
	if got := ids(p.Remove); !slices.Equal(got, []string{"d_a", "d_b", "d_c"}) || p.Freed != 300 || p.Short != "" || p.Why["d_a"] != "min-free" {
		t.Fatalf("need 250: removes %v, freed %d, short %q, why %v", got, p.Freed, p.Short, p.Why)
	}
	req.Need = 10000
	p = PlanRetention(infos, req)
	if got := ids(p.Remove); !slices.Equal(got, []string{"d_a", "d_b", "d_c", "d_d"}) || !strings.Contains(p.Short, "newest restore point") {
		t.Fatalf("need 10000: removes %v, short %q (want all but the newest restore point)", got, p.Short)
	}
	infos[2].Label = "keep me"
	p = PlanRetention(infos, req)
	if got := ids(p.Remove); !slices.Equal(got, []string{"d_a", "d_b"}) || !strings.Contains(p.Short, "labelled") {
		t.Fatalf("with d_c labelled: removes %v, short %q", got, p.Short)
	}
}

// Without enough restore points keep-last keeps everything, and min-free
// removes nothing without one; a restore no session recorded takes the
// sessions it left behind out of the count.
func TestPlanRetentionCountsOnlyRealRestorePoints(t *testing.T) {
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	infos := retentionInfos(base, base.Add(time.Hour), base.Add(2*time.Hour))
	infos[2].Status = StatusInvalid // the newest: nothing before it is a restore point
	p := PlanRetention(infos, RetentionRequest{Name: "d", Policy: Retention{KeepLast: 1, MinFree: 10}, Need: 1000, Size: func(SessionInfo) int64 { return 1 }})
	if len(p.Remove) != 0 || !strings.Contains(p.Short, "no restore point") {
		t.Fatalf("no restore point: removes %v, short %q", ids(p.Remove), p.Short)
	}
	infos[2].Status = StatusComplete
	// A direct restore to d_b: d_c is no restore point any more, so
	// keep-last 1 keeps d_b and removes only d_a.
	restores := []Restore{{Name: "d", Target: "d_b", Last: "d_c"}}
	p = PlanRetention(infos, RetentionRequest{Name: "d", Policy: Retention{KeepLast: 1}, Restores: restores})
	if got := ids(p.Remove); !slices.Equal(got, []string{"d_a"}) {
		t.Fatalf("after a restore to d_b: removes %v, want d_a", got)
	}
}

// A device that reverts on unmount restores to the state before its base
// session every time: neither the keep rules nor min-free remove it or a
// later session.
func TestPlanRetentionKeepsTheRevertBase(t *testing.T) {
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	infos := retentionInfos(base, base.Add(time.Hour), base.Add(2*time.Hour), base.Add(3*time.Hour))
	p := PlanRetention(infos, RetentionRequest{Name: "d", Policy: Retention{KeepLast: 1}, Now: base.Add(4 * time.Hour), KeepFrom: 2})
	if got := ids(p.Remove); !slices.Equal(got, []string{"d_a"}) {
		t.Fatalf("keep-last 1 with the base at sequence 2: removes %v, want only d_a", got)
	}
	p = PlanRetention(infos, RetentionRequest{Name: "d", Policy: Retention{MinFree: 100}, Need: 100, Size: func(SessionInfo) int64 { return 10 }, KeepFrom: 2})
	if got := ids(p.Remove); !slices.Equal(got, []string{"d_a"}) || !strings.Contains(p.Short, "reverts on unmount") {
		t.Fatalf("min-free with the base at sequence 2: removes %v, short %q", got, p.Short)
	}
}
