package treecopy

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// tree makes a small tree under root/data with every kind of entry and
// what describes it.
func tree(t *testing.T, root string) {
	t.Helper()
	d := filepath.Join(root, "data")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(d, "sub", "deeper"), 0o755))
	must(os.WriteFile(filepath.Join(d, "sub", "file"), bytes.Repeat([]byte("pre-image "), 1000), 0o640))
	must(os.WriteFile(filepath.Join(d, "setuid"), []byte("#!/bin/sh\n"), 0o755))
	must(unix.Chmod(filepath.Join(d, "setuid"), 0o4755))
	must(os.Link(filepath.Join(d, "sub", "file"), filepath.Join(d, "hardlink")))
	must(os.Symlink("/etc/passwd", filepath.Join(d, "abs-link")))
	must(os.Symlink("sub/file", filepath.Join(d, "rel-link")))
	must(unix.Mkfifo(filepath.Join(d, "fifo"), 0o620))
	must(unix.Mknod(filepath.Join(d, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(os.Lchown(filepath.Join(d, "sub", "file"), 1234, 5678))
	must(os.Lchown(filepath.Join(d, "abs-link"), 4321, 8765))
	must(os.Lchown(filepath.Join(d, "sub"), 1001, 1002))
	// trusted.*: root may set it on every filesystem the tests use (a
	// tmpfs before Linux 6.6 takes no user.* attribute).
	must(unix.Lsetxattr(filepath.Join(d, "sub", "file"), "trusted.dmsnap.test", []byte("kept"), 0))
	for i, p := range []string{"sub/file", "sub/deeper", "sub", "setuid", "fifo", "abs-link", "."} {
		ts := []unix.Timespec{{Sec: 1500000000 + int64(i), Nsec: 123456789}, {Sec: 1600000000 + int64(i), Nsec: 987654321}}
		must(unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(d, p), ts, unix.AT_SYMLINK_NOFOLLOW))
	}
	// A way out of the root, which must not be taken.
	must(os.Symlink("/", filepath.Join(root, "escape")))
}

func lstat(t *testing.T, p string) unix.Stat_t {
	t.Helper()
	var s unix.Stat_t
	if err := unix.Lstat(p, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// Every entry comes out as it was: type, content, owner, mode, times,
// link targets, hard links shared, nodes' numbers, extended attributes.
func TestCopyKeepsWhatDescribesEachFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test runs as root (chown, mknod), as make test does")
	}
	root := t.TempDir()
	tree(t, root)
	src, err := Resolve(root, "/data")
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "out")
	var st Stats
	if err := Copy(src, dst, &st); err != nil {
		t.Fatal(err)
	}
	if st.Files != 2 || st.Dirs != 3 || st.Symlinks != 2 || st.HardLinks != 1 || st.Nodes != 2 || st.Bytes != 10000+10 || len(st.Skipped) != 0 {
		t.Fatalf("stats %+v", st)
	}
	// Access times, before anything reads the copies (reading the source
	// tree, writable here, moved its own; a view is mounted read-only).
	for i, p := range []string{"sub/file", "sub/deeper", "sub", "setuid", "fifo", "abs-link"} {
		if got := lstat(t, filepath.Join(dst, p)).Atim; got != (unix.Timespec{Sec: 1500000000 + int64(i), Nsec: 123456789}) {
			t.Errorf("%s: atime %v, want the source's as it was set", p, got)
		}
	}
	err = filepath.Walk(src, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		q := filepath.Join(dst, rel)
		a, b := lstat(t, p), lstat(t, q)
		if a.Mode != b.Mode || a.Uid != b.Uid || a.Gid != b.Gid || a.Mtim != b.Mtim || a.Rdev != b.Rdev || a.Size != b.Size || a.Nlink != b.Nlink {
			t.Errorf("%s: copy mode %o uid %d gid %d mtime %v rdev %d size %d nlink %d; was %o %d %d %v %d %d %d",
				rel, b.Mode, b.Uid, b.Gid, b.Mtim, b.Rdev, b.Size, b.Nlink, a.Mode, a.Uid, a.Gid, a.Mtim, a.Rdev, a.Size, a.Nlink)
		}
		switch a.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			x, _ := os.ReadFile(p)
			y, _ := os.ReadFile(q)
			if !bytes.Equal(x, y) {
				t.Errorf("%s: content differs", rel)
			}
		case unix.S_IFLNK:
			x, _ := os.Readlink(p)
			y, _ := os.Readlink(q)
			if x != y {
				t.Errorf("%s: link to %q, was %q", rel, y, x)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if a, b := lstat(t, filepath.Join(dst, "hardlink")), lstat(t, filepath.Join(dst, "sub", "file")); a.Ino != b.Ino {
		t.Error("the hard link was copied as a second file")
	}
	buf := make([]byte, 16)
	n, err := unix.Lgetxattr(filepath.Join(dst, "sub", "file"), "trusted.dmsnap.test", buf)
	if err != nil || string(buf[:n]) != "kept" {
		t.Errorf("extended attribute: %q %v", buf[:max(n, 0)], err)
	}
	// Nothing is overwritten.
	if err := Copy(src, dst, &Stats{}); !errors.Is(err, os.ErrExist) {
		t.Fatalf("a second copy onto the first: %v, want it refused", err)
	}
}

// A path is resolved inside the root whatever its ".." and links: the
// way out stays in.
func TestResolveStaysInTheRoot(t *testing.T) {
	root := t.TempDir()
	tree(t, root)
	for _, c := range []struct{ rel, want string }{
		{"data/sub/file", "data/sub/file"},
		{"/data/../data/sub", "data/sub"},
		{"../../../data", "data"},
		{"escape/data/sub", "data/sub"},    // "/" through a link is the root
		{"data/rel-link", "data/rel-link"}, // the last link is not followed
	} {
		got, err := Resolve(root, c.rel)
		if err != nil || got != filepath.Join(root, c.want) {
			t.Errorf("Resolve(%q) = %q, %v; want %s", c.rel, got, err, filepath.Join(root, c.want))
		}
	}
	for _, rel := range []string{"escape/etc/passwd", "nothing"} {
		if got, err := Resolve(root, rel); err == nil {
			t.Errorf("Resolve(%q) = %q, want an error", rel, got)
		}
	}
	if !slices.Contains([]bool{inside(root, filepath.Join(root, "a"))}, true) || inside(root, filepath.Dir(root)) || inside(root, root+"x/y") {
		t.Error("inside is wrong")
	}
}
