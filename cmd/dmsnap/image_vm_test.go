//go:build vm

package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/vmtest"
)

// imageStatus is what status --json says of an image file.
type imageStatus struct {
	Devices []struct {
		Name  string `json:"name"`
		Path  string `json:"path"`
		Stack *struct {
			Complete bool `json:"complete"`
		} `json:"stack"`
		Image *struct {
			File   string `json:"file"`
			Loop   string `json:"loop"`
			Bypass string `json:"bypass"`
		} `json:"image"`
		Sessions []struct {
			N        int    `json:"n"`
			Dir      string `json:"dir"`
			State    string `json:"state"`
			Snapshot *struct {
				CowUsed uint64 `json:"cow_used_bytes"`
			} `json:"snapshot"`
		} `json:"sessions"`
		Issues []string `json:"issues"`
	} `json:"devices"`
}

func (c *cli) imageStatus(t *testing.T) imageStatus {
	t.Helper()
	var st imageStatus
	out := c.ok(t, "status", "--json")
	if err := decodeResult(out, &st); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return st
}

// loopsOf lists the loop devices bound to file.
func loopsOf(t *testing.T, file string) []string {
	t.Helper()
	ls, err := dm.LoopsOf(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range ls {
		out = append(out, l.Path)
	}
	return out
}

// fileHash is the SHA-256 of a file as on disk (the loop device under an
// image writes it with direct I/O).
func fileHash(t *testing.T, path string) string {
	t.Helper()
	dropCaches(t)
	return hash(t, path)
}

// TestImageFileWalkthrough is the seed's walk-through with an image file:
// activate the file's path, mount the origin, write, unmount, list and
// restore by path; the file is back to its pre-mount SHA-256. After a
// "reboot" (stack and loop device gone) the watcher's start re-attaches it
// with its armed session's pre-images; a file put in its place (same size,
// same bytes, a new inode) is refused; a loop device someone else bound to
// it is refused by activate and by a restore of the file; and a file that
// is not activated any more is restored directly, as the seed's tool did.
func TestImageFileWalkthrough(t *testing.T) {
	c := newCLI(t)
	// The image on the store's ext4, as /var/lib/images and /snapshot on
	// one root filesystem would be.
	dir := filepath.Join(filepath.Dir(c.store), "images")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	img := vmtest.TempFile(t, dir, "image.img", 48<<20)
	vmtest.Run(t, "mkfs.ext4", "-q", "-F", img)
	const name = "image.img"
	origin := "/dev/mapper/dmsnap-" + name
	mnt := t.TempDir()

	// mount -o loop of the file would bypass dmsnap: refused while bound.
	theirs, err := dm.AttachLoop(img, dm.LoopOptions{})
	if err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	code, out, errOut := c.try(t, "", "activate", img)
	if code != exitBusy || !strings.Contains(errOut, theirs.Path) || !strings.Contains(errOut, "losetup -d") {
		t.Fatalf("activate of an image on %s: exit %d, %s%s (want %d naming it)", theirs.Path, code, out, errOut, exitBusy)
	}
	if left := dmsnapDevices(t); len(left) != 0 {
		t.Fatalf("a refused activate left %v", left)
	}
	if err := dm.DetachLoop(theirs.Path); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the test's loop device to go", 10*time.Second, func() bool { return len(loopsOf(t, img)) == 0 })

	pre := fileHash(t, img)
	code, out, errOut = c.try(t, "", "activate", img, "--prealloc", c.prealloc, "--json")
	if code != 0 {
		t.Fatalf("activate %s: exit %d\n%s%s", img, code, out, errOut)
	}
	t.Cleanup(func() {
		exec.Command("umount", origin).Run()
		if active, _ := (dm.Stack{Name: name}).Active(); active {
			if code, out, errOut := c.try(t, "", "deactivate", name); code != 0 {
				t.Errorf("cleanup: deactivate: exit %d: %s%s", code, out, errOut)
				(dm.Stack{Name: name}).Teardown()
			}
		}
	})
	var act activated
	if err := decodeResult(out, &act); err != nil || act.Name != name || act.Path != img || !act.Image || act.Mount != origin {
		t.Fatalf("activate: %+v, %v\n%s", act, err, out)
	}
	if !strings.Contains(errOut, "bypasses the snapshot") {
		t.Fatalf("activate of a file did not warn what a file cannot prevent: %q", errOut)
	}
	st := c.imageStatus(t)
	if len(st.Devices) != 1 || st.Devices[0].Image == nil || st.Devices[0].Image.File != img ||
		!strings.HasPrefix(st.Devices[0].Image.Loop, "/dev/loop") || st.Devices[0].Image.Bypass == "" {
		t.Fatalf("status: %+v", st)
	}
	loop := st.Devices[0].Image.Loop
	if got := loopsOf(t, img); len(got) != 1 || got[0] != loop {
		t.Fatalf("loop devices over the image %v, want the one status names, %s", got, loop)
	}
	if text := c.ok(t, "status", img); !strings.Contains(text, "image:    file "+img) || !strings.Contains(text, "note:") {
		t.Fatalf("status %s:\n%s", img, text)
	}

	// The walk-through: mount, write, unmount; the session is the image's.
	w := c.watch(t)
	mountWriteUnmount(t, origin, mnt, 1)
	var first string
	for deadline := time.Now().Add(60 * time.Second); first == ""; time.Sleep(200 * time.Millisecond) {
		ss := c.list(t, img)
		if n := countStates(ss); n["closed"] == 1 && n["armed"] == 1 && len(ss) == 2 && ss[0].State == "closed" {
			first = ss[0].ID
		} else if time.Now().After(deadline) {
			t.Fatalf("sessions list %s: %+v, want one closed session and the armed one", img, ss)
		}
	}
	if !strings.HasPrefix(first, name+"_") {
		t.Fatalf("session %s, want %s_<unix seconds>", first, name)
	}
	if fileHash(t, img) == pre {
		t.Fatal("the writes did not reach the image file")
	}
	c.ok(t, "restore", img, "--session", first, "--yes")
	if h := fileHash(t, img); h != pre {
		t.Fatalf("image after restore by path: sha256 %s, before the mount %s", h, pre)
	}
	w.stop(t)

	// Pre-images in the armed session, then a "reboot".
	armed := c.imageStatus(t).Devices[0].Sessions[0]
	vmtest.Sh(t, "dd if=/dev/urandom of="+origin+" bs=4k seek=300 count=1000 conv=fsync 2>/dev/null")
	before := c.imageStatus(t).Devices[0].Sessions[0]
	if before.N != armed.N || before.Snapshot == nil || before.Snapshot.CowUsed < 1000*4096 {
		t.Fatalf("armed session after the writes: %+v %+v (was %+v %+v), want the 1000 chunks written", before, before.Snapshot, armed, armed.Snapshot)
	}
	if err := (dm.Stack{Name: name}).Teardown(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "dmsnap's loop device to go with the stack", 10*time.Second, func() bool { return len(loopsOf(t, img)) == 0 })
	// The boot path: dmsnap watch starts and reconciles.
	w = c.watch(t)
	after := c.imageStatus(t).Devices[0]
	if after.Stack == nil || !after.Stack.Complete || len(after.Sessions) != 1 || after.Sessions[0].Dir != before.Dir ||
		after.Sessions[0].Snapshot == nil || after.Sessions[0].Snapshot.CowUsed != before.Snapshot.CowUsed {
		t.Fatalf("after the watcher's start: %+v (before the reboot: %+v)\n%s", after, before, w.log.String())
	}
	w.stop(t)
	// Its pre-images are intact: restoring to before the first session
	// again, which closes the re-attached one and takes its pre-images
	// (most of the 1000 chunks written are in no other session), gives
	// the pre-mount file.
	c.ok(t, "restore", img, "--session", first, "--yes")
	if h := fileHash(t, img); h != pre {
		t.Fatalf("after restoring the re-attached session: sha256 %s, want %s", h, pre)
	}

	// A file put in its place: same name, size and bytes, another inode.
	if err := (dm.Stack{Name: name}).Teardown(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "dmsnap's loop device to go with the stack", 10*time.Second, func() bool { return len(loopsOf(t, img)) == 0 })
	vmtest.Sh(t, "cp "+img+" "+img+".new && mv "+img+".new "+img)
	code, out, errOut = c.try(t, "", "attach", img)
	if code == 0 || !strings.Contains(errOut, "inode") || !strings.Contains(errOut, "not the device activated") {
		t.Fatalf("attach of a replaced image: exit %d\n%s%s", code, out, errOut)
	}
	if left := dmsnapDevices(t); len(left) != 0 || len(loopsOf(t, img)) != 0 {
		t.Fatalf("a refused attach left %v, loops %v", left, loopsOf(t, img))
	}
	if is := c.imageStatus(t).Devices[0].Issues; len(is) == 0 || !strings.Contains(strings.Join(is, " "), "inode") {
		t.Fatalf("status issues %v, want the replaced file reported", is)
	}
	// By name: the file at the path is not the one activated.
	c.ok(t, "deactivate", name)

	// Not activated any more: restored directly, as the seed's tool did —
	// but not while a loop device has it.
	theirs, err = dm.AttachLoop(img, dm.LoopOptions{})
	if err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	now := fileHash(t, img)
	code, out, errOut = c.try(t, "", "restore", img, "--session", first, "--yes")
	if code != exitBusy || !strings.Contains(errOut, theirs.Path) {
		t.Fatalf("restore of an image on %s: exit %d\n%s%s", theirs.Path, code, out, errOut)
	}
	if err := dm.DetachLoop(theirs.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if h := fileHash(t, img); h != now {
		t.Fatal("a refused restore changed the image")
	}
	eventually(t, "the test's loop device to go", 10*time.Second, func() bool { return len(loopsOf(t, img)) == 0 })
	vmtest.Sh(t, "dd if=/dev/urandom of="+img+" bs=4k seek=500 count=100 conv=notrunc,fsync 2>/dev/null")
	c.ok(t, "restore", img, "--session", first, "--yes")
	if h := fileHash(t, img); h != pre {
		t.Fatalf("image restored directly: sha256 %s, before the first mount %s", h, pre)
	}
}
