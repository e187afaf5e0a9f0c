package rollback_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/rollback"
	"github.com/dmsnap/dmsnap/snapstore"
)

// TestNoUndoRestore: restore --no-undo writes -real (the fake kernel's
// device file), gives the device back byte for byte, cannot be undone and
// says so, and notes itself in restores.log: afterwards a restore to a
// session between its target and the newest is refused (those sessions
// describe a past the device no longer has), while its target still works.
func TestNoUndoRestore(t *testing.T) {
	w := newWorld(t)
	k := newFakeKernel(t, w)
	cfg := w.viewConfig(k)
	ctx := context.Background()
	a := w.read(t)
	s1 := w.session(t, 1, 2, 15)
	s2 := w.session(t, 2, 7)
	r, err := rollback.Open(cfg, "sdb1", s1)
	if err != nil {
		t.Fatal(err)
	}
	sessions, err := r.Sessions()
	if err != nil {
		t.Fatal(err)
	}
	target, err := r.Find(sessions, s1)
	if err != nil {
		t.Fatal(err)
	}
	pd, err := r.Prepare(ctx, sessions, target, rollback.DeviceOptions{NoUndo: true})
	if err != nil {
		t.Fatal(err)
	}
	res, err := pd.Run(ctx)
	r.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(w.read(t), a) {
		t.Fatal("after restore --no-undo the device differs from its state before " + s1)
	}
	if res.Undoable || res.Undo != "" || !res.NoUndo || res.Through != w.dev {
		t.Fatalf("result %+v: want not undoable, no undo session, written through -real (%s)", res, w.dev)
	}
	log, err := os.ReadFile(filepath.Join(w.store, snapstore.RestoresLog))
	if err != nil || !strings.Contains(string(log), s1) || !strings.Contains(string(log), "no-undo") {
		t.Fatalf("%s: %q, %v; want the restore to before %s noted as no-undo", snapstore.RestoresLog, log, err, s1)
	}

	// The sessions after the target are no restore points any more.
	r, err = rollback.Open(cfg, "sdb1", s2)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	sessions, err = r.Sessions()
	if err != nil {
		t.Fatal(err)
	}
	i, err := r.Find(sessions, s2)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.CheckTarget(sessions, i); err == nil {
		t.Fatalf("a restore to %s, left behind by the --no-undo restore, was not refused", s2)
	}
	i, err = r.Find(sessions, s1)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.CheckTarget(sessions, i); err != nil {
		t.Fatalf("the --no-undo restore's own target %s refused: %v", s1, err)
	}
}
