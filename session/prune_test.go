package session_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/snapstore"
	"github.com/dmsnap/dmsnap/snapstore/snapstoretest"
)

// Prune keeps the newest restore points asked for, removes nothing in a
// dry run, and never removes a session directory the registry holds.
func TestManagerPrune(t *testing.T) {
	w := newWorld(t)
	var dirs []string
	for i := range 3 {
		dirs = append(dirs, snapstoretest.Finished(t, w.store, "sdb1", time.Unix(1600000000+int64(i)*3600, 0), ""))
	}
	m := w.manager()
	res, err := m.Prune(bgctx, w.store, snapstore.PruneRequest{Name: "sdb1", Keep: 1}, true, nil)
	if err != nil || len(res.Remove) != 2 || res.Points != 3 || res.PointsAfter != 1 {
		t.Fatalf("dry run: %+v, %v", res.PrunePlan, err)
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); err != nil {
			t.Fatalf("a dry run removed %s", d)
		}
	}
	var removed []string
	res, err = m.Prune(bgctx, w.store, snapstore.PruneRequest{Name: "sdb1", Keep: 1}, false, func(info snapstore.SessionInfo) { removed = append(removed, info.Dir) })
	if err != nil || len(removed) != 2 || filepath.Clean(removed[0]) != filepath.Clean(dirs[0]) || filepath.Clean(removed[1]) != filepath.Clean(dirs[1]) {
		t.Fatalf("prune --keep 1: removed %v, %v", removed, err)
	}
	if _, err := os.Stat(dirs[0]); !os.IsNotExist(err) {
		t.Fatalf("%s still there: %v", dirs[0], err)
	}
	if _, err := os.Stat(dirs[2]); err != nil {
		t.Fatalf("the newest session went: %v", err)
	}

	// A session the registry holds is never removed, whatever is asked.
	w.activate()
	d := w.device()
	d.Sessions[0].Dir = dirs[2]
	reg := w.registry()
	reg.Devices[0] = d
	if err := reg.Save(w.state); err != nil {
		t.Fatal(err)
	}
	res, err = m.Prune(bgctx, w.store, snapstore.PruneRequest{Name: "sdb1", Keep: 0}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dirs[2]); err != nil {
		t.Fatalf("prune --keep 0 removed a session the registry holds (%+v): %v", res.PrunePlan, err)
	}
}
