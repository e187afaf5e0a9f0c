package session

import (
	"reflect"
	"testing"

	"github.com/dmsnap/dmsnap/internal/hostfiles"
)

// The udev rule re-attaches every registered device but those being
// deactivated, matched by what the registry knows of them.
func TestUdevDevices(t *testing.T) {
	reg := sampleRegistry()
	reg.Devices = append(reg.Devices, &Device{Name: "gone", Path: "/dev/sdz", State: DeviceDeactivating, NextSession: 1,
		Identity: Identity{Dev: DevNum{Major: 8, Minor: 240}, FSUUID: "ffff"}})
	sdb1 := reg.Devices[0].Identity
	want := []hostfiles.Device{
		{Name: "sdb1", Path: "/dev/sdb1", Dev: DevNum{Major: 8, Minor: 17}, FSUUID: sdb1.FSUUID, Stable: sdb1.Stable},
		{Name: "a-disk", Path: "/dev/vdb", Dev: DevNum{Major: 254, Minor: 16}},
	}
	if got := reg.UdevDevices(); !reflect.DeepEqual(got, want) {
		t.Fatalf("UdevDevices:\n got %+v\nwant %+v", got, want)
	}
	if got := (&Registry{}).UdevDevices(); len(got) != 0 {
		t.Fatalf("empty registry: %+v", got)
	}
}

func TestHostFileOptions(t *testing.T) {
	got := HostFileOptions(hostfiles.Options{})
	if want := (hostfiles.Options{StateDir: DefaultStateDir, Store: DefaultStore}); got != want {
		t.Fatalf("defaults: %+v, want %+v", got, want)
	}
	given := hostfiles.Options{Binary: "/usr/bin/dmsnap", StateDir: "/srv/state", Store: "/data"}
	if got := HostFileOptions(given); got != given {
		t.Fatalf("given paths changed: %+v, want %+v", got, given)
	}
}
