//go:build !vm

package snapstore

import (
	"strings"
	"testing"
	"time"
)

func TestCheckRestored(t *testing.T) {
	store := t.TempDir()
	ids := []string{"d_1", "d_2", "d_3", "d_4", "d_5"}
	var sessions []SessionInfo
	for _, id := range ids {
		sessions = append(sessions, SessionInfo{ID: id, Name: "d"})
	}
	// d_1..d_3 existed; the device was restored directly to before d_2;
	// d_4 and d_5 were taken after (activated again).
	if err := NoteRestore(store, "d", "d_2", "d_3", "direct", time.Unix(1700000000, 0)); err != nil {
		t.Fatal(err)
	}
	if err := NoteRestore(store, "other", "o_1", "o_9", "no-undo", time.Unix(1700000000, 0)); err != nil {
		t.Fatal(err)
	}
	rs, err := RestoresOf(store, "d")
	if err != nil || len(rs) != 1 || rs[0].Target != "d_2" || rs[0].How != "direct" {
		t.Fatalf("RestoresOf: %+v %v", rs, err)
	}
	for target, refused := range map[string]bool{"d_1": false, "d_2": false, "d_3": true, "d_4": false, "d_5": false} {
		err := CheckRestored(sessions, target, rs)
		if (err != nil) != refused {
			t.Errorf("restore to %s: %v, want refused %v", target, err, refused)
		}
		if err != nil && !strings.Contains(err.Error(), "restore to d_2 or an earlier session") {
			t.Errorf("restore to %s: %q does not say what works", target, err)
		}
	}
	// The restore's target pruned: what is left up to its last is refused.
	if err := CheckRestored(sessions[2:], "d_3", rs); err == nil {
		t.Error("with d_2 pruned, d_3 was accepted")
	}
	if err := NoteRestore(store, "d", "d\t2", "d_3", "direct", time.Now()); err == nil {
		t.Error("a tab in a field was written")
	}
}
