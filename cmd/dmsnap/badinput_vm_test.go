//go:build vm

package main

// Bad device paths and a loose store against the real kernel: each refused
// with its exit code and words, and nothing changed (the registry, the
// device-mapper devices, the store).

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/vmtest"
)

// partitionedDisk makes a 64 MiB loop device with an MBR of two ext4
// partitions and returns the disk and its partitions' paths.
func partitionedDisk(t *testing.T) (disk, p1, p2 string) {
	t.Helper()
	file := vmtest.TempFile(t, t.TempDir(), "disk.img", 64<<20)
	mbr := make([]byte, 512)
	entry := func(i int, start, sectors uint32) {
		e := mbr[446+16*i:]
		e[4] = 0x83 // Linux
		for k := 0; k < 4; k++ {
			e[8+k] = byte(start >> (8 * k))
			e[12+k] = byte(sectors >> (8 * k))
		}
	}
	entry(0, 2048, 65536)
	entry(1, 2048+65536, 131072-2048-65536)
	mbr[510], mbr[511] = 0x55, 0xaa
	f, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(mbr, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.Command("sh", "-c", "d=$(losetup -f) && losetup -P $d "+file+" && echo $d").CombinedOutput()
	if err != nil {
		t.Fatalf("losetup -P: %v: %s", err, out)
	}
	disk = strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", disk).Run() })
	p1, p2 = disk+"p1", disk+"p2"
	eventually(t, "the partitions' nodes", 10*time.Second, func() bool {
		_, e1 := os.Stat(p1)
		_, e2 := os.Stat(p2)
		return e1 == nil && e2 == nil
	})
	vmtest.Run(t, "mkfs.ext4", "-q", "-F", p1)
	vmtest.Run(t, "mkfs.ext4", "-q", "-F", p2)
	return disk, p1, p2
}

func TestBadInputDevices(t *testing.T) {
	c := newCLI(t)
	disk, p1, p2 := partitionedDisk(t)
	mnt := t.TempDir()
	vmtest.Run(t, "mount", p1, mnt)
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	c.activate(t, p2, "p2")

	state := func() string {
		reg, _ := os.ReadFile(filepath.Join(c.state, "registry.json"))
		ents, _ := os.ReadDir(c.store)
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return fmt.Sprintf("%s\n%v\n%v", reg, dmsnapDevices(t), names)
	}
	before := state()
	// An image file a loop device of someone else's has: a mount -o loop
	// of it would bypass dmsnap.
	plain := vmtest.TempFile(t, t.TempDir(), "plain.img", 1<<20)
	theirs, err := dm.AttachLoop(plain, dm.LoopOptions{})
	if err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	t.Cleanup(func() { dm.DetachLoop(theirs.Path) })
	tried := 0
	for _, tc := range []struct {
		args  []string
		code  int
		words []string
	}{
		{[]string{"activate", plain}, exitBusy, []string{plain, theirs.Path, "losetup -d"}},
		{[]string{"activate", "/dev/nonexistent"}, exitFailure, []string{"/dev/nonexistent", "no such file"}},
		{[]string{"activate", t.TempDir()}, exitFailure, []string{"not a block device"}},
		{[]string{"activate", "/dev/null"}, exitFailure, []string{"/dev/null", "not a block device"}},
		// The disk of a mounted partition: busy, and the partition named.
		{[]string{"activate", disk, "--name", "disk"}, exitBusy, []string{disk, "its partition " + p1 + " (mounted on " + mnt + ")"}},
		{[]string{"activate", p1, "--name", "p1"}, exitBusy, []string{"mounted on " + mnt}},
		{[]string{"activate", p2, "--name", "again"}, exitFailure, []string{"already activated as p2"}},
		{[]string{"activate", "/dev/mapper/dmsnap-p2", "--name", "x"}, exitFailure, []string{"already activated as p2", "dmsnap status p2"}},
		{[]string{"activate", p2, "--name", "a+b"}, exitUsage, []string{"use only letters, digits and _ . -"}},
		{[]string{"activate", p2, "--name", "x-snap1"}, exitUsage, []string{"ends like a dmsnap device"}},
		{[]string{"deactivate", "nosuch"}, exitFailure, []string{"nosuch", "not activated"}},
		{[]string{"attach", plain}, exitFailure, []string{plain, "not activated"}},
		{[]string{"restore", "p2", "--session", "p2_1", "--yes"}, exitFailure, []string{"no closed sessions of p2", "nothing to restore"}},
		{[]string{"sessions", "show", "../p2"}, exitFailure, []string{"invalid session ID"}},
	} {
		tried++
		code, out, errOut := c.try(t, "", tc.args...)
		msg := strings.ToLower(errOut)
		ok := code == tc.code
		for _, w := range tc.words {
			ok = ok && strings.Contains(msg, strings.ToLower(w))
		}
		if !ok {
			t.Errorf("dmsnap %q: exit %d (want %d), want the words %q\nstdout %q\nstderr %q", tc.args, code, tc.code, tc.words, out, errOut)
		}
		if now := state(); now != before {
			t.Fatalf("dmsnap %q changed something:\nbefore %s\nafter %s", tc.args, before, now)
		}
	}

	// A store others can write to, in the real guest: activation refused.
	loose := filepath.Join(t.TempDir(), "loose")
	if err := os.Mkdir(loose, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(loose, 0o777)
	tried++
	code, _, errOut := c.try(t, "", "--store", loose, "activate", disk, "--name", "disk")
	if code != exitFailure || !strings.Contains(errOut, "chmod go-w "+loose) {
		t.Errorf("activate with a world-writable store: exit %d: %s", code, errOut)
	}
	if now := state(); now != before {
		t.Fatalf("activate with a loose store changed something:\nbefore %s\nafter %s", before, now)
	}

	// Two deactivations at once: the lock serialises them, one wins, the
	// other finds nothing to do and says so.
	tried++
	var wg sync.WaitGroup
	codes := make([]int, 2)
	errs := make([]string, 2)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], _, errs[i] = c.try(t, "", "deactivate", "p2")
		}()
	}
	wg.Wait()
	slices.Sort(codes)
	if codes[0] != exitOK || codes[1] != exitFailure || !strings.Contains(errs[0]+errs[1], "not activated") {
		t.Errorf("two deactivations at once: exits %v\n%s\n%s", codes, errs[0], errs[1])
	}
	if left := dmsnapDevices(t); len(left) != 0 {
		t.Errorf("left after the deactivations: %v", left)
	}
	t.Logf("soak-count bad-inputs %d", tried)
}
