//go:build vm

package main

// Crashes at every step of the session life cycle: the watcher (or the
// restore) is started with DMSNAP_CRASHPOINT set, SIGKILLs itself at that
// step, and a watcher started again without it must finish the work: no
// session lost, every finished session verifies, and restoring the session
// gives the device back as it was before it, byte for byte.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/passwd"
	"github.com/dmsnap/dmsnap/internal/vmtest"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

// crashRounds is how many times the crash tests go through every point
// (DMSNAP_CRASH_ROUNDS; the soak tier raises it).
func crashRounds(t *testing.T) int {
	t.Helper()
	if s := os.Getenv("DMSNAP_CRASH_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("DMSNAP_CRASH_ROUNDS=%q: want a positive number", s)
		}
		return n
	}
	return 1
}

// watchCrashing starts a watcher armed to die at point.
func (c *cli) watchCrashing(t *testing.T, point string) *watcher {
	t.Helper()
	return c.watchEnv(t, session.CrashpointEnv+"="+point)
}

// requireCrashpoints fails the test unless the guest's dmsnap is the test
// build: a release build ignores DMSNAP_CRASHPOINT, and every crash test
// would then fail later and less clearly.
func requireCrashpoints(t *testing.T, c *cli) {
	t.Helper()
	if out := c.ok(t, "version"); !strings.Contains(out, "crash points") {
		t.Fatalf("%s is a release build (%q), without crash points: build bin/dmsnap-test (make build-test), which hack/vm/exec installs in its place", dmsnapBin, strings.TrimSpace(out))
	}
}

// killedAt checks that err, a dmsnap process's end, is a SIGKILL by the
// crash point named in its log.
func killedAt(t *testing.T, what string, err error, log, point string) {
	t.Helper()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("%s with %s=%s: ended with %v, want SIGKILL\n%s", what, session.CrashpointEnv, point, err, log)
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("%s with %s=%s: %v, want SIGKILL\n%s", what, session.CrashpointEnv, point, err, log)
	}
	name, _, _ := strings.Cut(point, "#")
	if !strings.Contains(log, "crash point "+name+" reached") {
		t.Fatalf("%s died without reaching %s:\n%s", what, point, log)
	}
}

// waitDead waits for the watcher to end by itself.
func (w *watcher) waitDead(t *testing.T, timeout time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- w.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		w.cmd.Process.Kill()
		<-done
		t.Fatalf("the watcher did not reach its crash point within %v\n%s", timeout, w.log.String())
		return nil
	}
}

// settled waits until the device has exactly one live (armed) session,
// every other one closed, and returns the closed sessions' IDs.
func settled(t *testing.T, c *cli, name string) []string {
	t.Helper()
	var ids []string
	eventually(t, "every session of "+name+" closed and one armed", 90*time.Second, func() bool {
		ss := c.list(t, name)
		ids = ids[:0]
		armed := 0
		for _, s := range ss {
			switch s.State {
			case "closed":
				ids = append(ids, s.ID)
			case "armed":
				armed++
			default:
				return false
			}
		}
		if armed != 1 {
			return false
		}
		// The store says so; the registry must too (a session it still
		// has closing is not finished, whatever its directory shows).
		st := c.status(t)
		return len(st.Devices) == 1 && len(st.Devices[0].Sessions) == 1 && st.Devices[0].Sessions[0].State == "armed"
	})
	return ids
}

// newClosed is the one session in after and not in before; anything else
// (a session lost, or more than one new) fails.
func newClosed(t *testing.T, before, after []string) string {
	t.Helper()
	for _, id := range before {
		if !slices.Contains(after, id) {
			t.Fatalf("session %s lost: closed before %v, after %v", id, before, after)
		}
	}
	var added []string
	for _, id := range after {
		if !slices.Contains(before, id) {
			added = append(added, id)
		}
	}
	if len(added) != 1 {
		t.Fatalf("closed sessions: before %v, after %v; want exactly one new", before, after)
	}
	return added[0]
}

func writeSome(t *testing.T, mnt string, i int) {
	t.Helper()
	vmtest.Sh(t, fmt.Sprintf("dd if=/dev/urandom of=%s/c%d bs=64k count=4 2>/dev/null && echo %d >> %s/log && sync", mnt, i, i, mnt))
}

