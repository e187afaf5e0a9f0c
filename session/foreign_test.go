package session_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/session/sessiontest"
)

// liveDir returns the directory of the device's live session.
func (w *world) liveDir() string {
	w.t.Helper()
	cur := w.device().Current()
	if cur == nil || cur.Dir == "" {
		w.t.Fatal("no live session with a directory")
	}
	return cur.Dir
}

// A watcher or command of another state directory sees sdb1's stack and its
// live session directory as not its own. It must leave both alone: removing
// the stack ends the protection, and converting the directory renames,
// punches and unpins a COW the kernel writes.
func TestAnotherStateDirectoryLeavesLiveSessionAlone(t *testing.T) {
	w := newWorld(t)
	w.activate()
	dir := w.liveDir()
	if err := os.WriteFile(filepath.Join(dir, sessiontest.COWFile), []byte("SnAp"), 0o600); err != nil {
		t.Fatal(err)
	}
	other := w.sys.Manager(filepath.Join(t.TempDir(), "other-state"), w.store)
	w.sys.ResetCalls()
	rep, err := other.Reconcile(bgctx)
	if err != nil {
		t.Fatalf("reconcile of the other state directory: %v", err)
	}
	if len(w.sys.Calls) != 0 {
		t.Fatalf("the other state directory changed things: %v", w.sys.Calls)
	}
	var stackIssue, dirIssue bool
	for _, is := range rep.Issues {
		stackIssue = stackIssue || (is.Device == "sdb1" && strings.Contains(is.Problem, "live session"))
		dirIssue = dirIssue || (is.Dir == dir && strings.Contains(is.Problem, "the kernel still uses its COW"))
	}
	if !stackIssue || !dirIssue {
		t.Fatalf("issues %v: want the stack and the directory reported, untouched", rep.Issues)
	}
	w.steady(1, false)
	w.settled()
}

// A lost registry (moved away, as dmsnap's damage message says): the
// watcher keeps the stack and its live session; activating the device again
// adopts the stack, arms a new session and finishes the old one.
func TestLostRegistryThenActivateAdopts(t *testing.T) {
	w := newWorld(t)
	w.activate()
	w.tick(time.Minute)
	w.mount()
	w.reconcile()
	w.unmount()
	w.reconcile() // session 1 closed, session 2 armed
	old := w.liveDir()
	if err := os.WriteFile(filepath.Join(old, sessiontest.COWFile), []byte("SnAp"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(session.RegistryPath(w.state), session.RegistryPath(w.state)+".damaged"); err != nil {
		t.Fatal(err)
	}
	w.sys.ResetCalls()
	w.reconcile()
	if len(w.sys.Calls) != 0 {
		t.Fatalf("with the registry gone, reconcile changed things: %v", w.sys.Calls)
	}
	if got := w.sys.Kernel.Snapshots("sdb1"); !slices.Equal(got, []int{2}) {
		t.Fatalf("snapshots %v, want session 2's still live", got)
	}
	w.tick(time.Minute)
	d := w.activate()
	if cur := d.Current(); cur == nil || cur.N != 3 {
		t.Fatalf("adopting activation armed %+v, want session 3 (after the stack's snapshot 2)", cur)
	}
	w.reconcile() // the watcher's next beat finishes the old session, an orphan now
	if m, err := sessiontest.ReadMeta(old); err != nil || m.Final != "complete" {
		t.Fatalf("the old live session %s: %+v %v, want it finished once its snapshot was removed", old, m, err)
	}
	w.steady(3, false)
	w.settled()
}

// `dmsnap deactivate NAME` of a stack no registry holds takes it down, and
// its session is finished.
func TestDeactivateUnregisteredStack(t *testing.T) {
	w := newWorld(t)
	w.activate()
	dir := w.liveDir()
	if err := os.WriteFile(filepath.Join(dir, sessiontest.COWFile), []byte("SnAp"), 0o600); err != nil {
		t.Fatal(err)
	}
	other := w.sys.Manager(filepath.Join(t.TempDir(), "other-state"), w.store)
	if err := other.Deactivate(bgctx, "sdb1"); err != nil {
		t.Fatalf("deactivate of an unregistered stack: %v", err)
	}
	if got := w.sys.Kernel.StackNames(); len(got) != 0 {
		t.Fatalf("stacks left: %v", got)
	}
	if m, err := sessiontest.ReadMeta(dir); err != nil || m.Final != "complete" {
		t.Fatalf("%s: %+v %v, want it finished", dir, m, err)
	}
	if len(w.sys.Violations) > 0 {
		t.Fatal(w.sys.Violations)
	}
}
