//go:build !vm

package dm

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// refuseWriteOpens makes write opens of backing files fail with EBUSY, as
// Linux 6.8 and later do for a mounted block device when built without
// CONFIG_BLK_DEV_WRITE_MOUNTED or booted with bdev_allow_write_mounted=0
// (the guest's 6.1 and the host's kernel both allow them).
func refuseWriteOpens(t *testing.T) {
	t.Helper()
	real := openBacking
	openBacking = func(name string, flag int, perm fs.FileMode) (*os.File, error) {
		if flag&(os.O_WRONLY|os.O_RDWR) != 0 {
			return nil, &fs.PathError{Op: "open", Path: name, Err: unix.EBUSY}
		}
		return real(name, flag, perm)
	}
	t.Cleanup(func() { openBacking = real })
}

// TestAttachLoopMountedWriteRefused: a loop device over a block device the
// kernel will not open for writing fails before any loop device is taken,
// with an error that names the kernel's rule (AttachCOW puts it in
// COW.Slow and falls back to the file); over a regular file the error
// stays the plain one.
func TestAttachLoopMountedWriteRefused(t *testing.T) {
	refuseWriteOpens(t)
	_, err := AttachLoop("/dev/vdc", LoopOptions{BlockDevice: true, DirectIO: true})
	if err == nil || !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), "bdev_allow_write_mounted=0") ||
		!strings.Contains(err.Error(), "boot with bdev_allow_write_mounted=1") {
		t.Fatalf("AttachLoop over a refused block device: %v", err)
	}
	_, err = AttachLoop("/some/file", LoopOptions{})
	if err == nil || !errors.Is(err, unix.EBUSY) || strings.Contains(err.Error(), "bdev_allow_write_mounted") {
		t.Fatalf("AttachLoop over a refused file: %v", err)
	}
}

// TestWhyUnmapped on the host's own filesystems: a file on tmpfs cannot be
// mapped (the store's filesystem says why), one on the host's ext4 or xfs
// can (nothing stands in the way), unless the kernel refuses write opens
// of the mounted device under it.
func TestWhyUnmapped(t *testing.T) {
	shm := filepath.Join("/dev/shm", "dmsnap-why-unmapped")
	if err := os.WriteFile(shm, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(shm)
	if why := WhyUnmapped(shm); !strings.Contains(why, "is not ext2/3/4 or xfs") {
		t.Errorf("a file on tmpfs: %q", why)
	}
	if why := WhyUnmapped(filepath.Join(t.TempDir(), "missing")); !strings.Contains(why, "no such file") {
		t.Errorf("a missing file: %q", why)
	}

	file := filepath.Join(t.TempDir(), "cow.img")
	if err := os.WriteFile(file, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(file, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != unix.EXT4_SUPER_MAGIC && st.Type != unix.XFS_SUPER_MAGIC {
		t.Fatalf("the host's temporary directory is on filesystem 0x%x; this test needs ext4 or xfs there", st.Type)
	}
	// The host's sandbox may refuse opening its disk for writing (EPERM):
	// the guest's VM tests see the real open (TestCLISessionsThreeMounts).
	real := openBacking
	openBacking = func(name string, flag int, perm fs.FileMode) (*os.File, error) { return os.Open(os.DevNull) }
	if why := WhyUnmapped(file); why != "" {
		t.Errorf("a file on ext4/xfs: %q, want nothing in the way", why)
	}
	openBacking = real
	refuseWriteOpens(t)
	if why := WhyUnmapped(file); !strings.Contains(why, "refuses to open it for writing while it is mounted") {
		t.Errorf("write opens refused: %q", why)
	}
}
