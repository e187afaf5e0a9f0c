package restore

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeSystem is a TargetProbe over made-up files and loop devices.
type fakeSystem struct {
	files map[string]FileID
	loops map[uint64]fileKey // loop device rdev -> backing file
	errs  map[string]error
}

func (s fakeSystem) probe() TargetProbe {
	return TargetProbe{
		Stat: func(p string) (FileID, error) {
			if err := s.errs[p]; err != nil {
				return FileID{}, err
			}
			id, ok := s.files[p]
			if !ok {
				return FileID{}, &fs.PathError{Op: "stat", Path: p, Err: fs.ErrNotExist}
			}
			return id, nil
		},
		LoopBacking: func(rdev uint64) (uint64, uint64, bool, error) {
			k, ok := s.loops[rdev]
			return k.dev, k.ino, ok, nil
		},
	}
}

func TestCheckImageTarget(t *testing.T) {
	const (
		rootfs = 2049 // st_dev of the filesystem most files live on
		tmpfs  = 40
	)
	blk := func(rdev uint64) FileID {
		return FileID{Dev: 5, Ino: rdev + 1000, Rdev: rdev, Mode: fs.ModeDevice}
	}
	file := func(dev, ino uint64, size int64) FileID { return FileID{Dev: dev, Ino: ino, Size: size} }
	loop0, loop1, sdb1, sdc1 := unix.Mkdev(7, 0), unix.Mkdev(7, 1), unix.Mkdev(8, 17), unix.Mkdev(8, 33)
	sys := fakeSystem{
		files: map[string]FileID{
			"/img/dev.img":      file(rootfs, 10, 1<<20), // an image restored as a device
			"/img/hardlink.img": file(rootfs, 10, 1<<20), // the same inode
			"/img/other.img":    file(rootfs, 11, 4096),
			"/img/empty.img":    file(rootfs, 12, 0),
			"/img":              {Dev: rootfs, Ino: 2, Mode: fs.ModeDir},
			"/dev/loop0":        blk(loop0), // over /img/dev.img
			"/dev/loop1":        blk(loop1), // over /img/other.img
			"/dev/sdb1":         blk(sdb1),
			"/dev/block/8:17":   blk(sdb1), // another node of sdb1
			"/dev/sdc1":         blk(sdc1),
			"/mnt/sdb1":         {Dev: sdb1, Ino: 2, Mode: fs.ModeDir}, // a filesystem of sdb1
			"/mnt/sdb1/x.img":   file(sdb1, 12, 0),
			"/mnt/loop0":        {Dev: loop0, Ino: 2, Mode: fs.ModeDir}, // a filesystem in dev.img
			"/tmp":              {Dev: tmpfs, Ino: 2, Mode: fs.ModeDir},
			"/tmp/fifo":         {Dev: tmpfs, Ino: 3, Mode: fs.ModeNamedPipe},
		},
		loops: map[uint64]fileKey{loop0: {rootfs, 10}, loop1: {rootfs, 11}},
		errs:  map[string]error{"/denied/x": &fs.PathError{Op: "stat", Path: "/denied/x", Err: syscall.EACCES}},
	}
	for _, tc := range []struct {
		name    string
		dest    string
		sources []string
		force   bool
		kind    error // nil: accepted
		exists  bool
	}{
		{"the image itself", "/img/dev.img", []string{"/img/dev.img"}, true, ErrTargetIsSource, false},
		{"a hard link of the image", "/img/hardlink.img", []string{"/img/dev.img"}, true, ErrTargetIsSource, false},
		{"the device itself", "/dev/sdb1", []string{"/dev/sdb1"}, true, ErrTargetIsSource, false},
		{"another node of the device", "/dev/block/8:17", []string{"/dev/sdb1"}, true, ErrTargetIsSource, false},
		{"the file behind a source loop device", "/img/dev.img", []string{"/dev/loop0"}, true, ErrTargetIsSource, false},
		{"a loop device over the source image", "/dev/loop0", []string{"/img/dev.img"}, true, ErrTargetIsSource, false},
		{"a file on a filesystem of the source", "/mnt/sdb1/x.img", []string{"/dev/sdb1"}, true, ErrTargetIsSource, false},
		{"a new file on a filesystem of the source", "/mnt/sdb1/new.img", []string{"/dev/sdb1"}, true, ErrTargetIsSource, false},
		{"a new file in the source image's filesystem", "/mnt/loop0/new.img", []string{"/img/dev.img"}, true, ErrTargetIsSource, false},
		{"the raw device, second source", "/dev/sdb1", []string{"/dev/mapper/x", "/dev/sdb1"}, true, ErrTargetIsSource, false},
		{"a file that is not empty", "/img/other.img", []string{"/img/dev.img"}, false, ErrTargetInUse, false},
		{"a file that is not empty, --force", "/img/other.img", []string{"/img/dev.img"}, true, nil, true},
		{"an empty file", "/img/empty.img", []string{"/img/dev.img"}, false, nil, true},
		{"a new file", "/img/new.img", []string{"/img/dev.img"}, false, nil, false},
		{"another block device", "/dev/sdc1", []string{"/dev/sdb1"}, false, ErrTargetInUse, false},
		{"another block device, --force", "/dev/sdc1", []string{"/dev/sdb1"}, true, nil, true},
		{"a loop device over another file, --force", "/dev/loop1", []string{"/img/dev.img"}, true, nil, true},
		{"a named pipe", "/tmp/fifo", []string{"/img/dev.img"}, true, ErrTargetKind, false},
		{"a directory", "/tmp", []string{"/img/dev.img"}, true, ErrTargetKind, false},
	} {
		got, err := CheckImageTarget(tc.dest, tc.sources, tc.force, sys.probe())
		if tc.kind == nil {
			if err != nil || got.Exists != tc.exists || got.Path != tc.dest {
				t.Errorf("%s: %+v, %v; want accepted, exists %v", tc.name, got, err, tc.exists)
			}
			continue
		}
		var te *TargetError
		if !errors.As(err, &te) || !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.dest) || !strings.Contains(err.Error(), "nothing was written") {
			t.Errorf("%s: %v; want %v", tc.name, err, tc.kind)
			continue
		}
		if tc.kind == ErrTargetIsSource && !strings.Contains(err.Error(), tc.sources[len(tc.sources)-1]) {
			t.Errorf("%s: %v does not name the source", tc.name, err)
		}
	}
	// A source that does not exist has nothing to lose; one that cannot
	// be looked at stops the check.
	if _, err := CheckImageTarget("/img/new.img", []string{"/img/gone.img", "/img/dev.img"}, false, sys.probe()); err != nil {
		t.Errorf("a missing source: %v", err)
	}
	if _, err := CheckImageTarget("/img/new.img", []string{"/denied/x"}, false, sys.probe()); !errors.Is(err, syscall.EACCES) {
		t.Errorf("a source that cannot be stat'ed: %v", err)
	}
}