// restoreCrashpoints are the restore's own crashes: in the rotation that
// closes the armed session before it writes (#1), and in the one that closes
// the session that recorded the writes (#2). The armed session is empty
// (the watcher armed it at the unmount) and is discarded, not converted, so
// the first conversion is the second rotation's.
var restoreCrashpoints = []string{"close", "new-session", "forget-session", "restore:write", "close#2", "attach#2", "convert:data"}

// fastRestoreCrashpoints are those the fast tier (CI) runs; DMSNAP_CRASH_ALL=1
// (the soak tier) runs them all.
var fastRestoreCrashpoints = []string{"close", "forget-session", "restore:write", "close#2", "convert:data"}

// TestCrashpoints kills the watcher at every step of a mount → unmount →
// rotation → conversion, then the restore at the steps of its rotations,
// and checks the next start finishes the work without losing anything.
func TestCrashpoints(t *testing.T) {
	c := newCLI(t)
	requireCrashpoints(t, c)
	raw := rawDevice(t, 32<<20)
	const name = "cr"
	origin := "/dev/mapper/dmsnap-" + name
	c.activate(t, raw, name)
	mnt := t.TempDir()
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := exec.Command("sh", "-c", "ls -l "+c.store+"/*; cat "+c.state+"/registry.json").CombinedOutput()
			t.Logf("store and registry at the failure:\n%s", out)
		}
	})
	rounds := crashRounds(t)
	crashes, restores, restorePoints := 0, 0, 0
	start := time.Now()

	// The restore is checked against the state before the session, after
	// every finished session verified.
	check := func(t *testing.T, id, before string) {
		t.Helper()
		c.ok(t, "sessions", "verify", id)
		c.ok(t, "restore", name, "--session", id, "--yes")
		restores++
		if h := hash(t, origin); h != before {
			t.Fatalf("after restoring %s: sha256 %s, before the session %s", id, h, before)
		}
	}

	for round := 0; round < rounds; round++ {
		for i, point := range session.Crashpoints {
			ok := t.Run(fmt.Sprintf("watch/%s", point), func(t *testing.T) {
				closed := settled(t, c, name)
				before := hash(t, origin)
				w := c.watchCrashing(t, point)
				vmtest.Run(t, "mount", origin, mnt)
				writeSome(t, mnt, i)
				vmtest.Run(t, "umount", mnt)
				killedAt(t, "the watcher", w.waitDead(t, 60*time.Second), w.log.String(), point)
				crashes++
				clean := c.watch(t)
				id := newClosed(t, closed, settled(t, c, name))
				check(t, id, before)
				settled(t, c, name)
				clean.stop(t)
			})
			if !ok {
				t.FailNow() // the device's state is unknown: later points would fail for this one's reason
			}
		}

		points := fastRestoreCrashpoints
		if os.Getenv("DMSNAP_CRASH_ALL") == "1" {
			points = restoreCrashpoints
		}
		clean := c.watch(t)
		for i, point := range points {
			ok := t.Run("restore/"+point, func(t *testing.T) {
				closed := settled(t, c, name)
				before := hash(t, origin)
				vmtest.Run(t, "mount", origin, mnt)
				writeSome(t, mnt, 100+i)
				vmtest.Run(t, "umount", mnt)
				id := newClosed(t, closed, settled(t, c, name))
				cmd := c.cmd("", "restore", name, "--session", id, "--yes")
				cmd.Env = append(os.Environ(), session.CrashpointEnv+"="+point)
				out, err := cmd.CombinedOutput()
				killedAt(t, "the restore", err, string(out), point)
				crashes++
				restorePoints++
				settled(t, c, name)
				check(t, id, before)
				settled(t, c, name)
			})
			if !ok {
				t.FailNow()
			}
		}
		clean.stop(t)
	}
	// Every finished session verifies, not only the one restored each time.
	if out := c.ok(t, "sessions", "verify"); strings.Count(out, ": ok") < len(settled(t, c, name)) {
		t.Errorf("sessions verify:\n%s", out)
	}
	c.ok(t, "deactivate", name)
	t.Logf("soak-count crashes %d restores-after-crash %d", crashes, restores)
	t.Logf("crashes injected: %d (%d in the watcher at %d points, %d in the restore, over %d rounds); restores checked: %d; in %v",
		crashes, crashes-restorePoints, len(session.Crashpoints), restorePoints, rounds, restores, time.Since(start).Round(time.Second))
}

