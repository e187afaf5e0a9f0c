//go:build vm

package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/internal/vmtest"
)

// fileFacts is what a file-level restore must bring back of one entry.
type fileFacts struct {
	mode, uid, gid uint32
	mtime          unix.Timespec
	sum, link      string
	xattr          string
}

func factsOf(t *testing.T, p string) fileFacts {
	t.Helper()
	var s unix.Stat_t
	if err := unix.Lstat(p, &s); err != nil {
		t.Fatal(err)
	}
	f := fileFacts{mode: s.Mode, uid: s.Uid, gid: s.Gid, mtime: s.Mtim}
	switch s.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(b)
		f.sum = hex.EncodeToString(h[:])
		buf := make([]byte, 64)
		if n, err := unix.Lgetxattr(p, "user.note", buf); err == nil {
			f.xattr = string(buf[:n])
		}
	case unix.S_IFLNK:
		f.link, _ = os.Readlink(p)
	}
	return f
}

// TestRestoreFiles: files deleted and changed in a session come back, out
// of the view of the state before it, with their SHA-256, modes, owners,
// times and extended attributes, into another directory; the device is
// not touched; a view the user mounted is used where it is and left so;
// nothing is overwritten.
func TestRestoreFiles(t *testing.T) {
	c := newCLI(t)
	raw := rawDevice(t, 64<<20)
	const name = "fr"
	origin := "/dev/mapper/dmsnap-" + name
	c.activate(t, raw, name)
	w := c.watch(t)
	mnt := t.TempDir()

	// Session 1 makes the files.
	vmtest.Run(t, "mount", origin, mnt)
	vmtest.Sh(t, "mkdir -p "+mnt+"/home/ann/docs && cd "+mnt+"/home/ann && "+
		"dd if=/dev/urandom of=docs/report bs=64k count=20 2>/dev/null && echo hello > docs/note && "+
		"ln -s docs/note latest && ln docs/note docs/note.hard && mkfifo docs/pipe && "+
		"chown -R 1000:1000 . && chown 1001:1002 docs/report && chmod 0640 docs/report && chmod 4711 docs/note")
	if err := unix.Lsetxattr(filepath.Join(mnt, "home/ann/docs/report"), "user.note", []byte("quarterly"), 0); err != nil {
		t.Fatalf("setting an extended attribute on ext4: %v", err)
	}
	for i, p := range []string{"home/ann/latest", "home/ann/docs/report", "home/ann/docs/pipe", "home/ann/docs"} {
		ts := []unix.Timespec{{Sec: 1600000000 + int64(i)}, {Sec: 1610000000 + int64(i), Nsec: 5000}}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(mnt, p), ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
	vmtest.Run(t, "sync")
	want := map[string]fileFacts{}
	for _, p := range []string{"home/ann/docs", "home/ann/docs/report", "home/ann/docs/note", "home/ann/docs/note.hard", "home/ann/docs/pipe", "home/ann/latest"} {
		want[p] = factsOf(t, filepath.Join(mnt, p))
	}
	vmtest.Run(t, "umount", mnt)
	eventually(t, "session 1 to close", 60*time.Second, func() bool { return countStates(c.list(t, name))["closed"] == 1 })

	// Session 2 loses them.
	vmtest.Run(t, "mount", origin, mnt)
	vmtest.Sh(t, "rm -rf "+mnt+"/home/ann/docs && echo changed > "+mnt+"/home/ann/new && rm "+mnt+"/home/ann/latest && sync")
	vmtest.Run(t, "umount", mnt)
	var s2 string
	eventually(t, "session 2 to close", 60*time.Second, func() bool {
		ss := c.list(t, name)
		if countStates(ss)["closed"] == 2 {
			s2 = ss[1].ID
			return true
		}
		return false
	})
	w.stop(t)
	before := hash(t, raw)

	// Into the store's ext4, which takes user extended attributes (the
	// guest's tmpfs does not: that case is below).
	out := filepath.Join(filepath.Dir(c.store), "rescued")
	var res struct {
		Session string `json:"session"`
		Files   int    `json:"files"`
		Dirs    int    `json:"dirs"`
		Links   int    `json:"symlinks"`
		Hard    int    `json:"hard_links"`
		Nodes   int    `json:"nodes"`
	}
	if err := decodeResult(c.ok(t, "restore", "--session", s2, "--file", "/home/ann/docs", "--file", "home/ann/latest", "--to", out, "--json"), &res); err != nil {
		t.Fatal(err)
	}
	if res.Session != s2 || res.Files != 2 || res.Dirs != 1 || res.Links != 1 || res.Hard != 1 || res.Nodes != 1 {
		t.Fatalf("result %+v", res)
	}
	for p, f := range want {
		if got := factsOf(t, filepath.Join(out, p)); got != f {
			t.Errorf("%s restored: %+v, was %+v", p, got, f)
		}
	}
	if h := hash(t, raw); h != before {
		t.Fatal("a file-level restore changed the device")
	}
	if left := c.status(t); len(left.Devices) != 1 {
		t.Fatalf("status: %+v", left)
	}
	if vs := c.ok(t, "status"); strings.Contains(vs, "view:") {
		t.Fatalf("the view opened for the copy is still there:\n%s", vs)
	}
	// Nothing is overwritten.
	code, o, errOut := c.try(t, "", "restore", "--session", s2, "--file", "/home/ann/docs/note", "--to", out)
	if code == 0 || !strings.Contains(errOut, "overwrites nothing") {
		t.Fatalf("restore onto an existing file: exit %d\n%s%s", code, o, errOut)
	}
	// A view mounted by the user is used where it is, and stays. The copy
	// goes to a tmpfs, which takes no user extended attribute on this
	// kernel: the file is restored, and the lost attribute said.
	view := t.TempDir()
	c.ok(t, "sessions", "mount", s2, view)
	out2 := t.TempDir()
	code, o, errOut = c.try(t, "", "restore", "--session", s2, "--file", "/home/ann/docs/report", "--to", out2)
	if code != 0 || !strings.Contains(errOut, "extended attribute user.note on "+filepath.Join(out2, "home/ann/docs/report")+" not kept") {
		t.Fatalf("restore to a tmpfs: exit %d\n%s%s", code, o, errOut)
	}
	wantTmpfs := want["home/ann/docs/report"]
	wantTmpfs.xattr = ""
	if got := factsOf(t, filepath.Join(out2, "home/ann/docs/report")); got != wantTmpfs {
		t.Errorf("report restored through the mounted view: %+v", got)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); !bytes.Contains(b, []byte(" "+view+" ")) {
		t.Fatal("the user's view mount is gone")
	}
	c.ok(t, "sessions", "close", s2)
}
