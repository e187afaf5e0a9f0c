//go:build !vm

package main

// Bad input, host side: hostile session IDs, a symlinked session directory
// pointing outside the store, a store others can write to, and commands
// racing for the state lock. Each case asserts the exit code, the words of
// the error, and that nothing in the state directory or the store changed.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

// treeDigest fingerprints every file, directory and symlink under roots:
// path, mode, and content or link target.
func treeDigest(t *testing.T, roots ...string) string {
	t.Helper()
	h := sha256.New()
	for _, root := range roots {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			if d.Name() == "lock" && filepath.Dir(p) == root {
				return nil // the state lock's file, made by whoever takes it first
			}
			fmt.Fprintf(h, "%s %v\n", p, fi.Mode())
			switch {
			case fi.Mode()&fs.ModeSymlink != 0:
				target, _ := os.Readlink(p)
				fmt.Fprintf(h, "-> %s\n", target)
			case fi.Mode().IsRegular():
				b, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				h.Write(b)
			}
			return nil
		})
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func TestBadSessionIDs(t *testing.T) {
	badInputs := 0
	defer func() { t.Logf("soak-count bad-inputs %d", badInputs) }()
	w := newWorld(t)
	now := time.Now().Truncate(time.Second)
	good := filepath.Base(closedSession(t, w.store, "sdb1", now.Add(-time.Hour)))
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "meta.json"), []byte(`{"device":"/dev/sdb1"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	// A session directory that is a symlink out of the store.
	if err := os.Symlink(outside, filepath.Join(w.store, "sdb1_1700000000")); err != nil {
		t.Fatal(err)
	}
	before := treeDigest(t, w.state, w.store, outside)
	for _, id := range []string{"a/b", "..", ".", "../x", "/etc", "sdb1_1\x00x", good + "/../" + good, "", "sdb1_1700000000"} {
		for _, sub := range []string{"show", "verify"} {
			badInputs++
			code, out, errOut := w.run(t, "", "sessions", sub, id)
			want := exitFailure
			if code != want || !strings.Contains(errOut, "session") || out != "" {
				t.Errorf("sessions %s %q: exit %d (want %d)\nstdout %q\nstderr %q", sub, id, code, want, out, errOut)
			}
			switch {
			case id == "sdb1_1700000000":
				if !strings.Contains(errOut, "outside the store") || !strings.Contains(errOut, "refused") {
					t.Errorf("sessions %s of a symlink out of the store: %q", sub, errOut)
				}
			case id != "":
				if !strings.Contains(errOut, "invalid session ID") && !strings.Contains(errOut, "not a session ID") {
					t.Errorf("sessions %s %q: %q does not say the ID is invalid", sub, id, errOut)
				}
			}
		}
	}
	// The listing skips the symlink: it is not a session of the store.
	badInputs++
	if code, out, errOut := w.run(t, "", "sessions", "list"); code != exitOK || strings.Contains(out, "sdb1_1700000000") || !strings.Contains(out, good) {
		t.Errorf("sessions list with a symlinked session directory: exit %d\n%s%s", code, out, errOut)
	}
	// Restore never takes such an ID either.
	for id, want := range map[string]int{"../x": exitUsage, "a/b": exitUsage, "sdb1_1700000000": exitFailure} {
		badInputs++
		code, out, errOut := w.run(t, "", "restore", "sdb1", "--session", id, "--yes")
		if code != want || !strings.Contains(errOut, id) {
			t.Errorf("restore --session %q: exit %d\n%s%s", id, code, out, errOut)
		}
	}
	if after := treeDigest(t, w.state, w.store, outside); after != before {
		t.Error("a refused command changed the state directory, the store or the directory the symlink points to")
	}
}

func TestInsecureStoreRefused(t *testing.T) {
	badInputs := 0
	defer func() { t.Logf("soak-count bad-inputs %d", badInputs) }()
	w := newWorld(t)
	w.sys.Prober.Add("/dev/sdb1", sdb1)
	closedSession(t, w.store, "sdb1", time.Now().Add(-time.Hour))
	if err := os.Chmod(w.store, 0o777); err != nil {
		t.Fatal(err)
	}
	before := treeDigest(t, w.state, w.store)
	for _, args := range [][]string{
		{"activate", "/dev/sdb1"},
		{"sessions", "list"},
		{"sessions", "verify"},
		{"sessions", "prune", "sdb1", "--keep", "0"},
	} {
		badInputs++
		code, out, errOut := w.run(t, "", args...)
		if code != exitFailure || !strings.Contains(errOut, "refusing the store "+w.store) || !strings.Contains(errOut, "chmod go-w "+w.store) ||
			!strings.Contains(errOut, "writable by group or others") {
			t.Errorf("%q with a world-writable store: exit %d\n%s%s", args, code, out, errOut)
		}
	}
	if after := treeDigest(t, w.state, w.store); after != before {
		t.Error("a command refused for a loose store changed something")
	}
	if n := len(w.registry(t).Devices); n != 0 || len(w.sys.Kernel.StackNames()) != 0 {
		t.Errorf("activate with a loose store left %d devices, stacks %v", n, w.sys.Kernel.StackNames())
	}
	// Fixed as the message says, it is accepted.
	if err := os.Chmod(w.store, 0o755); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := w.run(t, "", "sessions", "list"); code != exitOK {
		t.Errorf("sessions list after chmod go-w: exit %d\n%s%s", code, out, errOut)
	}
}

// Every state-changing command refuses, busy (exit 4), while another holds
// the state lock, and changes nothing.
func TestStateChangesWaitForTheLock(t *testing.T) {
	badInputs := 0
	defer func() { t.Logf("soak-count bad-inputs %d", badInputs) }()
	w := newWorld(t)
	w.sys.Prober.Add("/dev/sdb1", sdb1)
	w.sys.Prober.Add("/dev/sdc1", session.Identity{Dev: session.DevNum{Major: 8, Minor: 33}, Size: 32 << 20})
	if code, _, errOut := w.run(t, "", "activate", "/dev/sdb1"); code != exitOK {
		t.Fatalf("activate: %d %s", code, errOut)
	}
	closedSession(t, w.store, "sdb1", time.Now().Add(-time.Hour))
	l, err := session.AcquireLock(context.Background(), w.state, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	before := treeDigest(t, w.state, w.store)
	for _, args := range [][]string{
		{"activate", "/dev/sdc1"},
		{"deactivate", "sdb1"},
		{"attach", "/dev/sdb1"},
		{"sessions", "prune", "sdb1", "--keep", "0"},
	} {
		badInputs++
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		var out, errOut strings.Builder
		code := run(ctx, append([]string{"--state", w.state, "--store", w.store}, args...), strings.NewReader(""), &out, &errOut)
		cancel()
		if code != exitBusy || !strings.Contains(errOut.String(), "lock") {
			t.Errorf("%q while the state is locked: exit %d, want %d\n%s%s", args, code, exitBusy, out.String(), errOut.String())
		}
	}
	if after := treeDigest(t, w.state, w.store); after != before {
		t.Error("a command refused for the lock changed something")
	}
}

// markInvalid rewrites a finished session's meta.json as the conversion of a
// session the kernel dropped writes it: state invalid, with reason.
func markInvalid(t *testing.T, dir, reason string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, snapstore.MetaFile))
	if err != nil {
		t.Fatal(err)
	}
	m, err := snapstore.ParseMeta(b, snapstore.MetaFile)
	if err != nil {
		t.Fatal(err)
	}
	m.Dmsnap.State, m.Dmsnap.InvalidReason = snapstore.StateInvalid, reason
	if b, err = snapstore.EncodeMeta(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, snapstore.MetaFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// An invalid session (its snapshot overflowed: pre-images missing) is never
// a restore point, nor a link of another's chain: restore to it, through
// it, to a file, as a dry run or as "latest" is refused naming it, and the
// device is untouched. (No flag lets it in: the CLI has none.)
func TestInvalidSessionIsNoRestorePoint(t *testing.T) {
	badInputs := 0
	defer func() { t.Logf("soak-count bad-inputs %d", badInputs) }()
	fx := newRestoreFixture(t, []int{1, 2}, []int{2, 3}, []int{4})
	markInvalid(t, filepath.Join(fx.store, fx.ids[1]), "snapshot overflowed")
	// The newest session invalid too, for "latest".
	fx2 := newRestoreFixture(t, []int{1}, []int{2})
	markInvalid(t, filepath.Join(fx2.store, fx2.ids[1]), "snapshot overflowed")

	out := filepath.Join(t.TempDir(), "img")
	// Each refusal offers a session that works, or says there is none.
	works := "dmsnap restore dev.img --session " + fx.ids[2]
	none := "no session of dev.img can be restored to now"
	for _, tc := range []struct {
		fx     *restoreFixture
		args   []string
		advice string
	}{
		{fx, []string{fx.dev, "--session", fx.ids[1], "--yes"}, works},
		{fx, []string{fx.dev, "--session", fx.ids[0], "--yes"}, works},
		{fx, []string{fx.dev, "--session", fx.ids[0], "--dry-run"}, works},
		{fx, []string{fx.dev, "--session", fx.ids[0], "--to", out}, works},
		{fx2, []string{fx2.dev, "--session", "latest", "--yes"}, none},
	} {
		badInputs++
		before := tc.fx.device(t)
		code, stdout, errOut := tc.fx.run(t, nil, tc.args...)
		if code != exitFailure || !strings.Contains(errOut, "is invalid") || !strings.Contains(errOut, "nothing was written") || !strings.Contains(errOut, tc.advice) {
			t.Errorf("restore %q through an invalid session: exit %d\n%s%s\nwant it refused saying %q", tc.args, code, stdout, errOut, tc.advice)
		}
		if !bytes.Equal(tc.fx.device(t), before) {
			t.Errorf("restore %q through an invalid session changed the device", tc.args)
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("restore %q through an invalid session wrote %s", tc.args, out)
		}
	}
	// After the invalid one, the chain is whole: restorable.
	if code, stdout, errOut := fx.run(t, nil, fx.dev, "--session", fx.ids[2], "--yes"); code != exitOK || !bytes.Equal(fx.device(t), fx.states[2]) {
		t.Errorf("restore to the session after the invalid one: exit %d\n%s%s", code, stdout, errOut)
	}
}

// sessions list says which sessions can still be restored to: an invalid
// one breaks the chain for itself and every older one.
func TestSessionsListShowsRestorePoints(t *testing.T) {
	fx := newRestoreFixture(t, []int{1, 2}, []int{2, 3}, []int{4})
	markInvalid(t, filepath.Join(fx.store, fx.ids[1]), "snapshot overflowed")
	var out bytes.Buffer
	code := run(context.Background(), []string{"--state", fx.state, "--store", fx.store, "sessions", "list", "--json"}, strings.NewReader(""), &out, io.Discard)
	if code != exitOK {
		t.Fatalf("list: exit %d", code)
	}
	var list []struct {
		ID            string `json:"id"`
		State         string `json:"state"`
		Restorable    bool   `json:"restorable"`
		NotRestorable string `json:"not_restorable_because"`
	}
	if err := decodeResult(out.String(), &list); err != nil {
		t.Fatal(err)
	}
	want := []bool{false, false, true}
	for i, s := range list {
		if s.Restorable != want[i] || (!s.Restorable && !strings.Contains(s.NotRestorable, "snapshot overflowed")) {
			t.Errorf("%s (%s): restorable %v (%q), want %v", s.ID, s.State, s.Restorable, s.NotRestorable, want[i])
		}
	}
	if list[0].State != "closed" || !strings.Contains(list[0].NotRestorable, fx.ids[1]) {
		t.Errorf("the session before the invalid one: %+v, want closed and naming %s", list[0], fx.ids[1])
	}
	out.Reset()
	run(context.Background(), []string{"--state", fx.state, "--store", fx.store, "sessions", "list"}, strings.NewReader(""), &out, io.Discard)
	if !strings.Contains(out.String(), "RESTORABLE") || !strings.Contains(out.String(), "not restorable: "+fx.ids[1]+" is invalid") {
		t.Errorf("text list:\n%s", out.String())
	}
}