// mergeDone reports that no instant restore of name is recorded or running.
func mergeDone(t *testing.T, c *cli, name string) bool {
	t.Helper()
	ms, err := session.LoadMerges(c.state)
	if err != nil {
		t.Fatal(err)
	}
	merging, err := dm.Stack{Name: name}.Merging()
	return err == nil && !merging && session.FindMerge(ms, name) == nil
}

// TestCrashpointsMergeViewsPrune kills an instant restore (and the watcher
// finishing it) at each of its steps, `sessions open` and `close` at theirs,
// and `sessions prune` at its: the next watcher or command finishes the
// work, the device ends restored byte for byte, and nothing is left behind.
// A power cut right after the kernel took the merge table (merge:loaded)
// used to leave the device half merged: the record said "starting", which
// the watcher took for a merge that never ran, and removed its store.
func TestCrashpointsMergeViewsPrune(t *testing.T) {
	c := newCLI(t)
	requireCrashpoints(t, c)
	raw := rawDevice(t, 32<<20)
	const name = "cm"
	origin := "/dev/mapper/dmsnap-" + name
	c.activate(t, raw, name)
	mnt := t.TempDir()
	clean := c.watch(t)
	session1 := func(t *testing.T, i int) (id, before string) {
		t.Helper()
		closed := settled(t, c, name)
		before = hash(t, origin)
		vmtest.Run(t, "mount", origin, mnt)
		writeSome(t, mnt, i)
		vmtest.Run(t, "umount", mnt)
		return newClosed(t, closed, settled(t, c, name)), before
	}
	restored := func(t *testing.T, before string) {
		t.Helper()
		eventually(t, "the instant restore to finish", 120*time.Second, func() bool { return mergeDone(t, c, name) })
		settled(t, c, name)
		if h := hash(t, origin); h != before {
			t.Fatalf("after the interrupted instant restore: sha256 %s, want %s (the state before the session)", h, before)
		}
		if ents, _ := os.ReadDir(c.state + "/merges"); len(ents) != 0 {
			t.Fatalf("merge stores left: %v", ents)
		}
	}
	for i, point := range []string{session.CrashpointMergeRecorded, session.CrashpointMergeLoaded, session.CrashpointMergeRunning} {
		t.Run("restore/"+point, func(t *testing.T) {
			id, before := session1(t, 200+i)
			cmd := c.cmd("", "restore", name, "--session", id, "--merge", "--yes")
			cmd.Env = append(os.Environ(), session.CrashpointEnv+"="+point)
			out, err := cmd.CombinedOutput()
			killedAt(t, "the instant restore", err, string(out), point)
			restored(t, before)
		})
	}
	// The watcher that finishes the merge dies at these: it and the one
	// after it belong to the whole test (a watcher started in a subtest is
	// killed when the subtest ends).
	for i, point := range []string{session.CrashpointMergeEnded, session.CrashpointMergeRemoved} {
		clean.stop(t)
		w := c.watchCrashing(t, point)
		var before string
		if !t.Run("watch/"+point, func(t *testing.T) {
			var id string
			id, before = session1(t, 210+i)
			c.ok(t, "restore", name, "--session", id, "--merge", "--yes")
			killedAt(t, "the watcher", w.waitDead(t, 120*time.Second), w.log.String(), point)
		}) {
			t.FailNow()
		}
		clean = c.watch(t)
		t.Run("watch/"+point+"/after", func(t *testing.T) { restored(t, before) })
	}

	// Views: a crash after the record or after the stacking is cleaned up
	// by the next open (which then shows the state before the session),
	// a crash in close by the next close.
	id, before := session1(t, 220)
	after := hash(t, origin)
	view := "/dev/mapper/dmsnap-" + name + "-at" + strings.TrimPrefix(id, name+"_")
	for _, point := range []string{session.CrashpointViewRecorded, session.CrashpointViewStacked} {
		t.Run("open/"+point, func(t *testing.T) {
			cmd := c.cmd("", "sessions", "open", id)
			cmd.Env = append(os.Environ(), session.CrashpointEnv+"="+point)
			out, err := cmd.CombinedOutput()
			killedAt(t, "sessions open", err, string(out), point)
			c.ok(t, "sessions", "open", id)
			if h := hash(t, view); h != before {
				t.Fatalf("view after an interrupted open: %s, want the state before %s", h, id)
			}
			c.ok(t, "sessions", "close", id)
		})
	}
	t.Run("close/"+session.CrashpointViewDropped, func(t *testing.T) {
		c.ok(t, "sessions", "open", id)
		cmd := c.cmd("", "sessions", "close", id)
		cmd.Env = append(os.Environ(), session.CrashpointEnv+"="+session.CrashpointViewDropped)
		out, err := cmd.CombinedOutput()
		killedAt(t, "sessions close", err, string(out), session.CrashpointViewDropped)
		// The device is gone; the record is cleaned up by the next close.
		c.ok(t, "sessions", "close", id)
		if _, err := os.Stat(view); !os.IsNotExist(err) {
			t.Fatalf("view device after close: %v", err)
		}
		if code, _, _ := c.try(t, "", "sessions", "close", id); code == 0 {
			t.Fatal("a third close found a view to close")
		}
	})
	if h := hash(t, origin); h != after {
		t.Fatal("the views changed the device")
	}

	// Prune: killed after each step, the session is gone from the listing,
	// a restore to it says it was pruned, and the next prune finishes.
	for _, step := range []string{"moved", "logged"} {
		t.Run("prune/"+step, func(t *testing.T) {
			session1(t, 230)
			closed := settled(t, c, name)
			oldest := closed[0]
			cmd := c.cmd("", "sessions", "prune", name, "--keep", strconv.Itoa(len(closed)-1))
			cmd.Env = append(os.Environ(), session.CrashpointEnv+"="+session.CrashpointPrune+step)
			out, err := cmd.CombinedOutput()
			killedAt(t, "sessions prune", err, string(out), session.CrashpointPrune+step)
			if slices.Contains(settled(t, c, name), oldest) {
				t.Fatalf("%s still listed after a prune killed at %s", oldest, step)
			}
			if code, _, errOut := c.try(t, "", "restore", name, "--session", oldest, "--dry-run"); code == 0 || !strings.Contains(errOut, "was pruned") {
				t.Fatalf("restore to the pruned %s: exit %d %s", oldest, code, errOut)
			}
			c.ok(t, "sessions", "prune", name, "--keep", "100")
			if ents, _ := os.ReadDir(c.store + "/" + snapstore.PruneDir); len(ents) != 0 {
				t.Fatalf("left in %s: %v", snapstore.PruneDir, ents)
			}
		})
	}
	clean.stop(t)

	// passwd: killed right after the new hash is written, the new password
	// is the one in force.
	t.Run("passwd/"+session.CrashpointPasswd, func(t *testing.T) {
		t.Cleanup(func() { os.Remove(passwd.Path) })
		os.Remove(passwd.Path)
		cmd := c.cmd("first\n", "passwd", "--password-stdin")
		cmd.Env = append(os.Environ(), session.CrashpointEnv+"="+session.CrashpointPasswd)
		out, err := cmd.CombinedOutput()
		killedAt(t, "passwd", err, string(out), session.CrashpointPasswd)
		if code, _, errOut := c.try(t, "wrong\n", "passwd", "--clear", "--password-stdin"); code != exitBadPassword {
			t.Fatalf("passwd --clear with a wrong password after the crash: exit %d %s", code, errOut)
		}
		if code, out, errOut := c.try(t, "first\n", "passwd", "--clear", "--password-stdin"); code != 0 {
			t.Fatalf("passwd --clear with the password set before the crash: exit %d %s%s", code, out, errOut)
		}
	})
}
