package rollback_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/rollback"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

// setPending marks sdb1's revert pending, as the open of a session (a
// mount) does.
func (w *world) setPending(t *testing.T) {
	t.Helper()
	reg, err := session.LoadRegistry(w.state)
	if err != nil {
		t.Fatal(err)
	}
	reg.Device("sdb1").RevertPending = true
	if err := reg.Save(w.state); err != nil {
		t.Fatal(err)
	}
}

func (w *world) device(t *testing.T) *session.Device {
	t.Helper()
	reg, err := session.LoadRegistry(w.state)
	if err != nil {
		t.Fatal(err)
	}
	return reg.Device("sdb1")
}

// TestRevert: a revert puts the device back to the state before its base
// session, across every session since (the one a revert missed too), as
// an instant restore recorded before the kernel sees it; it clears the
// pending revert. Nothing pending is nothing to do; a device that does
// not revert, or whose base session is gone, is refused with nothing
// written.
func TestRevert(t *testing.T) {
	w := newWorld(t)
	k := newFakeKernel(t, w)
	cfg := w.viewConfig(k)
	ctx := context.Background()
	if _, err := rollback.Revert(ctx, cfg, "sdb1", nil); err == nil || !strings.Contains(err.Error(), "does not revert on unmount") {
		t.Fatalf("revert of a device in keep mode: %v", err)
	}
	if _, err := w.manager().SetOnUnmount(ctx, "sdb1", session.OnUnmountRevert); err != nil {
		t.Fatal(err)
	}
	base := w.read(t)
	baseN := w.device(t).RevertBase
	if res, err := rollback.Revert(ctx, cfg, "sdb1", nil); res != nil || err != nil {
		t.Fatalf("nothing pending: %+v, %v", res, err)
	}
	// Two sessions since the base (a revert was missed between them).
	s1 := w.session(t, 1, 2, 15)
	w.session(t, 2, 7)
	w.setPending(t)
	res, err := rollback.Revert(ctx, cfg, "sdb1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Session != s1 || res.Merge == nil || !res.Merge.Started || k.merged != 1 {
		t.Fatalf("revert: %+v (merge %+v), merges %d", res, res.Merge, k.merged)
	}
	if !bytes.Equal(w.read(t), base) {
		t.Fatal("the device does not show the state before the base session")
	}
	if d := w.device(t); d.RevertPending || d.RevertBase != baseN {
		t.Fatalf("after the revert: base %d pending %v, want %d false", d.RevertBase, d.RevertPending, baseN)
	}
	ms, err := session.LoadMerges(w.state)
	if err != nil || len(ms) != 1 || ms[0].Session != s1 {
		t.Fatalf("merge record %+v, %v", ms, err)
	}

	// A merge the kernel cannot start (not a refusal of the table, which
	// falls back to writing the plan) leaves the revert pending, the base
	// and the device as they were.
	if err := session.SaveMerges(w.state, nil); err != nil {
		t.Fatal(err)
	}
	os.Remove(ms[0].COW)
	w.session(t, 4, 5)
	w.setPending(t)
	before := w.read(t)
	k.failMerge = errors.New("no free loop device")
	if _, err := rollback.Revert(ctx, cfg, "sdb1", nil); err == nil || !strings.Contains(err.Error(), "no free loop device") {
		t.Fatalf("revert with the merge failing: %v", err)
	}
	if d := w.device(t); !d.RevertPending || d.RevertBase != baseN {
		t.Fatalf("after a failed revert: base %d pending %v, want %d true", d.RevertBase, d.RevertPending, baseN)
	}
	if !bytes.Equal(w.read(t), before) {
		t.Fatal("a failed revert changed the device")
	}
	if ms, err := session.LoadMerges(w.state); err != nil || len(ms) != 0 {
		t.Fatalf("merge records after a failed revert: %+v, %v", ms, err)
	}
	k.failMerge = nil
	if _, err := rollback.Revert(ctx, cfg, "sdb1", nil); err != nil || !bytes.Equal(w.read(t), base) {
		t.Fatalf("the revert retried: %v (device as before the base: %v)", err, bytes.Equal(w.read(t), base))
	}
	if ms, err = session.LoadMerges(w.state); err != nil || len(ms) != 1 {
		t.Fatalf("merge record %+v, %v", ms, err)
	}

	// The merge done (as the watcher finishes it), the base session
	// pruned: the next revert is refused and writes nothing.
	os.Remove(ms[0].COW)
	if err := session.SaveMerges(w.state, nil); err != nil {
		t.Fatal(err)
	}
	w.session(t, 3)
	w.setPending(t)
	list, err := snapstore.ListSessions(w.store)
	if err != nil {
		t.Fatal(err)
	}
	for _, info := range list {
		if info.ID == s1 {
			if err := snapstore.PruneSession(w.store, info, time.Now(), nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	before = w.read(t)
	if _, err := rollback.Revert(ctx, cfg, "sdb1", nil); err == nil || !strings.Contains(err.Error(), "pruned?") {
		t.Fatalf("revert with its base pruned: %v", err)
	}
	if !bytes.Equal(w.read(t), before) || k.merged != 2 {
		t.Fatal("a refused revert changed the device")
	}
}
