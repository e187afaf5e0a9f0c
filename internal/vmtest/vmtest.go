// Package vmtest holds helpers for the tests that run inside the test guest
// (build tag vm, run through hack/vm/exec). It must not be imported by
// non-test code.
package vmtest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// RequireDM fails the test, never skips it, when the kernel it runs on has
// no device-mapper: a VM test that cannot reach the kernel proves nothing.
func RequireDM(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/dev/mapper/control"); err != nil {
		t.Fatalf("no device-mapper here (%v): VM tests must run inside the guest via hack/vm/exec", err)
	}
	if os.Getuid() != 0 {
		t.Fatalf("VM tests need root")
	}
}

// Run runs a command and fails the test with its output when it fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Sh runs a shell script with busybox sh and fails the test when it fails.
func Sh(t testing.TB, script string) string {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command("sh", "-ec", script)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("sh -ec %q: %v\n%s", script, err, out.String())
	}
	return out.String()
}

// SHA256 returns the hex SHA-256 of a whole file or block device.
func SHA256(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("hashing %s: %v", path, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TempFile makes a sparse file of the given size under dir and returns its path.
func TempFile(t testing.TB, dir, name string, size int64) string {
	t.Helper()
	p := dir + "/" + name
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}

// StoreFS makes a filesystem of type fstype ("ext4" or "xfs"; "tmpfs"
// gives dir itself, on the guest's tmpfs) on a loop device over a sparse
// file of size bytes in dir, mounts it on dir/fstype and returns the mount
// point: a session store as on a real machine. ext4 gets 4 KiB blocks,
// which mkfs would not give a filesystem this small and every real store
// has, so that dmsnap maps the COW files to the store's device
// (dm.AttachCOW). The cleanup unmounts it (lazily, should a process still
// hold it) and frees the loop device.
func StoreFS(t testing.TB, dir, fstype string, size int64) string {
	t.Helper()
	if fstype == "tmpfs" {
		return dir
	}
	img := TempFile(t, dir, "store-"+fstype+".img", size)
	mnt := dir + "/" + fstype
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	// Under emulation every block written costs: ext4 leaves its inode
	// tables and journal to be zeroed later, and is told never to.
	mkfs, opts := "mkfs.ext4 -q -F -b 4096 -E lazy_itable_init=1,lazy_journal_init=1,nodiscard", "-o noinit_itable"
	if fstype == "xfs" {
		mkfs, opts = "mkfs.xfs -q -f", ""
	}
	loop := strings.TrimSpace(Sh(t, "l=$(losetup -f) && losetup $l "+img+" && echo $l"))
	t.Cleanup(func() {
		exec.Command("umount", "-l", mnt).Run()
		exec.Command("losetup", "-d", loop).Run()
	})
	Sh(t, mkfs+" "+loop+" && mount "+opts+" "+loop+" "+mnt)
	return mnt
}
