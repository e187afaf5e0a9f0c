//go:build vm

package main

import (
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/vmtest"
	"github.com/dmsnap/dmsnap/storedev"
)

// TestCLIManagedStore: store create makes a managed store on a bare
// device, refusing one with a filesystem and one in use; a device
// activated onto it puts its COW straight on the store's device (route
// below, no loop device); after a "reboot" (every table gone, the store
// unmounted) attach brings the store back before the stack, and the
// session restores the device byte for byte. store up is what udev runs.
func TestCLIManagedStore(t *testing.T) {
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) { testManagedStore(t, fs) })
	}
}

func testManagedStore(t *testing.T, fs string) {
	vmtest.RequireDM(t)
	base := t.TempDir()
	c := &cli{state: filepath.Join(base, "state"), store: filepath.Join(base, "snap"), prealloc: testPrealloc}
	size := int64(128 << 20)
	if fs == "xfs" {
		size = 320 << 20 // mkfs.xfs wants 300 MB
	}
	disk := bareDevice(t, size)
	cleanupStore := func() {
		quietly("umount", c.store)
		rs, _ := storedev.LoadRecords(c.state)
		for _, r := range rs.Stores {
			storedev.System{}.Unwrap(r.UUID)
		}
	}
	t.Cleanup(cleanupStore)

	// A device with a filesystem is refused, and nothing is written.
	withFS := rawDevice(t, 80<<20)
	sum := vmtest.SHA256(t, withFS)
	code, _, errOut := c.try(t, "", "store", "create", withFS, "--fs", fs)
	if code != exitFailure || !strings.Contains(errOut, "holds a filesystem (ext4") || !strings.Contains(errOut, "--force") {
		t.Fatalf("store create over ext4: exit %d\n%s", code, errOut)
	}
	if vmtest.SHA256(t, withFS) != sum {
		t.Fatal("a refused store create changed the device")
	}
	if _, err := os.Stat(c.store); !os.IsNotExist(err) {
		t.Fatalf("a refused store create made the store directory: %v", err)
	}

	c.ok(t, "store", "create", disk, "--fs", fs)
	var stores []storeInfo
	if err := decodeResult(c.ok(t, "store", "list", "--json"), &stores); err != nil || len(stores) != 1 || !stores[0].Mounted || stores[0].FS != fs || stores[0].Device != disk {
		t.Fatalf("store list: %+v, %v", stores, err)
	}
	mapper := stores[0].Mapper
	if got := vmtest.Sh(t, "stat -f -c %T "+c.store); !strings.Contains(got, map[string]string{"ext4": "ext2/ext3", "xfs": "xfs"}[fs]) {
		t.Fatalf("%s is %q, not %s", c.store, got, fs)
	}
	// Its device is in use now: a second create is refused as busy.
	if code, _, errOut := c.try(t, "", "--store", filepath.Join(base, "other"), "store", "create", disk); code != exitBusy || !strings.Contains(errOut, "in use") {
		t.Fatalf("store create on the store's own device: exit %d\n%s", code, errOut)
	}

	raw := rawDevice(t, 32<<20)
	const name = "ms"
	origin := "/dev/mapper/dmsnap-" + name
	before := vmtest.SHA256(t, raw)
	c.activate(t, raw, name)
	if s := c.status(t).Devices[0].Sessions[0]; s.CowRoute != "below" || s.CowFastBytes == nil || *s.CowFastBytes == 0 {
		t.Fatalf("on a managed store the COW goes below the store's device: route %q, unmapped because %q\n%s", s.CowRoute, s.CowUnmapped, c.ok(t, "status"))
	}
	// The only loop device in the store is the tail's, over cow.tail;
	// none is bound to the store's device.
	backing, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var inStore []string
	for _, b := range backing {
		f, err := os.ReadFile(b)
		if err != nil {
			t.Fatal(err)
		}
		file := strings.TrimSpace(string(f))
		if fi, err := os.Stat(file); err == nil && fi.Mode()&os.ModeDevice != 0 {
			t.Fatalf("%s is bound to the block device %s", b, file)
		}
		if strings.HasPrefix(file, c.store+"/") {
			inStore = append(inStore, file)
		}
	}
	if len(inStore) != 1 || filepath.Base(inStore[0]) != "cow.tail" {
		t.Fatalf("loop devices over files in the store: %v, want only the tail's", inStore)
	}
	w := c.watch(t)
	mnt := t.TempDir()
	mountWriteUnmount(t, origin, mnt, 1)
	var ss []listed
	eventually(t, "the session to close", 60*time.Second, func() bool {
		ss = c.list(t, name)
		return countStates(ss)["closed"] == 1
	})
	w.stop(t)

	reboot(t, c, name, stores[0].UUID)
	if _, err := os.Stat(mapper); !os.IsNotExist(err) {
		t.Fatalf("%s still there: %v", mapper, err)
	}
	// attach (as dmsnap-attach@.service runs it) brings the store up first.
	c.ok(t, "attach", "/sys/class/block/"+filepath.Base(raw))
	st := c.status(t)
	if len(st.Devices) != 1 || st.Devices[0].Stack == nil || !st.Devices[0].Stack.Complete || st.Devices[0].Sessions[0].CowRoute != "below" {
		t.Fatalf("after attach: %+v", st)
	}
	c.ok(t, "restore", name, "--session", ss[0].ID, "--yes")
	if got := vmtest.SHA256(t, origin); got != before {
		t.Fatalf("after restore the device is %s, before the session %s", got, before)
	}
	// A second "reboot", and the watcher comes up first: it brings the
	// store up before its first reconcile re-attaches the armed session.
	reboot(t, c, name, stores[0].UUID)
	w = c.watch(t)
	eventually(t, "the watcher to re-attach the device", 60*time.Second, func() bool {
		st := c.status(t)
		return len(st.Devices) == 1 && st.Devices[0].Stack != nil && st.Devices[0].Stack.Complete &&
			len(st.Devices[0].Sessions) > 0 && st.Devices[0].Sessions[0].CowRoute == "below"
	})
	w.stop(t)
	c.ok(t, "deactivate", name)
	all := c.list(t, name)

	// store up, as udev runs it: after an unmount, it mounts again; twice
	// is harmless; a device that is no store is refused.
	vmtest.Run(t, "umount", c.store)
	c.ok(t, "store", "up", disk)
	c.ok(t, "store", "up", disk)
	if err := decodeResult(c.ok(t, "store", "list", "--json"), &stores); err != nil || !stores[0].Mounted {
		t.Fatalf("store list after store up: %+v, %v", stores, err)
	}
	if left := c.list(t, name); len(left) != len(all) || left[0].ID != ss[0].ID || left[len(left)-1].ID != all[len(all)-1].ID {
		t.Fatalf("sessions on the store after store up: %+v, before: %+v", left, all)
	}
	if code, _, errOut := c.try(t, "", "store", "up", withFS); code != exitFailure || !strings.Contains(errOut, "is not a dmsnap store") {
		t.Fatalf("store up on a plain device: exit %d\n%s", code, errOut)
	}
}

// reboot is what a reboot leaves of device name and its managed store
// (UUID uuid): the tables go, the store is unmounted and its linear device
// removed; the registry and stores.json stay.
func reboot(t *testing.T, c *cli, name, uuid string) {
	t.Helper()
	if err := (dm.Stack{Name: name}).Teardown(); err != nil {
		t.Fatal(err)
	}
	vmtest.Run(t, "umount", c.store)
	if err := (storedev.System{}).Unwrap(uuid); err != nil {
		t.Fatal(err)
	}
}

// bareDevice is a loop device over a new file of size bytes, all zeros.
func bareDevice(t *testing.T, size int64) string {
	t.Helper()
	file := vmtest.TempFile(t, t.TempDir(), "bare.img", size)
	l, err := dm.AttachLoop(file, dm.LoopOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	t.Cleanup(func() { dm.DetachLoop(l.Path) })
	return l.Path
}

func quietly(name string, args ...string) { _ = osexec.Command(name, args...).Run() }
