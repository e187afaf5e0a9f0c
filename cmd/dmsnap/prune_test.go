//go:build !vm

package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/rollback"
	"github.com/dmsnap/dmsnap/snapstore"
)

// Regression: prune removed the oldest *finished* sessions, skipping over an
// older unfinished one (a conversion that failed, say), which broke that
// session's chain: a restore to it, once finished, would have missed the pruned sessions' pre-images. Now the first session prune
// must keep ends the run of victims, and prune says so.
func TestPruneStopsAtAKeptSession(t *testing.T) {
	w := newWorld(t)
	now := time.Now().Truncate(time.Second)
	a := closedSession(t, w.store, "sdb1", now.Add(-90*time.Hour))
	// b: closed but never converted (no meta.json), older than c and d.
	b, err := snapstore.CreateSession(w.store, snapstore.State{Name: "sdb1", Device: snapstore.Device{Path: "/dev/sdb1", Size: 16 << 20}, ChunkSize: 4096, Times: snapstore.Times{Armed: now.Add(-80 * time.Hour)}})
	if err != nil {
		t.Fatal(err)
	}
	c := closedSession(t, w.store, "sdb1", now.Add(-70*time.Hour))
	d := closedSession(t, w.store, "sdb1", now.Add(-time.Hour))
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }

	code, out, errOut := w.run(t, "", "sessions", "prune", "sdb1", "--keep", "1")
	if code != exitOK {
		t.Fatalf("prune: exit %d\n%s%s", code, out, errOut)
	}
	if exists(a) || !exists(b) || !exists(c) || !exists(d) {
		t.Fatalf("prune --keep 1 with an unfinished session in the middle: a %v b %v c %v d %v; want only a removed\n%s%s",
			exists(a), exists(b), exists(c), exists(d), out, errOut)
	}
	if !strings.Contains(errOut, filepath.Base(b)+" is not finished") || !strings.Contains(errOut, "every newer session is kept") {
		t.Errorf("prune does not say why it kept more than asked: %q", errOut)
	}
	// --older-than stops at it too.
	if code, out, errOut := w.run(t, "", "sessions", "prune", "sdb1", "--older-than", "2d"); code != exitOK || exists(a) || !exists(c) {
		t.Fatalf("prune --older-than: exit %d, c removed %v\n%s%s", code, !exists(c), out, errOut)
	}
	// Once b is gone (finished or removed by hand), c goes.
	if err := os.RemoveAll(b); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := w.run(t, "", "sessions", "prune", "sdb1", "--keep", "1"); code != exitOK || exists(c) || !exists(d) || errOut != "" {
		t.Fatalf("prune after: exit %d, c %v d %v\n%s%s", code, exists(c), exists(d), out, errOut)
	}
}

// A damaged session is kept, and so is everything after it.
func TestPruneKeepsDamaged(t *testing.T) {
	w := newWorld(t)
	now := time.Now().Truncate(time.Second)
	a := closedSession(t, w.store, "sdb1", now.Add(-3*time.Hour))
	b := closedSession(t, w.store, "sdb1", now.Add(-2*time.Hour))
	if err := os.WriteFile(filepath.Join(b, snapstore.MetaFile), []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := closedSession(t, w.store, "sdb1", now.Add(-time.Hour))
	code, out, errOut := w.run(t, "", "sessions", "prune", "sdb1", "--keep", "0")
	if code != exitOK || strings.Count(out, "removed") != 1 || !strings.Contains(errOut, "is damaged") {
		t.Fatalf("prune --keep 0: exit %d\n%s%s", code, out, errOut)
	}
	for p, want := range map[string]bool{a: false, b: true, c: true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s exists %v, want %v", filepath.Base(p), err == nil, want)
		}
	}
}

func TestPrunedTarget(t *testing.T) {
	w := newWorld(t)
	now := time.Now().Truncate(time.Second)
	old := closedSession(t, w.store, "sdb1", now.Add(-3*time.Hour))
	kept := closedSession(t, w.store, "sdb1", now.Add(-time.Hour))
	if code, out, errOut := w.run(t, "", "sessions", "prune", "sdb1", "--keep", "1"); code != exitOK {
		t.Fatalf("prune: exit %d\n%s%s", code, out, errOut)
	}
	infos, err := snapstore.ListSessions(w.store)
	if err != nil || len(infos) != 1 {
		t.Fatalf("after prune: %v %v (the log of pruned sessions must not list as one)", infos, err)
	}
	err = rollback.PrunedTarget(w.store, filepath.Base(old), "sdb1", infos)
	if !errors.Is(err, rollback.ErrPrunedTarget) || !strings.Contains(err.Error(), "session "+filepath.Base(old)+" of sdb1 was pruned") ||
		!strings.Contains(err.Error(), "restore sdb1 --session "+filepath.Base(kept)) {
		t.Errorf("pruned target: %v", err)
	}
	// Kept, never there, another device, not an ID: not a pruned target.
	for _, id := range []string{filepath.Base(kept), "sdb1_1", "sdc1_1", "sdb1_x", "../sdb1_1"} {
		if err := rollback.PrunedTarget(w.store, id, "sdb1", infos); err != nil {
			t.Errorf("rollback.PrunedTarget(%q) = %v, want nil", id, err)
		}
	}
	if code, out, errOut := w.run(t, "", "sessions", "list"); code != exitOK || strings.Contains(out, "pruned") {
		t.Errorf("sessions list after prune: exit %d\n%s%s", code, out, errOut)
	}
}

