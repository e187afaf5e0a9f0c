//go:build !vm

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// systemd's dmsnap-attach@.service passes the device's sysfs directory:
// attach takes it to the device node.
func TestSysfsDevice(t *testing.T) {
	blocks, err := os.ReadDir("/sys/class/block")
	if err != nil || len(blocks) == 0 {
		t.Fatalf("no block devices in sysfs to test with: %v", err)
	}
	name := blocks[0].Name()
	real, err := filepath.EvalSymlinks(filepath.Join("/sys/class/block", name))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{real, "/sys/class/block/" + name} {
		if got, err := sysfsDevice(p); err != nil || got != "/dev/"+name {
			t.Errorf("sysfsDevice(%s) = %q, %v; want /dev/%s", p, got, err, name)
		}
	}
	if got, err := sysfsDevice("/dev/sdb1"); err != nil || got != "/dev/sdb1" {
		t.Errorf("a device path: %q, %v; want it unchanged", got, err)
	}
	for _, bad := range []string{"/sys/devices/no-such-device", "/sys/kernel"} {
		if got, err := sysfsDevice(bad); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("sysfsDevice(%s) = %q, %v; want an error naming it", bad, got, err)
		}
	}
}
