//go:build !vm

package dm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A disk is busy while one of its partitions is mounted or held; the error
// names the partition (the kernel's EBUSY on the disk does not).
func TestBusyPartitions(t *testing.T) {
	sys := t.TempDir()
	write := func(rel, content string) { writeSysFile(t, sys, rel, content) }
	write("dev/block/7:0/loop0p1/partition", "1\n")
	write("dev/block/7:0/loop0p1/dev", "259:0\n")
	write("dev/block/7:0/loop0p2/partition", "2\n")
	write("dev/block/7:0/loop0p2/dev", "259:1\n")
	write("dev/block/7:0/loop0p3/partition", "3\n")
	write("dev/block/7:0/loop0p3/dev", "259:2\n")
	write("dev/block/7:0/queue/dev", "0:0\n") // not a partition
	write("dev/block/259:1/holders/dm-4/.keep", "")
	write("block/dm-4/dm/name", "dmsnap-p2-real\n")
	mi := filepath.Join(t.TempDir(), "mountinfo")
	if err := os.WriteFile(mi, []byte("22 1 253:1 / / rw - ext4 /dev/vda rw\n40 22 259:0 / /mnt/p\\0401 rw - ext4 /dev/loop0p1 rw\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got := busyPartitions(sys, mi, Dev{Major: 7, Minor: 0})
	want := []string{
		"its partition /dev/loop0p1 (mounted on /mnt/p 1)",
		"its partition /dev/loop0p2 (held by dm-4 (device-mapper dmsnap-p2-real))",
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("busyPartitions = %q, want %q", got, want)
	}
	if got := busyPartitions(sys, mi, Dev{Major: 7, Minor: 1}); got != nil {
		t.Errorf("a disk without partitions: %q", got)
	}
	err := heldError("/dev/loop0", Dev{Major: 7, Minor: 0}, got)
	if !strings.Contains(err.Error(), "/dev/loop0 is in use: it is held by its partition /dev/loop0p1 (mounted on /mnt/p 1)") {
		t.Errorf("heldError: %v", err)
	}
}
