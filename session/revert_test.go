package session_test

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/session"
)

func (w *world) activateReverting() *session.Device {
	w.t.Helper()
	d, err := w.manager().Activate(bgctx, session.ActivateRequest{Device: rawDev, Store: w.store, OnUnmount: session.OnUnmountRevert})
	if err != nil {
		w.t.Fatalf("activate: %v", err)
	}
	return d
}

func revertState(d *session.Device) (int, bool) { return d.RevertBase, d.RevertPending }

// A device activated to revert: its first session is the base; the open
// of a session (a mount) saves a pending revert with it, which stays
// through the unmount and the rotation (the revert itself is the
// rollback package's) until a rebase clears it.
func TestRevertPendingFollowsMounts(t *testing.T) {
	w := newWorld(t)
	d := w.activateReverting()
	if d.OnUnmount != session.OnUnmountRevert || d.RevertBase != 1 || d.RevertPending {
		t.Fatalf("after activate: %+v", d)
	}
	w.mount()
	w.reconcile()
	if base, pending := revertState(w.device()); base != 1 || !pending {
		t.Fatalf("mounted: base %d pending %v, want 1 true", base, pending)
	}
	w.unmount()
	w.reconcile()
	w.steady(2, false)
	if base, pending := revertState(w.device()); base != 1 || !pending {
		t.Fatalf("unmounted, not reverted yet: base %d pending %v, want 1 true", base, pending)
	}
	// A restore (here: its bookkeeping) makes the live session the base.
	if err := w.manager().Rebase(bgctx, "sdb1", 0); err != nil {
		t.Fatal(err)
	}
	if base, pending := revertState(w.device()); base != 2 || pending {
		t.Fatalf("after rebase: base %d pending %v, want 2 false", base, pending)
	}
	// A rebase while mounted keeps the revert of that mount pending.
	w.mount()
	w.reconcile()
	if err := w.manager().Rebase(bgctx, "sdb1", 0); err != nil {
		t.Fatal(err)
	}
	if base, pending := revertState(w.device()); base != 2 || !pending {
		t.Fatalf("rebase while mounted: base %d pending %v, want 2 true", base, pending)
	}
}

// A device that keeps what sessions write has no pending revert after a
// mount, and a rebase does nothing to it.
func TestKeepModeNeverPends(t *testing.T) {
	w := newWorld(t)
	w.activate()
	w.mount()
	w.reconcile()
	if err := w.manager().Rebase(bgctx, "sdb1", 0); err != nil {
		t.Fatal(err)
	}
	if d := w.device(); d.Reverts() || d.RevertBase != 0 || d.RevertPending || d.OnUnmountMode() != session.OnUnmountKeep {
		t.Fatalf("keep mode: %+v", d)
	}
}

func TestSetOnUnmount(t *testing.T) {
	w := newWorld(t)
	w.activate()
	m := w.manager()
	if _, err := m.SetOnUnmount(bgctx, "sdb1", "sometimes"); err == nil || !strings.Contains(err.Error(), "want keep or revert") {
		t.Fatalf("bad mode: %v", err)
	}
	// Switched on while armed: the device's state now is the base, the
	// start of a session armed for it (the armed one may hold writes).
	d, err := m.SetOnUnmount(bgctx, "sdb1", session.OnUnmountRevert)
	if err != nil || !d.Reverts() || d.RevertBase != 2 || d.RevertPending {
		t.Fatalf("revert while armed: %+v, %v", d, err)
	}
	w.steady(2, false)
	if d, err = m.SetOnUnmount(bgctx, "sdb1", session.OnUnmountKeep); err != nil || d.Reverts() || d.RevertBase != 0 || d.RevertPending {
		t.Fatalf("keep: %+v, %v", d, err)
	}
	// Switched on while mounted: the state before that mount, put back at
	// its unmount.
	w.mount()
	w.reconcile()
	if d, err = m.SetOnUnmount(bgctx, "sdb1", session.OnUnmountRevert); err != nil || d.RevertBase != 2 || !d.RevertPending {
		t.Fatalf("revert while mounted: %+v, %v", d, err)
	}
	w.unmount()
	w.reconcile()
	m.SetOnUnmount(bgctx, "sdb1", session.OnUnmountKeep)
	// Refused while an instant restore merges: the armed session holds
	// what the merge overwrote, so its start is not the device's state.
	w.startMerge(session.MergeRunning)
	if _, err := m.SetOnUnmount(bgctx, "sdb1", session.OnUnmountRevert); !errors.Is(err, session.ErrBusy) {
		t.Fatalf("while merging: %v, want ErrBusy", err)
	}
	if w.device().Reverts() {
		t.Fatal("a refused set changed the mode")
	}
}

// An instant restore of a device that reverts leaves the session that
// recorded it armed when it ends, and the base where the restore put it:
// the watcher closes that session, holding the device, once it can prove
// nothing was mounted since (TestWatchRevertsAtUnmount).
func TestFinishedMergeOfARevertingDevice(t *testing.T) {
	w := newWorld(t)
	w.activateReverting()
	w.startMerge(session.MergeRunning)
	k := &fakeMerges{p: session.MergeProgress{Merging: true, Allocated: 16, Metadata: 16}}
	outs, err := w.manager().FinishMerges(bgctx, k)
	if err != nil || len(outs) != 1 || !outs[0].Finished || outs[0].Undo != "" {
		t.Fatalf("%+v, %v", outs, err)
	}
	w.steady(1, false)
	if base, pending := revertState(w.device()); base != 1 || pending {
		t.Fatalf("after the merge: base %d pending %v, want 1 false", base, pending)
	}
}

// A power cut while a device that reverts is mounted: attach rebuilds the
// stack (closing the session a crash left open is the watcher's) and
// hands back the origin held, so nothing mounts it before the caller has
// reverted it; a device with nothing pending, or mounted, is not held.
func TestAttachHoldsAPendingRevert(t *testing.T) {
	w := newWorld(t)
	w.activateReverting()
	w.mount()
	w.reconcile()
	w.sys.Reboot()
	var held []string
	hold := func(name string) (*os.File, error) {
		held = append(held, name)
		return os.Open(os.DevNull)
	}
	rep, err := w.manager().Attach(bgctx, rawDev, session.AttachOptions{Hold: hold})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Hold == nil || rep.HoldName != "sdb1" || !slices.Equal(held, []string{"sdb1"}) {
		t.Fatalf("attach with a revert pending: hold %v %q, calls %v", rep.Hold, rep.HoldName, held)
	}
	rep.Hold.Close()
	if !w.device().RevertPending {
		t.Fatal("attach cleared the pending revert")
	}

	// Nothing pending: no hold.
	w2 := newWorld(t)
	w2.activateReverting()
	w2.sys.Reboot()
	held = nil
	if rep, err := w2.manager().Attach(bgctx, rawDev, session.AttachOptions{Hold: hold}); err != nil || rep.Hold != nil || len(held) != 0 {
		t.Fatalf("attach with nothing pending: %+v, %v, calls %v", rep, err, held)
	}
}
