//go:build !vm

package main

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/snapstore"
)

// The policy is set at activate, changed by set (only what is given), and
// applied by sessions prune NAME with neither --keep nor --older-than.
func TestRetentionPolicyCommands(t *testing.T) {
	w := newWorld(t)
	w.sys.Prober.Add("/dev/sdb1", sdb1)
	for _, args := range [][]string{
		{"set", "sdb1"},
		{"set", "sdb1", "--keep-last", "-1"},
		{"set", "sdb1", "--keep-within", "soon"},
		{"set", "sdb1", "--min-free", "lots"},
		{"activate", "/dev/sdb1", "--keep-daily", "-2"},
	} {
		if code, _, errOut := w.run(t, "", args...); code != exitUsage {
			t.Errorf("dmsnap %q: exit %d, want %d: %s", args, code, exitUsage, errOut)
		}
	}
	if code, _, errOut := w.run(t, "", "set", "sdb1", "--keep-last", "3"); code != exitFailure || !strings.Contains(errOut, "not activated") {
		t.Errorf("set of a device not activated: exit %d %s", code, errOut)
	}
	if code, _, errOut := w.run(t, "", "activate", "/dev/sdb1", "--keep-last", "3", "--min-free", "1GiB"); code != exitOK {
		t.Fatalf("activate: %s", errOut)
	}
	want := snapstore.Retention{KeepLast: 3, MinFree: 1 << 30}
	if r := w.registry(t).Device("sdb1").Retention; r == nil || *r != want {
		t.Fatalf("retention after activate: %+v", r)
	}
	if code, out, errOut := w.run(t, "", "set", "sdb1", "--keep-daily", "7", "--keep-within", "36h"); code != exitOK || !strings.Contains(out, "keep-last 3, keep-within 36h0m0s, keep-daily 7") {
		t.Fatalf("set: exit %d\n%s%s", code, out, errOut)
	}
	want.KeepDaily, want.KeepWithin = 7, 36*time.Hour
	if r := w.registry(t).Device("sdb1").Retention; r == nil || *r != want {
		t.Fatalf("retention after set: %+v", r)
	}
	// Turned off rule by rule: no policy left at all.
	if code, _, errOut := w.run(t, "", "set", "sdb1", "--keep-daily", "0", "--keep-within", "0", "--keep-last", "0", "--min-free", "0"); code != exitOK {
		t.Fatalf("set to zero: %s", errOut)
	}
	if r := w.registry(t).Device("sdb1").Retention; r != nil {
		t.Fatalf("retention after turning every rule off: %+v", r)
	}
	if code, _, errOut := w.run(t, "", "sessions", "prune", "sdb1"); code != exitUsage || !strings.Contains(errOut, "no retention policy") {
		t.Fatalf("prune without a policy: exit %d %s", code, errOut)
	}

	// sessions prune NAME applies the policy: keep-last 2 of 4.
	now := time.Now().Truncate(time.Second)
	var dirs []string
	for h := 4; h >= 1; h-- {
		dirs = append(dirs, closedSession(t, w.store, "sdb1", now.Add(-time.Duration(h)*time.Hour)))
	}
	w.run(t, "", "set", "sdb1", "--keep-last", "2")
	code, out, errOut := w.run(t, "", "sessions", "prune", "sdb1", "--dry-run")
	if code != exitOK || strings.Count(out, "would remove") != 2 || !strings.Contains(out, "(keep rules)") {
		t.Fatalf("prune --dry-run by policy: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := w.run(t, "", "sessions", "prune", "sdb1"); code != exitOK || strings.Count(out, "removed") != 2 {
		t.Fatalf("prune by policy: exit %d\n%s%s", code, out, errOut)
	}
	for i, d := range dirs {
		if _, err := os.Stat(d); (err == nil) != (i >= 2) {
			t.Errorf("session %d exists %v after keep-last 2", i, err == nil)
		}
	}
	// status shows the policy.
	if code, out, _ := w.run(t, "", "status"); code != exitOK || !strings.Contains(out, "retain:   keep-last 2") {
		t.Fatalf("status:\n%s", out)
	}
}

// --on-unmount on activate and set: checked, recorded, shown by set and
// status.
func TestOnUnmountCommands(t *testing.T) {
	w := newWorld(t)
	w.sys.Prober.Add("/dev/sdb1", sdb1)
	for _, args := range [][]string{
		{"activate", "/dev/sdb1", "--on-unmount", "sometimes"},
		{"set", "sdb1", "--on-unmount", "never"},
	} {
		if code, _, errOut := w.run(t, "", args...); code != exitUsage || !strings.Contains(errOut, "want keep or revert") {
			t.Errorf("dmsnap %q: exit %d, want %d: %s", args, code, exitUsage, errOut)
		}
	}
	if code, _, errOut := w.run(t, "", "activate", "/dev/sdb1", "--on-unmount", "revert"); code != exitOK {
		t.Fatalf("activate: %s", errOut)
	}
	if d := w.registry(t).Device("sdb1"); !d.Reverts() || d.RevertBase != 1 || d.RevertPending {
		t.Fatalf("after activate --on-unmount revert: %+v", d)
	}
	if code, out, _ := w.run(t, "", "status"); code != exitOK || !strings.Contains(out, "on unmount: revert, to the state before session 1") {
		t.Fatalf("status: exit %d\n%s", code, out)
	}
	if code, out, errOut := w.run(t, "", "set", "sdb1", "--on-unmount", "keep", "--json"); code != exitOK || !strings.Contains(out, `"on_unmount": "keep"`) {
		t.Fatalf("set keep: exit %d\n%s%s", code, out, errOut)
	}
	if d := w.registry(t).Device("sdb1"); d.Reverts() || d.RevertBase != 0 {
		t.Fatalf("after set --on-unmount keep: %+v", d)
	}
	// A retention change alone leaves the mode, and says it.
	if code, out, errOut := w.run(t, "", "set", "sdb1", "--keep-last", "2"); code != exitOK || !strings.Contains(out, "on unmount: keep") {
		t.Fatalf("set --keep-last: exit %d\n%s%s", code, out, errOut)
	}
}
