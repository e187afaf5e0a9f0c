//go:build vm

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/internal/vmtest"
	"github.com/dmsnap/dmsnap/snapstore"
)

// TestCLIRetention: a workload that writes more pre-images than a small
// store holds runs with --min-free, and the watcher prunes the oldest
// sessions in time: no session ever goes invalid, the newest states stay
// restorable (a restore gives the device back byte for byte). Then
// dmsnap set --keep-last takes effect at the next beat, a labelled session
// survives a policy that would remove it, and status --check fails while
// retention cannot keep min-free.
func TestCLIRetention(t *testing.T) {
	c := newCLI(t)
	base := t.TempDir()
	c.store = filepath.Join(vmtest.StoreFS(t, base, "ext4", 200<<20), "store")
	raw := rawDevice(t, 48<<20)
	const name = "rt"
	origin := "/dev/mapper/dmsnap-" + name
	c.ok(t, "activate", raw, "--name", name, "--prealloc", "8MiB", "--min-free", "72MiB")
	t.Cleanup(func() { c.try(t, "", "deactivate", name) })
	w := c.watch(t)
	mnt := t.TempDir()

	var before []string // the device before each session
	for i := 1; i <= 8; i++ {
		dropCaches(t)
		before = append(before, hash(t, origin))
		vmtest.Run(t, "mount", origin, mnt)
		// 20 MiB rewritten in place each time: 20 MiB of pre-images.
		vmtest.Sh(t, fmt.Sprintf("dd if=/dev/urandom of=%s/big bs=1M count=20 conv=notrunc,fsync 2>/dev/null", mnt))
		vmtest.Run(t, "umount", mnt)
		// Closed and converted: the registry holds only session i+1, armed.
		eventually(t, fmt.Sprintf("session %d to close", i), 90*time.Second, func() bool {
			st := c.status(t)
			return len(st.Devices) == 1 && len(st.Devices[0].Sessions) == 1 && st.Devices[0].Sessions[0].N == i+1 &&
				st.Devices[0].Sessions[0].State == "armed"
		})
		ss := c.list(t, name)
		for _, s := range ss {
			if s.State == "invalid" {
				t.Fatalf("cycle %d: session %s went invalid\n%s", i, s.ID, w.log.String())
			}
		}
	}
	w.stop(t)
	log := w.log.String()
	if strings.Contains(log, "snapshot invalidated") {
		t.Fatalf("a snapshot was invalidated:\n%s", log)
	}
	if !strings.Contains(log, "retention removed a session") || !strings.Contains(log, "by=min-free") {
		t.Fatalf("the watcher removed nothing for min-free:\n%s", log)
	}
	pruned, _ := os.ReadFile(filepath.Join(c.store, snapstore.PrunedLog))
	ss := c.list(t, name)
	if len(ss) < 2 || len(pruned) == 0 {
		t.Fatalf("sessions %+v, pruned.log %q: want some pruned and some kept", ss, pruned)
	}
	var sf unix.Statfs_t
	if err := unix.Statfs(c.store, &sf); err != nil {
		t.Fatal(err)
	}
	t.Logf("8 sessions of 20 MiB in a 200 MiB store: %d kept, %d pruned, %d MiB free", len(ss)-1, strings.Count(string(pruned), "\n"), sf.Bavail*uint64(sf.Bsize)>>20)
	// The newest closed session is a restore point: the device comes back
	// as it was before it.
	newest := ss[len(ss)-2]
	c.ok(t, "restore", name, "--session", newest.ID, "--yes")
	if h := hash(t, origin); h != before[len(before)-1] {
		t.Fatalf("after restoring %s: sha256 %s, want %s", newest.ID, h, before[len(before)-1])
	}

	// A keep rule set later applies at the next beat.
	c.ok(t, "set", name, "--keep-last", "2")
	w = c.watch(t)
	eventually(t, "keep-last 2 to apply", 30*time.Second, func() bool { return countStates(c.list(t, name))["closed"] == 2 })
	// A labelled session survives a rule that would remove it.
	ss = c.list(t, name)
	c.ok(t, "sessions", "label", ss[0].ID, "keep this one")
	c.ok(t, "set", name, "--keep-last", "1")
	time.Sleep(3 * time.Second) // three beats
	if got := c.list(t, name); len(got) != len(ss) || got[0].ID != ss[0].ID {
		t.Fatalf("after keep-last 1 with %s labelled: %+v", ss[0].ID, got)
	}
	if code, out, errOut := c.try(t, "", "status", "--check"); code != 0 {
		t.Fatalf("status --check with room: exit %d\n%s%s", code, out, errOut)
	}
	// More free space asked for than the store has: nothing may go (the
	// labelled session, then the newest restore point), and --check says so.
	c.ok(t, "set", name, "--min-free", "1GiB")
	code, out, errOut := c.try(t, "", "status", "--check")
	if code != exitCheck || !strings.Contains(errOut, "short of min-free") || !strings.Contains(out, "ATTENTION") {
		t.Fatalf("status --check below min-free: exit %d\n%s%s", code, out, errOut)
	}
	eventually(t, "the watcher to warn", 30*time.Second, func() bool {
		return strings.Contains(w.log.String(), "retention cannot free enough space")
	})
	if got := c.list(t, name); len(got) != len(ss) {
		t.Fatalf("min-free removed a labelled session or the newest restore point: %+v", got)
	}
	w.stop(t)
}
