//go:build vm

package main

// VM tests of the trust fixes: a device is attached only when it is the one
// activated, and nothing of another state directory's live sessions is
// touched.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/filemap"
	"github.com/dmsnap/dmsnap/internal/vmtest"
)

// randomFile makes a file of size bytes of random data, no filesystem.
func randomFile(t *testing.T, dir, name string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, name)
	vmtest.Sh(t, "dd if=/dev/urandom of="+p+" bs=1M count="+strconv.FormatInt(size>>20, 10)+" 2>/dev/null")
	return p
}

// TestCLIAttachRefusesOtherBacking: after a "reboot", the loop device the
// device was activated on comes back bound to another file of the same
// size, with no filesystem on either: attach refuses, writing nothing to
// either file; bound to the right file again, it attaches, and the armed
// session kept its pre-images.
func TestCLIAttachRefusesOtherBacking(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	a := randomFile(t, dir, "a.img", 32<<20)
	b := randomFile(t, dir, "b.img", 32<<20)
	l, err := dm.AttachLoop(a, dm.LoopOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	node := l.Path
	t.Cleanup(func() { dm.DetachLoop(node) })
	c.activate(t, node, "id")
	vmtest.Sh(t, "dd if=/dev/urandom of=/dev/mapper/dmsnap-id bs=4k seek=10 count=100 conv=fsync 2>/dev/null")
	used := c.status(t).Devices[0].Sessions[0].Snapshot.CowUsed

	// "Reboot": the tables go; the node comes back over b.img.
	if err := (dm.Stack{Name: "id"}).Teardown(); err != nil {
		t.Fatal(err)
	}
	vmtest.Run(t, "losetup", "-d", node)
	vmtest.Run(t, "losetup", node, b)
	hashA, hashB := hash(t, a), hash(t, b)
	code, out, errOut := c.try(t, "", "attach", node)
	if code != 1 || !strings.Contains(errOut, "b.img") || !strings.Contains(errOut, "a.img") || !strings.Contains(errOut, "--force-identity") {
		t.Fatalf("attach of the same node over another file: exit %d\n%s%s\nwant exit 1 naming both files and --force-identity", code, out, errOut)
	}
	if left := dmsnapDevices(t); len(left) != 0 {
		t.Fatalf("a refused attach left devices: %v", left)
	}
	if hash(t, a) != hashA || hash(t, b) != hashB {
		t.Fatal("a refused attach wrote to a device")
	}
	// The watcher does not stack it either.
	w := c.watch(t)
	time.Sleep(2 * time.Second)
	w.stop(t)
	if left := dmsnapDevices(t); len(left) != 0 {
		t.Fatalf("the watcher stacked another device: %v", left)
	}
	if !strings.Contains(w.log.String(), "not the one activated") {
		t.Fatalf("the watcher did not say why:\n%s", w.log.String())
	}

	vmtest.Run(t, "losetup", "-d", node)
	vmtest.Run(t, "losetup", node, a)
	c.ok(t, "attach", node)
	s := c.status(t).Devices[0].Sessions[0]
	if s.Snapshot == nil || s.Snapshot.State != "active" || s.Snapshot.CowUsed != used {
		t.Fatalf("after attaching the right device: %+v, want the armed session with %d bytes of COW in use", s, used)
	}
}

// TestCLIOtherStateLeavesLiveSessionAlone: a watcher started with another
// --state finds a live stack and session directory it does not own. It must
// neither tear the stack down nor convert the directory while the kernel
// writes its COW; the session stays whole.
func TestCLIOtherStateLeavesLiveSessionAlone(t *testing.T) {
	c := newCLI(t)
	raw := rawDevice(t, 32<<20)
	c.activate(t, raw, "own")
	vmtest.Sh(t, "dd if=/dev/urandom of=/dev/mapper/dmsnap-own bs=4k seek=100 count=3000 conv=fsync 2>/dev/null")
	live := c.status(t).Devices[0].Sessions[0]
	other := &cli{state: filepath.Join(t.TempDir(), "other-state"), store: c.store}
	w := other.watch(t)
	time.Sleep(3 * time.Second)
	vmtest.Sh(t, "dd if=/dev/urandom of=/dev/mapper/dmsnap-own bs=4k seek=4000 count=100 conv=fsync 2>/dev/null")
	w.stop(t)
	log := w.log.String()
	if !strings.Contains(log, "live session but is not in this state directory") {
		t.Fatalf("the other watcher did not report the stack it does not own:\n%s", log)
	}
	if _, err := os.Stat(filepath.Join(live.Dir, "cow.img")); err != nil {
		t.Fatalf("the live session's cow.img: %v\n%s", err, log)
	}
	if _, err := os.Stat(filepath.Join(live.Dir, "meta.json")); err == nil {
		t.Fatalf("the other watcher converted a live session\n%s", log)
	}
	st := c.status(t)
	if s := st.Devices[0].Sessions[0]; s.N != live.N || s.Snapshot == nil || s.Snapshot.State != "active" {
		t.Fatalf("after the other watcher: %+v", st)
	}
	c.ok(t, "deactivate", "own")
	ss := c.list(t, "own")
	if len(ss) != 1 || ss[0].State != "closed" || ss[0].Blocks != 3100 {
		t.Fatalf("sessions %+v, want one closed of 3100 chunks", ss)
	}
	c.ok(t, "sessions", "verify", ss[0].ID)
}

// TestCLICowPinnedAgainstDedupe: a dedupe pass and a defragmenter run over
// the store while a session is open (the hidden check of the COW-path
// issue): the live cow.img's extents do not change, and the session
// restores the device byte for byte.
func TestCLICowPinnedAgainstDedupe(t *testing.T) {
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) {
			vmtest.RequireDM(t)
			base := t.TempDir()
			c := &cli{state: filepath.Join(base, "state"), store: filepath.Join(vmtest.StoreFS(t, base, fs, 2<<30), "store"), prealloc: "16MiB"}
			raw := rawDevice(t, 64<<20)
			c.activate(t, raw, "pin")
			w := c.watch(t)
			origin := "/dev/mapper/dmsnap-pin"
			mnt := t.TempDir()
			before := hash(t, origin)
			vmtest.Run(t, "mount", origin, mnt)
			vmtest.Sh(t, "dd if=/dev/urandom of="+mnt+"/a bs=1M count=8 conv=fsync 2>/dev/null")
			live := c.status(t).Devices[0].Sessions[0]
			cow := filepath.Join(live.Dir, "cow.img")
			// Where each byte of cow.img lies on the store's device: the
			// kernel's extents merged where they are contiguous, without
			// their flags (the watcher's growth turns preallocated parts
			// into written ones meanwhile, in place).
			extents := func() string {
				f, err := os.Open(cow)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				es, err := filemap.Extents(f)
				if err != nil {
					t.Fatal(err)
				}
				var out []filemap.Extent
				for _, e := range es {
					if n := len(out); n > 0 && out[n-1].Logical+out[n-1].Length == e.Logical && out[n-1].Physical+out[n-1].Length == e.Physical {
						out[n-1].Length += e.Length
						continue
					}
					out = append(out, filemap.Extent{Logical: e.Logical, Physical: e.Physical, Length: e.Length})
				}
				return fmt.Sprint(out)
			}
			was := extents()
			zero := filepath.Join(filepath.Dir(c.store), "zeros")
			vmtest.Sh(t, "dd if=/dev/zero of="+zero+" bs=1M count=16 conv=fsync 2>/dev/null")
			for _, mode := range []string{"-r ", ""} {
				out, _ := exec.Command("sh", "-c", "xfs_io "+mode+"-c 'dedupe "+zero+" 0 8m 8m' "+cow+" 2>&1").CombinedOutput()
				t.Logf("xfs_io %sdedupe: %s", mode, strings.TrimSpace(string(out)))
			}
			if f, err := os.OpenFile(cow, os.O_RDWR|os.O_APPEND, 0); err == nil {
				f.Close()
				t.Fatal("the live cow.img opens for writing: a defragmenter could move its blocks")
			}
			if now := extents(); now != was {
				t.Fatalf("the live cow.img's extents changed:\nbefore\n%s\nafter\n%s", was, now)
			}
			vmtest.Sh(t, "dd if=/dev/urandom of="+mnt+"/b bs=1M count=24 conv=fsync 2>/dev/null")
			vmtest.Run(t, "umount", mnt)
			// Closed, and released by the watcher: the registry no longer
			// holds it (a watcher stopped between the conversion and that
			// step leaves it held, and restore does not offer it).
			eventually(t, "the session to close", 60*time.Second, func() bool {
				ss := c.list(t, "pin")
				return len(ss) == 2 && ss[0].State == "closed" && len(c.status(t).Devices[0].Sessions) == 1
			})
			w.stop(t)
			id := c.list(t, "pin")[0].ID
			c.ok(t, "sessions", "verify", id)
			c.ok(t, "restore", "pin", "--session", id, "--yes")
			if h := hash(t, origin); h != before {
				t.Fatalf("after the restore: sha256 %s, want %s", h, before)
			}
		})
	}
}
