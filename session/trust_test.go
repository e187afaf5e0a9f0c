package session_test

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/internal/devid"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/session/sessiontest"
)

// usedLiveCOW marks the live session's COW as the kernel initialises it
// ("SnAp" in its header) and returns the session's directory.
func (w *world) usedLiveCOW() string {
	w.t.Helper()
	dir := w.liveDir()
	if err := os.WriteFile(filepath.Join(dir, sessiontest.COWFile), []byte("SnAp"), 0o600); err != nil {
		w.t.Fatal(err)
	}
	return dir
}

// mountCycle is one session from the watcher's view: a minute later the
// device is mounted, reconciled (opened), unmounted and reconciled again
// (closed, the next one armed).
func (w *world) mountCycle() {
	w.t.Helper()
	w.tick(time.Minute)
	w.mount()
	w.reconcile()
	w.unmount()
	w.reconcile()
}

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
	dir := w.usedLiveCOW()
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
	w.mountCycle() // session 1 closed, session 2 armed
	old := w.usedLiveCOW()
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
	dir := w.usedLiveCOW()
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

// After a reboot another device shows up under the activated one's number,
// the same size and filesystem UUID (a dd copy on the disk enumerated first
// now): attach refuses it, changing nothing; --force-identity takes it and
// records its identity.
func TestAttachRefusesImpostorSameNumber(t *testing.T) {
	w := newWorld(t)
	w.activate()
	w.sys.Reboot()
	clone := sdb1
	clone.Stable = &devid.ID{Kind: devid.KindPartition, PartUUID: "5a1b2c3d-01", PartNumber: 1, Start: 2048, Sectors: 1 << 21,
		Disk: &devid.ID{Kind: devid.KindDisk, Serial: "DISK-C"}}
	w.sys.Prober.Add(rawDev, clone)
	w.sys.ResetCalls()
	regBefore, _ := os.ReadFile(session.RegistryPath(w.state))
	_, err := w.manager().Attach(bgctx, rawDev, session.AttachOptions{})
	if !errors.Is(err, session.ErrIdentityMismatch) {
		t.Fatalf("attach of a copy: %v, want ErrIdentityMismatch", err)
	}
	for _, want := range []string{"DISK-C", "DISK-B", "--force-identity"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q does not name %q", err, want)
		}
	}
	if len(w.sys.Calls) != 0 || len(w.sys.Kernel.StackNames()) != 0 {
		t.Fatalf("a refused attach changed things: %v, stacks %v", w.sys.Calls, w.sys.Kernel.StackNames())
	}
	if regAfter, _ := os.ReadFile(session.RegistryPath(w.state)); string(regAfter) != string(regBefore) {
		t.Fatal("a refused attach changed the registry")
	}
	// The watcher's reconcile refuses it too.
	rep := w.reconcile()
	if len(w.sys.Calls) != 0 || len(rep.Issues) != 1 || !strings.Contains(rep.Issues[0].Problem, "not the one activated") {
		t.Fatalf("reconcile with a copy present: calls %v, issues %v", w.sys.Calls, rep.Issues)
	}
	if _, err := w.manager().Attach(bgctx, rawDev, session.AttachOptions{ForceIdentity: true}); err != nil {
		t.Fatalf("forced attach: %v", err)
	}
	if got := w.device().Identity.Stable; got == nil || got.Disk == nil || got.Disk.Serial != "DISK-C" {
		t.Fatalf("forced attach recorded %+v, want the device found", got)
	}
	w.steady(1, false)
}

// A device with no stable identity (recorded as such) is attached only when
// forced, by name.
func TestAttachWithoutIdentityNeedsForce(t *testing.T) {
	w := newWorld(t)
	anon := sdb1
	anon.Stable = &devid.ID{Kind: devid.KindOther}
	w.sys.Prober.Add(rawDev, anon)
	w.activate()
	w.sys.Reboot()
	_, err := w.manager().Attach(bgctx, rawDev, session.AttachOptions{})
	if !errors.Is(err, session.ErrNoIdentity) {
		t.Fatalf("attach: %v, want ErrNoIdentity", err)
	}
	if len(w.sys.Kernel.StackNames()) != 0 {
		t.Fatal("stacked a device that cannot be identified")
	}
	if _, err := w.manager().Attach(bgctx, rawDev, session.AttachOptions{ForceIdentity: true, Name: "sdb1"}); err != nil {
		t.Fatalf("forced attach: %v", err)
	}
	w.steady(1, false)
}

// A registry written before stable identities were kept learns the
// device's while its stack holds it, so a reboot can attach it.
func TestLegacyRegistryLearnsIdentity(t *testing.T) {
	w := newWorld(t)
	w.activate()
	reg := w.registry()
	reg.Devices[0].Identity.Stable = nil
	if err := reg.Save(w.state); err != nil {
		t.Fatal(err)
	}
	w.reconcile()
	if got := w.device().Identity.Stable; got == nil || got.Match(*sdb1ID) != nil {
		t.Fatalf("identity %+v, want it learnt from the stacked device", got)
	}
	w.sys.Reboot()
	if _, err := w.manager().Attach(bgctx, rawDev, session.AttachOptions{}); err != nil {
		t.Fatalf("attach after the reboot: %v", err)
	}
	w.steady(1, false)
}

// Session numbers order a device's sessions; they go on after the store's
// last one when the device is activated again, even with the clock set
// back, so the new sessions come after the old ones.
func TestSequenceContinuesAcrossActivations(t *testing.T) {
	w := newWorld(t)
	w.activate()
	w.mountCycle() // session 1 closed, 2 armed
	if err := w.manager().Deactivate(bgctx, "sdb1"); err != nil {
		t.Fatal(err)
	}
	w.clock = t0.Add(-24 * time.Hour) // the clock steps back a day
	d := w.activate()
	if cur := d.Current(); cur == nil || cur.N != 3 {
		t.Fatalf("after re-activation the first session is %+v, want number 3", cur)
	}
	st, err := sessiontest.ReadState(d.Current().Dir)
	if err != nil || st.Sequence != 3 {
		t.Fatalf("state of the new session: %+v %v, want sequence 3", st, err)
	}
}

// When a session goes invalid the watcher's log says so loudly, with the
// number of restore points that cost (every one before it).
func TestInvalidationLogsLostRestorePoints(t *testing.T) {
	w := newWorld(t)
	w.activate()
	w.mountCycle() // sessions 1 and 2 closed: two restore points
	w.mountCycle()
	var log bytes.Buffer
	m := w.manager()
	m.Log = slog.New(slog.NewTextHandler(&log, nil))
	w.sys.Kernel.Invalidate("sdb1", 3)
	if _, err := m.Reconcile(bgctx); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "level=ERROR") || !strings.Contains(log.String(), "restore_points_lost=2") {
		t.Fatalf("log:\n%s\nwant an error saying 2 restore points were lost", log.String())
	}
}
