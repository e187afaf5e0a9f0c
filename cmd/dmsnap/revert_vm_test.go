//go:build vm

package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/internal/vmtest"
)

type revertStatus struct {
	Devices []struct {
		Name          string          `json:"name"`
		OnUnmount     string          `json:"on_unmount"`
		RevertBase    int             `json:"revert_base"`
		RevertPending bool            `json:"revert_pending"`
		Merge         json.RawMessage `json:"merge"`
	} `json:"devices"`
}

func (c *cli) revertStatus(t *testing.T) (mode string, base int, pending, merging bool) {
	t.Helper()
	var st revertStatus
	out := c.ok(t, "status", "--json")
	if err := decodeResult(out, &st); err != nil || len(st.Devices) != 1 {
		t.Fatalf("status: %v\n%s", err, out)
	}
	d := st.Devices[0]
	return d.OnUnmount, d.RevertBase, d.RevertPending, len(d.Merge) > 0 && string(d.Merge) != "null"
}

// mountRetrying mounts dev on mnt, retrying while the mount fails: a
// device whose revert has not started yet is held exclusively by the
// watcher. It returns how many attempts failed.
func mountRetrying(t *testing.T, dev, mnt string) int {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for n := 0; ; n++ {
		err := unix.Mount(dev, mnt, "ext4", 0, "")
		if err == nil {
			return n
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			t.Fatalf("mount %s: %v (after %d attempts)", dev, err, n+1)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// writeCycle writes 8 MiB of random data as mnt/cycle-i and returns its
// SHA-256.
func writeCycle(t *testing.T, mnt string, i int) string {
	t.Helper()
	f := filepath.Join(mnt, fmt.Sprintf("cycle-%d", i))
	vmtest.Sh(t, fmt.Sprintf("dd if=/dev/urandom of=%s bs=1M count=8 conv=fsync 2>/dev/null", f))
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func cycleFiles(t *testing.T, mnt string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(mnt, "cycle-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var undoSessionRE = regexp.MustCompile(`undo_session=(\S+)`)

// TestRevertOnUnmount: a device activated with --on-unmount revert comes
// back to its pre-mount bytes after each of several mount cycles, one of
// them mounted again at once after the unmount (the mount waits out the
// revert's hold and sees the pre-mount state while the merge still runs);
// the sessions stay and the session that recorded a revert undoes it,
// after which reverts put back the restored state.
func TestRevertOnUnmount(t *testing.T) {
	c := newCLI(t)
	raw := rawDevice(t, 64<<20)
	const name = "rv"
	origin := "/dev/mapper/dmsnap-" + name
	c.ok(t, "activate", raw, "--name", name, "--prealloc", c.prealloc, "--on-unmount", "revert")
	t.Cleanup(func() {
		exec.Command("umount", origin).Run()
		c.try(t, "", "deactivate", name)
	})
	if mode, base, pending, _ := c.revertStatus(t); mode != "revert" || base != 1 || pending {
		t.Fatalf("status after activate: on_unmount %q, revert_base %d, pending %v; want revert, 1, false", mode, base, pending)
	}
	if out := c.ok(t, "status"); !strings.Contains(out, "on unmount: revert, to the state before session 1") {
		t.Fatalf("status does not show the mode:\n%s", out)
	}
	w := c.watch(t)
	mnt := t.TempDir()
	base := hash(t, origin)
	// reverted waits for the revert of the last unmount and its merge to
	// end, then checks the device: reads of it meanwhile would keep the
	// watcher from closing the session that recorded the revert.
	reverts := 0
	unmount := func() {
		t.Helper()
		vmtest.Run(t, "umount", mnt)
		reverts++
	}
	reverted := func(what string) {
		t.Helper()
		eventually(t, what, 2*time.Minute, func() bool {
			_, _, pending, merging := c.revertStatus(t)
			return !pending && !merging && strings.Count(w.log.String(), "reverted on unmount") >= reverts
		})
		if h := hash(t, origin); h != base {
			t.Fatalf("%s: sha256 %s, want %s\n%s", what, h, base, w.log.String())
		}
	}

	// Cycle 1; cycle 2 mounted again once the watcher holds the device
	// (the mount fails as busy until the revert has started, then
	// sees the pre-mount state while the merge still runs).
	if n := mountRetrying(t, origin, mnt); n != 0 {
		t.Fatalf("first mount failed %d times", n)
	}
	// The watcher's open of the session saves the pending revert.
	eventually(t, "a revert pending once the watcher has seen the mount", time.Minute, func() bool {
		_, _, pending, _ := c.revertStatus(t)
		return pending
	})
	writeCycle(t, mnt, 1)
	const holding = "holding the device until its revert has started"
	unmount()
	eventually(t, "the watcher to hold the device", time.Minute, func() bool { return strings.Contains(w.log.String(), holding) })
	busy := mountRetrying(t, origin, mnt)
	if got := cycleFiles(t, mnt); len(got) != 0 {
		t.Fatalf("mounted again after the watcher took the device: %v there, want the pre-mount state", got)
	}
	writeCycle(t, mnt, 2)
	unmount()
	reverted("the device back as before cycle 2's mount")

	// A mount at once after the unmount may come before the watcher holds
	// the device: it then sees what the session wrote, and the revert
	// comes at its unmount instead (to the same state: nothing is lost).
	vmtest.Run(t, "mount", origin, mnt)
	writeCycle(t, mnt, 20)
	unmount()
	mountRetrying(t, origin, mnt)
	raced := len(cycleFiles(t, mnt)) != 0
	writeCycle(t, mnt, 21)
	unmount()
	if raced {
		reverts-- // one revert for both mounts
	}
	reverted("the device back as before the raced mounts")
	if raced && !strings.Contains(w.log.String(), "it reverts at the next unmount") {
		t.Fatalf("a mount came before the revert without a word in the log:\n%s", w.log.String())
	}
	t.Logf("a mount at once after the unmount came before the revert's hold: %v", raced)

	// Cycle 3.
	vmtest.Run(t, "mount", origin, mnt)
	sum3 := writeCycle(t, mnt, 3)
	unmount()
	reverted("the device back as before cycle 3's mount")
	// The watcher closes the session that recorded the revert once its
	// merge has ended and the device is free: a pass after the one that
	// saw the merge end.
	eventually(t, "the watcher to close the session that recorded the last revert", time.Minute, func() bool {
		log := w.log.String()
		return undoSessionRE.MatchString(log[strings.LastIndex(log, "reverted on unmount"):])
	})
	log := w.log.String()
	if n := strings.Count(log, "reverted on unmount"); n != reverts {
		t.Fatalf("%d reverts logged, want %d:\n%s", n, reverts, log)
	}
	for _, s := range c.list(t, name) {
		if s.State == "invalid" {
			t.Fatalf("session %s went invalid\n%s", s.ID, log)
		}
	}
	if _, _, pending, _ := c.revertStatus(t); pending {
		t.Fatalf("a revert still pending after the reverts")
	}

	// The session that recorded the last revert undoes it; from then on
	// reverts put back the restored state.
	m := undoSessionRE.FindAllStringSubmatch(log, -1)
	undo := m[len(m)-1][1]
	c.ok(t, "restore", name, "--session", undo, "--yes")
	restored := hash(t, origin)
	vmtest.Run(t, "mount", origin, mnt)
	b, err := os.ReadFile(filepath.Join(mnt, "cycle-3"))
	if err != nil {
		t.Fatalf("after restoring %s (the session that recorded the last revert): %v", undo, err)
	}
	if h := sha256.Sum256(b); hex.EncodeToString(h[:]) != sum3 {
		t.Fatalf("cycle-3 after undoing its revert: sha256 %x, want %s", h, sum3)
	}
	writeCycle(t, mnt, 4)
	unmount()
	eventually(t, "the device back as the undo left it", 2*time.Minute, func() bool { return hash(t, origin) == restored })
	w.stop(t)
	for _, m := range regexp.MustCompile(`undo_session=\S+ revert_base=\d+ held=(\S+)`).FindAllStringSubmatch(w.log.String(), -1) {
		t.Logf("the watcher held the device %s while it closed the session that recorded a revert", m[1])
	}
	t.Logf("6 mount cycles reverted; a mount after the watcher took the device failed %d times as busy before it went through", busy)
}
