package session

import (
	"slices"

	"github.com/dmsnap/dmsnap/internal/hostfiles"
)

// HostFileOptions returns opt with the global flags' defaults in place of
// what it leaves "": DefaultStateDir and DefaultStore (hostfiles fills in
// the binary).
func HostFileOptions(opt hostfiles.Options) hostfiles.Options {
	if opt.StateDir == "" {
		opt.StateDir = DefaultStateDir
	}
	if opt.Store == "" {
		opt.Store = DefaultStore
	}
	return opt
}

// UdevDevices are the devices of r that the udev rule re-attaches
// (hostfiles.UdevRules): every one but those being deactivated, and image
// files: no udev event announces a file, and the loop device dmsnap binds
// to one gets another number at each bind (the watcher's reconcile brings
// them back).
func (r *Registry) UdevDevices() []hostfiles.Device {
	var devs []hostfiles.Device
	for _, d := range r.Devices {
		if d.State == DeviceDeactivating || d.Identity.Image {
			continue
		}
		devs = append(devs, hostfiles.Device{Name: d.Name, Path: d.Path, Dev: d.Identity.Dev,
			FSUUID: d.Identity.FSUUID, Stable: d.Identity.Stable})
	}
	return devs
}

// Stores are the stores of the registered devices, each once (the
// drop-ins of hostfiles.WriteStoresDropIns): the stores that must be
// mounted before a device is attached at boot, or the watcher starts.
func (r *Registry) Stores() []string {
	var stores []string
	for _, d := range r.Devices {
		if d.State == DeviceDeactivating || d.Store == "" || slices.Contains(stores, d.Store) {
			continue
		}
		stores = append(stores, d.Store)
	}
	return stores
}
