//go:build !vm

package dm

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const sampleMountinfo = `22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
40 22 8:17 / /mnt/my\040data rw,relatime shared:20 - ext4 /dev/sdb1 rw
41 22 8:17 /sub /srv/bind rw,relatime shared:20 - ext4 /dev/sdb1 rw
42 22 0:45 / /mnt/btr rw,relatime shared:21 master:3 - btrfs /dev/sdc rw,space_cache=v2
43 22 0:46 / /tmp rw shared:22 - tmpfs tmpfs rw,size=4096k
`

func TestParseMountInfo(t *testing.T) {
	entries, err := ParseMountInfo(strings.NewReader(sampleMountinfo))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 6 {
		t.Fatalf("got %d entries", len(entries))
	}
	want := MountEntry{Dev: Dev{Major: 8, Minor: 17}, Root: "/", MountPoint: "/mnt/my data", FSType: "ext4", Source: "/dev/sdb1"}
	if entries[2] != want {
		t.Errorf("entry 2 = %+v, want %+v", entries[2], want)
	}
	if e := entries[4]; e.FSType != "btrfs" || e.Source != "/dev/sdc" || e.Dev != (Dev{Major: 0, Minor: 45}) {
		t.Errorf("optional fields not skipped: %+v", e)
	}
}

func TestParseMountInfoMalformed(t *testing.T) {
	for _, in := range []string{
		"22 1 253:1 / / rw\n",                    // no separator
		"22 1 253:1 / / rw - ext4\n",             // no source
		"22 1 nodev / / rw - ext4 /dev/vda rw\n", // bad dev
	} {
		_, err := ParseMountInfo(strings.NewReader(sampleMountinfo + in))
		if err == nil || !strings.Contains(err.Error(), "line 7") {
			t.Errorf("%q: err = %v, want it to name line 7", in, err)
		}
	}
}