// TestOpenImageTarget: the checked destination is opened without being
// truncated; one created meanwhile, replaced meanwhile, or written to
// meanwhile (without force) is refused; Discard removes only a file that
// OpenImageTarget created.
func TestOpenImageTarget(t *testing.T) {
	dir := t.TempDir()
	probe := TargetProbe{Stat: StatPath}
	src := filepath.Join(dir, "dev.img")
	if err := os.WriteFile(src, []byte("source"), 0o644); err != nil {
		t.Fatal(err)
	}
	existing := filepath.Join(dir, "old.img")
	if err := os.WriteFile(existing, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	tgt, err := CheckImageTarget(existing, []string{src}, true, probe)
	if err != nil {
		t.Fatal(err)
	}
	f, err := OpenImageTarget(tgt)
	if err != nil {
		t.Fatal(err)
	}
	if err := tgt.Discard(f); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(existing); err != nil || string(b) != "keep me" {
		t.Errorf("opening and discarding an existing file: %q, %v", b, err)
	}

	// Replaced by a symbolic link to the source after the check.
	if err := os.Remove(existing); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(src, existing); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenImageTarget(tgt); !errors.Is(err, ErrTargetChanged) {
		t.Errorf("replaced by a link to the source: %v", err)
	}

	// Created meanwhile (a link to the source, say): O_EXCL refuses it.
	fresh := filepath.Join(dir, "new.img")
	tgt, err = CheckImageTarget(fresh, []string{src}, false, probe)
	if err != nil || tgt.Exists {
		t.Fatalf("%+v, %v", tgt, err)
	}
	if err := os.Symlink(src, fresh); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenImageTarget(tgt); !errors.Is(err, ErrTargetChanged) {
		t.Errorf("a link put where the new file goes: %v", err)
	}
	os.Remove(fresh)
	f, err = OpenImageTarget(tgt)
	if err != nil {
		t.Fatal(err)
	}
	if err := tgt.Discard(f); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(fresh); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Discard left the file it created: %v", err)
	}

	// Empty when checked, written to before the open, no force.
	empty := filepath.Join(dir, "empty.img")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tgt, err = CheckImageTarget(empty, []string{src}, false, probe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(empty, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenImageTarget(tgt); !errors.Is(err, ErrTargetInUse) {
		t.Errorf("written to since the check: %v", err)
	}
	if b, _ := os.ReadFile(empty); string(b) != "data" {
		t.Errorf("the refused file now holds %q", b)
	}
}
