//go:build !vm

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/snapstore"
)

// TestRestoreToRefusesItsSource: restore --to never writes what it reads.
// The image restored (a not-activated "device" that is a regular file),
// by its own path, a hard link or a symbolic link, and a session's files
// are refused, --force or not, and stay as they were; it used to truncate
// the image and then say the device "was not touched".
func TestRestoreToRefusesItsSource(t *testing.T) {
	fx := newRestoreFixture(t, []int{1, 2}, []int{2, 5})
	hard, soft := filepath.Join(fx.dir, "hard.img"), filepath.Join(fx.dir, "soft.img")
	if err := os.Link(fx.dev, hard); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(fx.dev, soft); err != nil {
		t.Fatal(err)
	}
	dat := filepath.Join(fx.store, fx.ids[1], snapstore.DataFile)
	before, datBefore := fileSum(t, fx.dev), fileSum(t, dat)
	for _, to := range []string{fx.dev, hard, soft, "./" + filepath.Base(fx.dev), dat} {
		for _, force := range []bool{false, true} {
			args := []string{fx.dev, "--session", fx.ids[0], "--to", to}
			if to == "./"+filepath.Base(fx.dev) {
				t.Chdir(fx.dir)
			}
			if force {
				args = append(args, "--force")
			}
			code, out, errOut := fx.run(t, nil, args...)
			if code != exitFailure || !strings.Contains(errOut, "which the restore reads") || !strings.Contains(errOut, "nothing was written") || out != "" {
				t.Errorf("%q: exit %d\n%s%s", args, code, out, errOut)
			}
			if fileSum(t, fx.dev) != before || fileSum(t, dat) != datBefore {
				t.Fatalf("%q changed the image or the session", args)
			}
		}
	}
}

// TestRestoreToExistingFile: an existing file that is not empty is
// overwritten only with --force; an empty or a new one is written. The
// message says the source was only read, after the write succeeded.
func TestRestoreToExistingFile(t *testing.T) {
	fx := newRestoreFixture(t, []int{1, 2}, []int{2, 5})
	before := fileSum(t, fx.dev)
	full := filepath.Join(fx.dir, "full.img")
	keep := bytes.Repeat([]byte("keep me "), 1000)
	if err := os.WriteFile(full, keep, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := fx.run(t, nil, fx.dev, "--session", fx.ids[0], "--to", full)
	if code != exitFailure || !strings.Contains(errOut, "--force") || !strings.Contains(errOut, "nothing was written") {
		t.Errorf("a file that is not empty, without --force: exit %d\n%s%s", code, out, errOut)
	}
	if got, _ := os.ReadFile(full); !bytes.Equal(got, keep) {
		t.Fatal("the refused restore changed the file")
	}

	empty := filepath.Join(fx.dir, "empty.img")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		to    string
		force bool
	}{{full, true}, {empty, false}, {filepath.Join(fx.dir, "new.img"), false}} {
		args := []string{fx.dev, "--session", fx.ids[0], "--to", c.to}
		if c.force {
			args = append(args, "--force")
		}
		code, out, errOut := fx.run(t, nil, args...)
		if code != exitOK || !strings.Contains(strings.Join(strings.Fields(out), " "), fx.dev+" was only read") || strings.Contains(out, "not touched") {
			t.Errorf("%q: exit %d\n%s%s", args, code, out, errOut)
		}
		if got, _ := os.ReadFile(c.to); !bytes.Equal(got, fx.states[0]) {
			t.Errorf("%q: the image differs from the device before session %s", args, fx.ids[0])
		}
	}
	if fileSum(t, fx.dev) != before {
		t.Fatal("restore --to changed the image it read")
	}
	if code, _, errOut := fx.run(t, nil, fx.dev, "--session", fx.ids[0], "--force", "--yes"); code != exitUsage || !strings.Contains(errOut, "--force goes with --to") {
		t.Errorf("--force without --to: exit %d: %s", code, errOut)
	}
}

// TestRestoreToFailureSaysWhatIsLeft: a restore --to that fails once it
// has begun changing the file says the file holds neither its old content
// nor the image (here: the file is on a 16 KiB tmpfs, which fills up
// half-way through the 64 KiB image), and never that the source "was not
// touched". (RLIMIT_FSIZE did this once, but it also stops the test
// framework's own log once that outgrows the limit.)
func TestRestoreToFailureSaysWhatIsLeft(t *testing.T) {
	fx := newRestoreFixture(t, []int{1, 2}, []int{2, 5})
	small := t.TempDir()
	if err := unix.Mount("tmpfs", small, "tmpfs", 0, "size=16k"); err != nil {
		t.Fatalf("mount a 16 KiB tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(small, 0) })
	old := filepath.Join(small, "old.img")
	if err := os.WriteFile(old, []byte("old content"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := fx.run(t, nil, fx.dev, "--session", fx.ids[0], "--to", old, "--force")
	if code != exitFailure || !strings.Contains(errOut, old+" now holds neither what it held nor the restored image") ||
		!strings.Contains(errOut, fx.dev+" was only read") || strings.Contains(out+errOut, "not touched") {
		t.Errorf("a write that failed half-way: exit %d\n%s%s", code, out, errOut)
	}
}
