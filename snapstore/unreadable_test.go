//go:build !vm

package snapstore

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/dmsnap/dmsnap/internal/fdexhaust"
)

func TestClassifyReadError(t *testing.T) {
	path := "/store/sdb1_1700000000/blocks.dat"
	pe := func(errno syscall.Errno) error { return &fs.PathError{Op: "open", Path: path, Err: errno} }
	fe := formatErr(path, 0, 1, ErrChecksum, "bad")
	plain := errors.New("not the OS's")
	for _, tc := range []struct {
		name   string
		err    error
		damage bool // a *FormatError naming path
		cannot bool // wraps ErrCannotVerify and the OS's error
	}{
		{"missing", pe(syscall.ENOENT), true, false},
		{"a directory", pe(syscall.EISDIR), true, false},
		{"a path through a file", pe(syscall.ENOTDIR), true, false},
		{"a symlink loop", pe(syscall.ELOOP), true, false},
		{"permission denied", pe(syscall.EACCES), false, true},
		{"too many open files", pe(syscall.EMFILE), false, true},
		{"I/O error, wrapped", errors.Join(errors.New("record 5"), pe(syscall.EIO)), false, true},
	} {
		got := ClassifyReadError(tc.err)
		var gfe *FormatError
		if isFE := errors.As(got, &gfe); isFE != tc.damage || (isFE && gfe.File != path) {
			t.Errorf("%s: %v, damage %v; want damage %v naming %s", tc.name, got, isFE, tc.damage, path)
		}
		if errors.Is(got, ErrCannotVerify) != tc.cannot {
			t.Errorf("%s: %v: cannot verify %v, want %v", tc.name, got, !tc.cannot, tc.cannot)
		}
		var errno syscall.Errno
		errors.As(tc.err, &errno)
		if !strings.Contains(got.Error(), path) || !strings.Contains(got.Error(), errno.Error()) || (tc.cannot && !errors.Is(got, errno)) {
			t.Errorf("%s: %v lost the file or the OS's error", tc.name, got)
		}
	}
	for _, err := range []error{nil, fe, plain, context.Canceled} {
		if got := ClassifyReadError(err); got != err {
			t.Errorf("%v became %v", err, got)
		}
	}
	once := ClassifyReadError(pe(syscall.EIO))
	if twice := ClassifyReadError(once); twice != once {
		t.Errorf("classified twice: %v", twice)
	}
}

// TestUnreadableIsNotDamage: when the OS would not read a session's files
// (here: every file descriptor in use, EMFILE, which stops root as much as
// anyone), listing reports the session unreadable and Verify "cannot
// verify", never damaged; they used to call it damaged. A missing
// blocks.dat, or a meta.json that is a directory, is damage.
func TestUnreadableIsNotDamage(t *testing.T) {
	store := t.TempDir()
	dir := goodSessionIn(t, store, 7)
	ctx := context.Background()
	var info SessionInfo
	var verr error
	var res VerifyResult
	fdexhaust.Run(t, func() {
		info = Inspect(dir)
		res, verr = Verify(ctx, dir)
	})
	if info.Status != StatusUnreadable || !errors.Is(info.Err, ErrCannotVerify) || !errors.Is(info.Err, syscall.EMFILE) {
		t.Errorf("Inspect with no descriptor free: %s, %v; want %s, cannot verify: too many open files", info.Status, info.Err, StatusUnreadable)
	}
	var ve *VerifyError
	if errors.As(verr, &ve) || !errors.Is(verr, ErrCannotVerify) || !errors.Is(verr, syscall.EMFILE) || len(res.Problems) != 0 {
		t.Errorf("Verify with no descriptor free: %v (%d problems); want cannot verify, no damage", verr, len(res.Problems))
	}

	// One descriptor free: meta.json is read, blocks.dat opened (and held),
	// and the next file fails half-way through Verify.
	fdexhaust.RunWithFree(t, 1, func() { res, verr = Verify(ctx, dir) })
	if errors.As(verr, &ve) || !errors.Is(verr, ErrCannotVerify) || !strings.Contains(verr.Error(), MapFile) || len(res.Problems) != 0 {
		t.Errorf("Verify stopped half-way: %v (%d problems); want cannot verify naming %s", verr, len(res.Problems), MapFile)
	}
	if _, err := Verify(ctx, dir); err != nil {
		t.Fatalf("Verify with descriptors to spare: %v", err)
	}

	// Damage: a file missing, or a directory where a file belongs.
	if err := os.Rename(filepath.Join(dir, DataFile), filepath.Join(dir, "moved")); err != nil {
		t.Fatal(err)
	}
	probs := verifyProblems(t, dir)
	if len(probs) != 1 || filepath.Base(probs[0].File) != DataFile || !strings.Contains(probs[0].Msg, "missing") {
		t.Errorf("blocks.dat missing: problems %v", probs)
	}
	if err := os.Remove(filepath.Join(dir, MetaFile)); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, MetaFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if info := Inspect(dir); info.Status != StatusDamaged || errors.Is(info.Err, ErrCannotVerify) {
		t.Errorf("meta.json a directory: %s, %v; want damaged", info.Status, info.Err)
	}
	if probs := verifyProblems(t, dir); len(probs) != 1 || filepath.Base(probs[0].File) != MetaFile {
		t.Errorf("meta.json a directory: problems %v", probs)
	}
}