func TestMountsOf(t *testing.T) {
	entries, err := ParseMountInfo(strings.NewReader(sampleMountinfo))
	if err != nil {
		t.Fatal(err)
	}
	sources := map[string]Dev{"/dev/sdc": {Major: 8, Minor: 32}, "/dev/sdb1": {Major: 8, Minor: 17}, "/dev/vda": {Major: 253, Minor: 1}}
	resolve := func(p string) (Dev, bool) { d, ok := sources[p]; return d, ok }

	got := MountsOf(entries, Dev{Major: 8, Minor: 17}, resolve)
	if len(got) != 2 || got[0].MountPoint != "/mnt/my data" || got[1].MountPoint != "/srv/bind" {
		t.Errorf("sdb1 mounts = %+v", got)
	}
	// btrfs shows an anonymous device number; the source path gives it away.
	got = MountsOf(entries, Dev{Major: 8, Minor: 32}, resolve)
	if len(got) != 1 || got[0].MountPoint != "/mnt/btr" {
		t.Errorf("sdc mounts = %+v", got)
	}
	if got := MountsOf(entries, Dev{Major: 8, Minor: 48}, resolve); len(got) != 0 {
		t.Errorf("unmounted device has mounts %+v", got)
	}
	// A tmpfs, FUSE or overlay source is any string the mounter chose: one
	// naming the device does not mount it.
	fake, err := ParseMountInfo(strings.NewReader(`50 22 0:50 / /mnt/t rw - tmpfs /dev/sdb1 rw
51 22 0:51 / /mnt/f rw - fuse.sshfs /dev/sdb1 rw,user_id=1000
52 22 0:52 / /mnt/o rw - overlay /dev/sdb1 rw,lowerdir=/a,upperdir=/b,workdir=/c
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := MountsOf(fake, Dev{Major: 8, Minor: 17}, resolve); len(got) != 0 {
		t.Errorf("mounts whose source merely names sdb1 count as mounting it: %+v", got)
	}
}

// writeSysFile writes content to root/rel, making its directories: one
// file of a fake sysfs tree.
func writeSysFile(t *testing.T, root, rel, content string) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fakeSys builds the sysfs files loop and holder lookups read.
func fakeSys(t *testing.T) string {
	t.Helper()
	sys := t.TempDir()
	writeSysFile(t, sys, "block/dm-3/dm/name", "dmsnap-a-real\n")
	writeSysFile(t, sys, "dev/block/7:0/holders/dm-3/.keep", "")
	writeSysFile(t, sys, "block/loop0/dev", "7:0\n")
	writeSysFile(t, sys, "block/loop1/dev", "7:1\n") // unbound: no loop/ directory
	writeSysFile(t, sys, "block/loop2/dev", "7:2\n")
	return sys
}

func TestHolders(t *testing.T) {
	sys := fakeSys(t)
	got := holders(sys, Dev{Major: 7, Minor: 0})
	if len(got) != 1 || got[0] != "dm-3 (device-mapper dmsnap-a-real)" {
		t.Errorf("holders = %q", got)
	}
	if got := holders(sys, Dev{Major: 7, Minor: 9}); got != nil {
		t.Errorf("holders of an unknown device = %q", got)
	}
}

func TestBoundLoopsAndFind(t *testing.T) {
	sys := fakeSys(t)
	dir := t.TempDir()
	cow := filepath.Join(dir, "cow.img")
	other := filepath.Join(dir, "other.img")
	for _, p := range []string{cow, other} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	bind := func(n int, backing string, dio, autoclear string) {
		d := filepath.Join(sys, fmt.Sprintf("block/loop%d/loop", n))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, v := range map[string]string{"backing_file": backing + "\n", "dio": dio + "\n", "autoclear": autoclear + "\n"} {
			if err := os.WriteFile(filepath.Join(d, name), []byte(v), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	bind(0, other, "0", "0")
	// The kernel shows the path as it is now; find by inode even when we ask
	// by another name of the same file.
	bind(2, cow, "1", "1")
	loops, err := boundLoops(sys)
	if err != nil {
		t.Fatal(err)
	}
	if len(loops) != 2 {
		t.Fatalf("bound loops = %+v", loops)
	}
	link := filepath.Join(dir, "link.img")
	if err := os.Symlink(cow, link); err != nil {
		t.Fatal(err)
	}
	found, err := findLoops(sys, link)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 {
		t.Fatalf("found %+v", found)
	}
	l := found[0]
	if l.Path != "/dev/loop2" || l.Number != 2 || l.Dev != (Dev{Major: 7, Minor: 2}) || l.Backing != cow || !l.DirectIO || !l.AutoClear {
		t.Errorf("found %+v, want loop2 (7:2) over %s with dio and autoclear", *l, cow)
	}
	// A deleted backing file is no match.
	bind(0, other+" (deleted)", "0", "0")
	found, err = findLoops(sys, other)
	if err != nil || len(found) != 0 {
		t.Errorf("deleted backing matched: %+v %v", found, err)
	}
}

func TestLoopNumber(t *testing.T) {
	if n, err := loopNumber("/dev/loop12"); err != nil || n != 12 {
		t.Errorf("loopNumber = %d, %v", n, err)
	}
	for _, p := range []string{"/dev/sda", "/dev/loop", "/dev/loop-control", "/dev/loopx"} {
		if _, err := loopNumber(p); err == nil {
			t.Errorf("loopNumber(%q) accepted", p)
		}
	}
}

func TestLoopFlags(t *testing.T) {
	if got := loopFlags(LoopOptions{AutoClear: true, DirectIO: true}); got != 4|16 {
		t.Errorf("flags = %#x, want 0x14", got)
	}
	if got := loopFlags(LoopOptions{ReadOnly: true}); got != 1 {
		t.Errorf("flags = %#x, want 0x1", got)
	}
}

func TestEnsureNodeExisting(t *testing.T) {
	dir := t.TempDir()
	// /dev/null is char 1:3 everywhere; a symlink to it is an existing,
	// matching node (as udev's /dev/mapper/NAME -> ../dm-N is).
	link := filepath.Join(dir, "null")
	if err := os.Symlink("/dev/null", link); err != nil {
		t.Fatal(err)
	}
	if err := ensureNode(link, unix.S_IFCHR, Dev{Major: 1, Minor: 3}, false); err != nil {
		t.Errorf("matching node: %v", err)
	}
	err := ensureNode(link, unix.S_IFCHR, Dev{Major: 1, Minor: 5}, false)
	if err == nil || !strings.Contains(err.Error(), "is not device 1:5") {
		t.Errorf("mismatch without replace: err = %v", err)
	}
	if _, err := os.Lstat(link); err != nil {
		t.Errorf("mismatching node removed without replace: %v", err)
	}
}

func TestRemoveNode(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "dmsnap-a")
	if err := os.Symlink("../dm-0", p); err != nil { // dangling, like udev's after remove
		t.Fatal(err)
	}
	if err := removeNode(p); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(p); !os.IsNotExist(err) {
		t.Errorf("node still there: %v", err)
	}
	if err := removeNode(p); err != nil {
		t.Errorf("missing node: %v", err)
	}
	if err := removeNode(dir); err == nil {
		t.Error("removeNode removed a directory")
	}
}

// TestLoopBackingFromSysfs: where the loop device's node cannot be asked
// (here: none in the fake /dev), the backing file's numbers come from the
// path sysfs shows; a device that is no loop, or an unbound one, has none.
func TestLoopBackingFromSysfs(t *testing.T) {
	sys := fakeSys(t)
	file := filepath.Join(t.TempDir(), "dev.img")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	writeSysFile(t, sys, "dev/block/7:2/loop/backing_file", file+"\n")
	var want unix.Stat_t
	if err := unix.Stat(file, &want); err != nil {
		t.Fatal(err)
	}
	devd := t.TempDir()
	if d, i, ok, err := loopBacking(sys, devd, Dev{Major: 7, Minor: 2}); err != nil || !ok || d != want.Dev || i != want.Ino {
		t.Errorf("loop2: %d, %d, %v, %v; want %d, %d", d, i, ok, err, want.Dev, want.Ino)
	}
	for _, dev := range []Dev{{Major: 7, Minor: 1}, {Major: 8, Minor: 16}} {
		if _, _, ok, err := loopBacking(sys, devd, dev); ok || err != nil {
			t.Errorf("%s: ok %v, %v; want no backing file", dev, ok, err)
		}
	}
	writeSysFile(t, sys, "dev/block/7:2/loop/backing_file", file+".gone (deleted)\n")
	if _, _, ok, err := loopBacking(sys, devd, Dev{Major: 7, Minor: 2}); ok || err == nil {
		t.Errorf("a stale path: ok %v, %v; want an error", ok, err)
	}
}
