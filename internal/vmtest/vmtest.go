// Package vmtest holds helpers for the tests that run inside the test guest
// (build tag vm, run through hack/vm/exec). It must not be imported by
// non-test code.
package vmtest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
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

// lvmConf keeps lvm2 from waiting for udev, which the guest does not run.
const lvmConf = `activation{udev_sync=0 udev_rules=0 monitoring=0} devices{obtain_device_list_from_udev=0 external_device_info_source="none"} global{use_lvmpolld=0}`

// LVM runs `lvm CMD ARGS...` with the guest's configuration and returns
// its output; a failure fails the test.
func LVM(t testing.TB, cmd string, args ...string) string {
	t.Helper()
	return Run(t, "lvm", append([]string{cmd, "--config", lvmConf}, args...)...)
}

// LVMStore is a store on an LVM logical volume, as Debian's default
// install makes one, mounted at Mount.
type LVMStore struct {
	Mount string
	VG    string // volume group, on one physical volume
	LV    string // the logical volume's device-mapper name (VG-store)
	PV    string // the physical volume: a loop device over a file in dir
}

// NewLVMStore makes volume group vg on a loop device over a sparse file
// of pvSize bytes in dir, and in it logical volume "store" of segments
// segments of segBytes each, with 4 MiB of another volume between every
// two of them (so the volume's table has that many linear targets, at
// places on the physical volume that are not in its order), makes an
// fstype filesystem on it (as StoreFS) and mounts it.
func NewLVMStore(t testing.TB, dir, vg, fstype string, pvSize, segBytes int64, segments int) LVMStore {
	t.Helper()
	os.MkdirAll("/run/lock/lvm", 0o755)
	img := TempFile(t, dir, "pv.img", pvSize)
	pv := strings.TrimSpace(Sh(t, "l=$(losetup -f) && losetup $l "+img+" && echo $l"))
	mnt := filepath.Join(dir, "lvm-"+fstype)
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command("umount", mnt).Run()
		exec.Command("lvm", "vgremove", "--config", lvmConf, "-q", "-f", vg).Run()
		exec.Command("lvm", "pvremove", "--config", lvmConf, "-q", "-y", pv).Run()
		exec.Command("losetup", "-d", pv).Run()
	})
	LVM(t, "pvcreate", "-q", "-y", pv)
	LVM(t, "vgcreate", "-q", "-s", "4m", vg, pv)
	size := fmt.Sprintf("%db", segBytes)
	LVM(t, "lvcreate", "-q", "-y", "-Wn", "-Zn", "-L", size, "-n", "store", vg)
	for i := 1; i < segments; i++ {
		LVM(t, "lvcreate", "-q", "-y", "-Wn", "-Zn", "-L", "4m", "-n", fmt.Sprintf("gap%d", i), vg)
		LVM(t, "lvextend", "-q", "-L", "+"+size, vg+"/store")
	}
	lv := vg + "-store"
	mkfs, opts := "mkfs.ext4 -q -F -b 4096 -E lazy_itable_init=1,lazy_journal_init=1,nodiscard", "-o noinit_itable"
	if fstype == "xfs" {
		mkfs, opts = "mkfs.xfs -q -f", ""
	}
	Sh(t, mkfs+" /dev/mapper/"+lv+" && mount "+opts+" /dev/mapper/"+lv+" "+mnt)
	return LVMStore{Mount: mnt, VG: vg, LV: lv, PV: pv}
}
