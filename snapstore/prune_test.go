//go:build !vm

package snapstore

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func pruneInfos(store string, statuses ...Status) []SessionInfo {
	var out []SessionInfo
	for i, st := range statuses {
		id := "d_" + string(rune('a'+i))
		info := SessionInfo{ID: id, Dir: filepath.Join(store, id), Name: "d", Time: time.Unix(int64(1000+i*100), 0), Sequence: i + 1, Status: st}
		if st != StatusIncomplete && st != StatusDamaged {
			info.Meta = &Meta{Dmsnap: &DmsnapMeta{}}
		}
		out = append(out, info)
	}
	return out
}

func removedIDs(p PrunePlan) []string {
	var ids []string
	for _, s := range p.Remove {
		ids = append(ids, s.ID)
	}
	return ids
}

// --keep counts restore points only: an invalid session, and the sessions
// before it that cannot be restored to, keep nothing alive.
func TestPlanPruneCountsRestorePoints(t *testing.T) {
	c, i := StatusComplete, StatusInvalid
	for _, tc := range []struct {
		name     string
		statuses []Status
		keep     int
		remove   []string
		points   [2]int // before, after
		short    bool
	}{
		{"all whole, keep 1", []Status{c, c, c}, 1, []string{"d_a", "d_b"}, [2]int{3, 1}, false},
		{"invalid in the middle, keep 1", []Status{c, i, c, c}, 1, []string{"d_a", "d_b", "d_c"}, [2]int{2, 1}, false},
		{"invalid in the middle, keep 2", []Status{c, i, c, c}, 2, []string{"d_a", "d_b"}, [2]int{2, 2}, false},
		{"newest invalid: no restore point, keep 1", []Status{c, c, i}, 1, nil, [2]int{0, 0}, true},
		{"fewer points than asked", []Status{c, i, c}, 2, nil, [2]int{1, 1}, true},
		{"keep 0", []Status{c, i, c}, 0, []string{"d_a", "d_b", "d_c"}, [2]int{1, 0}, false},
	} {
		p := PlanPrune(pruneInfos("/s", tc.statuses...), PruneRequest{Name: "d", Keep: tc.keep, Now: time.Unix(5000, 0)})
		if got := removedIDs(p); !slices.Equal(got, tc.remove) {
			t.Errorf("%s: removes %v, want %v", tc.name, got, tc.remove)
		}
		if p.Points != tc.points[0] || p.PointsAfter != tc.points[1] {
			t.Errorf("%s: restore points %d → %d, want %d → %d", tc.name, p.Points, p.PointsAfter, tc.points[0], tc.points[1])
		}
		if (p.Short != "") != tc.short {
			t.Errorf("%s: short %q", tc.name, p.Short)
		}
	}
}

func TestPlanPruneStopsAtKept(t *testing.T) {
	infos := pruneInfos("/s", StatusComplete, StatusIncomplete, StatusComplete, StatusComplete)
	p := PlanPrune(infos, PruneRequest{Name: "d", Keep: 1})
	if got := removedIDs(p); !slices.Equal(got, []string{"d_a"}) || !strings.Contains(p.Short, "d_b is not finished") {
		t.Fatalf("removes %v, short %q", got, p.Short)
	}
	held := map[string]bool{"/s/d_a": true}
	p = PlanPrune(pruneInfos("/s", StatusComplete, StatusComplete), PruneRequest{Name: "d", Keep: 0, Held: held})
	if len(p.Remove) != 0 || !strings.Contains(p.Short, "live") {
		t.Fatalf("a held session: removes %v, short %q", removedIDs(p), p.Short)
	}
	// --older-than: by the time in the name.
	p = PlanPrune(pruneInfos("/s", StatusComplete, StatusComplete, StatusComplete), PruneRequest{Name: "d", Keep: -1, OlderThan: 150 * time.Second, Now: time.Unix(1300, 0)})
	if got := removedIDs(p); !slices.Equal(got, []string{"d_a", "d_b"}) {
		t.Fatalf("older than: removes %v", got)
	}
}

// A prune interrupted between its steps leaves the session out of the
// listings, and the next prune notes and removes it.
func TestPruneSessionCrashSafe(t *testing.T) {
	for _, step := range []string{"moved", "logged"} {
		t.Run(step, func(t *testing.T) {
			store := t.TempDir()
			dir := filepath.Join(store, "d_1000")
			if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
				t.Fatal(err)
			}
			info := SessionInfo{ID: "d_1000", Dir: dir, Name: "d"}
			crash := func(s string) {
				if s == step {
					panic("crash at " + s)
				}
			}
			func() {
				defer func() { recover() }()
				PruneSession(store, info, time.Unix(2000, 0), crash)
				t.Fatal("no crash")
			}()
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Fatalf("session directory still in the store after %s: %v", step, err)
			}
			if list, _ := ListSessions(store); len(list) != 0 {
				t.Fatalf("listed after %s: %+v", step, list)
			}
			if _, ok := WasPruned(store, "d_1000"); !ok {
				t.Fatalf("after %s, a restore to it would not be told it was pruned", step)
			}
			done, err := FinishPrunes(store, time.Unix(3000, 0))
			if err != nil || !slices.Equal(done, []string{"d_1000"}) {
				t.Fatalf("FinishPrunes: %v %v", done, err)
			}
			if _, err := os.Stat(filepath.Join(store, PruneDir, "d_1000")); !os.IsNotExist(err) {
				t.Fatalf("tombstone left: %v", err)
			}
			b, _ := os.ReadFile(filepath.Join(store, PrunedLog))
			if strings.Count(string(b), "d_1000\t") != 1 {
				t.Fatalf("pruned.log %q: want the session once", b)
			}
		})
	}
	store := t.TempDir()
	if err := PruneSession(store, SessionInfo{ID: "x_1", Dir: "/elsewhere/x_1"}, time.Now(), nil); err == nil {
		t.Fatal("pruned a directory outside the store")
	}
}
