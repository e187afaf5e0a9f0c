//go:build !vm

package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/internal/hostfiles"
	"github.com/dmsnap/dmsnap/session"
)

// othersLink makes, in a sticky directory writable by all (as /tmp), a
// symlink to target owned by uid (4242: another user; 0: root).
func othersLink(t *testing.T, target string, uid int) string {
	t.Helper()
	tmp := filepath.Join(t.TempDir(), "tmp")
	if err := os.Mkdir(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tmp, os.ModeSticky|0o777); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(tmp, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, uid, uid); err != nil {
		t.Fatal(err)
	}
	return link
}

// A --state reached through another user's symlink stops every command that
// uses the state directory before it does anything.
func TestBadStateDirStopsEveryCommand(t *testing.T) {
	w := newWorld(t)
	w.sys.Prober.Add("/dev/sdb1", sdb1)
	old := closedSession(t, w.store, "sdb1", time.Now().Add(-time.Hour))
	good := w.state
	w.state = othersLink(t, good, 4242)
	for _, args := range [][]string{
		{"activate", "/dev/sdb1"},
		{"deactivate", "sdb1"},
		{"status"},
		{"sessions", "prune", "sdb1", "--keep", "0"},
		{"sessions", "list"},
		{"restore", "sdb1", "--session", filepath.Base(old), "--yes"},
		{"passwd", "--password-stdin"},
		{"watch", "--interval", "100ms"},
	} {
		// Bounded: a watch that is not refused runs until stopped.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var outB, errB bytes.Buffer
		code := run(ctx, append([]string{"--state", w.state, "--store", w.store}, args...), strings.NewReader("secret\nsecret\n"), &outB, &errB)
		cancel()
		out, errOut := outB.String(), errB.String()
		if code != exitFailure || !strings.Contains(errOut, "refusing the state directory "+w.state+": "+w.state+", a symlink on its path, is owned by uid 4242") ||
			!strings.Contains(errOut, "chown -h root "+w.state) || out != "" {
			t.Errorf("dmsnap %q with --state through uid 4242's symlink: exit %d\n%s%s", args, code, out, errOut)
		}
	}
	if len(w.sys.Calls) != 0 {
		t.Errorf("refused commands changed the system: %v", w.sys.Calls)
	}
	if ents, _ := os.ReadDir(good); len(ents) != 0 {
		t.Errorf("refused commands wrote into the state directory: %v", ents)
	}
	if _, err := os.Stat(old); err != nil {
		t.Errorf("a refused prune removed %s", old)
	}
	if code, out, _ := w.run(t, "", "version"); code != exitOK || !strings.HasPrefix(out, "dmsnap ") {
		t.Errorf("version, which uses no state, with a bad --state: exit %d", code)
	}
}

// A --state through root's symlink is used by its real path: what the
// command writes, and generates, names the directory the check passed.
func TestStateDirThroughRootsSymlink(t *testing.T) {
	w := newWorld(t)
	w.sys.Prober.Add("/dev/sdb1", sdb1)
	real := w.state
	w.state = othersLink(t, real, 0)
	if code, _, errOut := w.run(t, "", "activate", "/dev/sdb1"); code != exitOK {
		t.Fatalf("activate: exit %d: %s", code, errOut)
	}
	if _, err := session.LoadRegistry(real); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if code, _, errOut := w.run(t, "", "install-files", root); code != exitOK {
		t.Fatalf("install-files: exit %d: %s", code, errOut)
	}
	unit, err := os.ReadFile(filepath.Join(root, hostfiles.SystemdUnitPath))
	if err != nil || !strings.Contains(string(unit), "--state "+real+" ") {
		t.Errorf("the unit does not run dmsnap with the real state directory %s: %v\n%s", real, err, unit)
	}
}

// --store through another user's symlink: the session commands refuse it;
// through root's, they work on the real directory.
func TestSessionsStoreThroughSymlink(t *testing.T) {
	w := newWorld(t)
	old := closedSession(t, w.store, "sdb1", time.Now().Add(-time.Hour))
	real := w.store
	w.store = othersLink(t, real, 4242)
	for _, sub := range [][]string{{"list"}, {"show", filepath.Base(old)}, {"verify"}, {"prune", "sdb1", "--keep", "0"}} {
		args := append([]string{"sessions"}, sub...)
		code, out, errOut := w.run(t, "", args...)
		if code != exitFailure || !strings.Contains(errOut, "refusing the store "+w.store+": "+w.store+", a symlink on its path") ||
			!strings.Contains(errOut, "chown -h root "+w.store) {
			t.Errorf("dmsnap %q: exit %d\n%s%s", args, code, out, errOut)
		}
	}
	if _, err := os.Stat(old); err != nil {
		t.Fatalf("a refused prune removed %s", old)
	}
	w.store = othersLink(t, real, 0)
	if code, out, errOut := w.run(t, "", "sessions", "prune", "sdb1", "--keep", "0"); code != exitOK || !strings.Contains(out, "removed") {
		t.Fatalf("prune through root's symlink: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, _ := w.run(t, "", "sessions", "list"); code != exitOK || out != "no sessions in "+real+"\n" {
		t.Errorf("list through root's symlink: exit %d, %q; want it to name the real store %s", code, out, real)
	}
}

// restore reads sessions only from a checked store, whether the device or
// only the session is given.
func TestRestoreStoreThroughSymlink(t *testing.T) {
	fx := newRestoreFixture(t, []int{1, 2}, []int{2, 5})
	before := fx.device(t)
	real := fx.store
	fx.store = othersLink(t, real, 4242)
	for _, args := range [][]string{
		{"dev.img", "--session", fx.ids[0], "--yes"},
		{fx.dev, "--session", fx.ids[0], "--yes"},
		{"--session", fx.ids[0], "--yes"},
		{"--session", "latest", "--yes"},
		{"dev.img", "--session", fx.ids[0], "--dry-run"},
	} {
		code, out, errOut := fx.run(t, nil, args...)
		if code != exitFailure || !strings.Contains(errOut, "refusing the store "+fx.store) || !strings.Contains(errOut, "chown -h root "+fx.store) {
			t.Errorf("restore %q through uid 4242's symlink: exit %d\n%s%s", args, code, out, errOut)
		}
	}
	if !bytes.Equal(fx.device(t), before) {
		t.Fatal("a refused restore wrote the device")
	}
	fx.store = othersLink(t, real, 0)
	if code, _, errOut := fx.run(t, nil, "--session", fx.ids[0], "--yes"); code != exitOK || !bytes.Equal(fx.device(t), fx.states[0]) {
		t.Fatalf("restore through root's symlink: exit %d: %s", code, errOut)
	}
}