// Regression: prune removed restore points without asking for the control
// password. It asks now (not for --dry-run), before the lock; a wrong or
// missing password removes nothing.
func TestPruneAsksForThePassword(t *testing.T) {
	w := newWorld(t)
	now := time.Now().Truncate(time.Second)
	a := closedSession(t, w.store, "sdb1", now.Add(-3*time.Hour))
	b := closedSession(t, w.store, "sdb1", now.Add(-2*time.Hour))
	setPassword(t, "hunter2")
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	untouched := func(what string) {
		t.Helper()
		if !exists(a) || !exists(b) || exists(filepath.Join(w.store, snapstore.PrunedLog)) {
			t.Fatalf("%s: a %v, b %v, pruned.log %v; want nothing removed", what, exists(a), exists(b), exists(filepath.Join(w.store, snapstore.PrunedLog)))
		}
	}

	code, out, errOut := w.run(t, "guess\n", "sessions", "prune", "sdb1", "--keep", "0", "--password-stdin")
	if code != exitBadPassword || !strings.Contains(errOut, "wrong password") {
		t.Fatalf("prune with a wrong password: exit %d\n%s%s", code, out, errOut)
	}
	untouched("wrong password")
	code, out, errOut = w.run(t, "", "sessions", "prune", "sdb1", "--older-than", "1h", "--password-stdin")
	if code != exitFailure || !strings.Contains(errOut, "control password") {
		t.Fatalf("prune with no password given: exit %d\n%s%s", code, out, errOut)
	}
	untouched("no password")
	code, out, errOut = w.run(t, "", "sessions", "prune", "sdb1", "--keep", "0", "--dry-run")
	if code != exitOK || !strings.Contains(out, "would remove "+filepath.Base(a)) {
		t.Fatalf("prune --dry-run needs no password: exit %d\n%s%s", code, out, errOut)
	}
	untouched("dry run")
	if code, out, errOut := w.run(t, "hunter2\n", "sessions", "prune", "sdb1", "--keep", "1", "--password-stdin"); code != exitOK || exists(a) || !exists(b) {
		t.Fatalf("prune with the password: exit %d, a %v b %v\n%s%s", code, exists(a), exists(b), out, errOut)
	}
}

// Flags prune must refuse before it removes anything: exit 2, a message
// naming the flag and what is wrong, every session still there. Regression:
// --older-than 106752d overflowed to a negative age and removed every
// finished session; --keep -1 was taken for "no --keep" and got a message
// about giving one of the two flags.
func TestPruneRefusesBadFlags(t *testing.T) {
	w := newWorld(t)
	now := time.Now().Truncate(time.Second)
	dirs := []string{
		closedSession(t, w.store, "sdb1", now.Add(-40*24*time.Hour)),
		closedSession(t, w.store, "sdb1", now.Add(-3*time.Hour)),
	}
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"--older-than", "106752d"}, `--older-than: "106752d" is more than 100 years`},
		{[]string{"--older-than", "36526d"}, "give at most 36525d"},
		{[]string{"--older-than", "5218w"}, "more than 100 years"},
		{[]string{"--older-than", "2562048h"}, "more than 100 years"},
		{[]string{"--older-than", "0"}, "--older-than 0 would remove every finished session: give a positive DURATION, or --keep 0"},
		{[]string{"--older-than", "0d"}, "--older-than 0d would remove every finished session"},
		{[]string{"--older-than", "-1h"}, `"-1h" is negative`},
		{[]string{"--older-than", ""}, "want a duration such as"},
		{[]string{"--older-than", "1.5d"}, "want a duration such as"},
		{[]string{"--keep", "-1"}, "--keep -1: want 0 or more"},
		{[]string{"--keep=-3"}, "--keep -3: want 0 or more"},
		{[]string{"--keep", "-1", "--older-than", "1h"}, "one of --keep N and --older-than DURATION"},
		{nil, "sdb1 has no retention policy"},
	} {
		args := append([]string{"sessions", "prune", "sdb1"}, tc.args...)
		code, out, errOut := w.run(t, "", args...)
		if code != exitUsage || !strings.Contains(errOut, tc.says) {
			t.Errorf("dmsnap %q: exit %d, want %d and %q\n%s%s", args[1:], code, exitUsage, tc.says, out, errOut)
		}
		for _, d := range dirs {
			if _, err := os.Stat(d); err != nil {
				t.Fatalf("dmsnap %q removed %s", args[1:], filepath.Base(d))
			}
		}
	}
	if _, err := os.Stat(filepath.Join(w.store, snapstore.PrunedLog)); !os.IsNotExist(err) {
		t.Errorf("refused prunes wrote %s: %v", snapstore.PrunedLog, err)
	}
	// Weeks are whole weeks: 2w removes the 40-day-old session only.
	if code, out, errOut := w.run(t, "", "sessions", "prune", "sdb1", "--older-than", "2w"); code != exitOK ||
		strings.Count(out, "removed") != 1 || !strings.Contains(out, filepath.Base(dirs[0])) {
		t.Errorf("prune --older-than 2w: exit %d\n%s%s", code, out, errOut)
	}
}
