package session

import (
	"slices"
)

// MountEventKind says what happened to a device's mounts.
type MountEventKind int

const (
	// DeviceMounted: the device went from no mount to at least one.
	DeviceMounted MountEventKind = iota + 1
	// DeviceUnmounted: the device's last mount went away.
	DeviceUnmounted
)

func (k MountEventKind) String() string {
	switch k {
	case DeviceMounted:
		return "mounted"
	case DeviceUnmounted:
		return "unmounted"
	}
	return "unknown"
}

// MountEvent is a change in whether a device is mounted. Sessions are
// scoped to the device being mounted at all: a bind mount of an already
// mounted device, or unmounting one of two mounts, is no event.
type MountEvent struct {
	Kind MountEventKind
	Dev  DevNum
	// Mounts are the device's mounts after a DeviceMounted event, and the
	// ones that went away for a DeviceUnmounted event.
	Mounts []MountInfo
}

// MountsByDev groups a table's entries by device, keeping only the devices
// interest accepts (all when interest is nil).
func MountsByDev(table []MountInfo, interest func(DevNum) bool) map[DevNum][]MountInfo {
	out := map[DevNum][]MountInfo{}
	for _, m := range table {
		if interest == nil || interest(m.Dev) {
			out[m.Dev] = append(out[m.Dev], m)
		}
	}
	return out
}

// DiffMounts compares two reads of the mount table and returns, for the
// devices interest accepts (all when nil), the devices that became mounted
// or unmounted, ordered by device number and, for one device, unmount
// before mount.
//
// A device that is mounted in both reads but by entirely different mounts
// (no mount ID in common) was unmounted and mounted again between the two
// reads — the watcher was busy, say converting a session — and yields both
// events, so the session boundary is not lost. (The same is seen if a bind
// mount replaced the only mount between two reads; that is rare, and
// splitting the session there is the safer error.)
func DiffMounts(prev, cur []MountInfo, interest func(DevNum) bool) []MountEvent {
	before := MountsByDev(prev, interest)
	after := MountsByDev(cur, interest)
	devs := make([]DevNum, 0, len(before)+len(after))
	for d := range before {
		devs = append(devs, d)
	}
	for d := range after {
		if _, ok := before[d]; !ok {
			devs = append(devs, d)
		}
	}
	slices.SortFunc(devs, func(a, b DevNum) int {
		if a.Major != b.Major {
			return int(a.Major) - int(b.Major)
		}
		return int(a.Minor) - int(b.Minor)
	})
	var events []MountEvent
	for _, d := range devs {
		b, a := before[d], after[d]
		switch {
		case len(b) == 0 && len(a) > 0:
			events = append(events, MountEvent{Kind: DeviceMounted, Dev: d, Mounts: a})
		case len(b) > 0 && len(a) == 0:
			events = append(events, MountEvent{Kind: DeviceUnmounted, Dev: d, Mounts: b})
		case len(b) > 0 && len(a) > 0 && !shareMountID(b, a):
			events = append(events,
				MountEvent{Kind: DeviceUnmounted, Dev: d, Mounts: b},
				MountEvent{Kind: DeviceMounted, Dev: d, Mounts: a})
		}
	}
	return events
}

func shareMountID(a, b []MountInfo) bool {
	for _, x := range a {
		for _, y := range b {
			if x.ID == y.ID {
				return true
			}
		}
	}
	return false
}
