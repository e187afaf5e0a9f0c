//go:build !vm

package snapstore

import (
	"errors"
	"strings"
	"testing"
)

func TestRestorePoints(t *testing.T) {
	ok := func(id string) SessionInfo { return SessionInfo{ID: id, Status: StatusComplete} }
	seed := SessionInfo{ID: "s_0", Status: StatusUnverified}
	inv := SessionInfo{ID: "s_3", Status: StatusInvalid, Meta: &Meta{Dmsnap: &DmsnapMeta{InvalidReason: "COW full"}}}
	dmg := SessionInfo{ID: "s_5", Status: StatusDamaged, Err: errors.New("blocks.map: checksum")}
	live := SessionInfo{ID: "s_9", Status: StatusIncomplete, Phase: PhaseArmed}
	dropped := SessionInfo{ID: "s_8", Status: StatusIncomplete, Phase: PhaseInvalid}

	for _, tc := range []struct {
		name     string
		sessions []SessionInfo
		want     []string // "ok", or the blocker's ID, or "-" (not finished)
	}{
		{"all whole", []SessionInfo{seed, ok("s_1"), ok("s_2")}, []string{"ok", "ok", "ok"}},
		{"an invalid one breaks the chain before it", []SessionInfo{ok("s_1"), ok("s_2"), inv, ok("s_4")}, []string{"s_3", "s_3", "s_3", "ok"}},
		{"the newest invalid: none left", []SessionInfo{ok("s_1"), inv}, []string{"s_3", "s_3"}},
		{"damage and invalid: each names the nearest", []SessionInfo{ok("s_1"), inv, ok("s_4"), dmg, ok("s_6")}, []string{"s_3", "s_3", "s_5", "s_5", "ok"}},
		{"the live session does not block", []SessionInfo{ok("s_1"), ok("s_2"), live}, []string{"ok", "ok", "-"}},
		{"an invalidated live one does", []SessionInfo{ok("s_1"), dropped}, []string{"s_8", "-"}},
	} {
		pts := RestorePoints(tc.sessions)
		for i, p := range pts {
			got := "ok"
			switch {
			case !p.OK && p.Blocker == "":
				got = "-"
			case !p.OK:
				got = p.Blocker
			}
			if got != tc.want[i] {
				t.Errorf("%s: session %s: %s (%+v), want %s", tc.name, tc.sessions[i].ID, got, p, tc.want[i])
			}
			if !p.OK && p.Why == "" {
				t.Errorf("%s: session %s is no restore point and says not why", tc.name, tc.sessions[i].ID)
			}
		}
	}
	pts := RestorePoints([]SessionInfo{ok("s_1"), inv, ok("s_4"), ok("s_6")})
	if !strings.Contains(pts[0].Why, "s_3") || !strings.Contains(pts[0].Why, "COW full") {
		t.Errorf("why: %q", pts[0].Why)
	}
	if i := OldestRestorable(pts); i != 2 || CountRestorable(pts) != 2 {
		t.Errorf("oldest restorable %d, count %d; want 2, 2", i, CountRestorable(pts))
	}
	if OldestRestorable(RestorePoints([]SessionInfo{inv})) != -1 {
		t.Error("an invalid session alone is a restore point")
	}
}
