package dm

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// StackState is one dmsnap stack as the kernel shows it.
type StackState struct {
	Name       string
	HasOrigin  bool // dmsnap-NAME exists with a snapshot-origin table
	HasReal    bool // dmsnap-NAME-real exists with a linear table
	OriginDev  Dev  // dmsnap-NAME's number, when HasOrigin
	RawDev     Dev  // the device -real maps, when HasReal
	OriginOpen int  // openers of dmsnap-NAME (mounts, open descriptors)
	// NeedsRepair: a device of the stack is suspended, holds an inactive
	// table, or is a snapshot device without a table, or a COW device has
	// no snapshot: a crash interrupted an operation (Stack.Repair).
	NeedsRepair bool
	Snapshots   []StackSnapshot // snapshot devices with a snapshot table
}

// StackSnapshot is one dmsnap-NAME-snapN device of a StackState.
type StackSnapshot struct {
	N      int
	Dev    Dev
	Status SnapshotStatus
}

// Stacks lists the dmsnap stacks m has. Devices are recognised by UUID
// (ParseUUID), not by name, so that another dmsnap-* device (a view, say)
// is never taken for part of a stack; a UUID that does not match its
// device's name is not dmsnap's either. The COW devices,
// DMSNAP-<name>-cow<N>, are not listed: one without its snapshot makes the
// stack need repair. A snapshot-merge (an instant restore running) is not
// listed as a snapshot: it belongs to the restore, not to a session.
func Stacks(m Kernel) ([]StackState, error) {
	items, err := m.List()
	if err != nil {
		return nil, err
	}
	stacks := map[string]*StackState{}
	cows := map[string][]int{} // stack name → numbers of its COW devices
	snaps := map[string]bool{} // "name/N" of every snapshot device
	get := func(name string) *StackState {
		if s, ok := stacks[name]; ok {
			return s
		}
		s := &StackState{Name: name}
		stacks[name] = s
		return s
	}
	for _, it := range items {
		if !strings.HasPrefix(it.Name, Prefix) {
			continue
		}
		info, err := m.Info(it.Name)
		if errors.Is(err, ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		name, part, ok := ParseUUID(info.UUID)
		if !ok {
			continue
		}
		if it.Name != Prefix+name+partSuffix(part) {
			continue // a UUID that does not match its name: not ours
		}
		broken := info.Suspended || info.Inactive
		switch {
		case part == "origin":
			s := get(name)
			s.HasOrigin, s.OriginDev, s.OriginOpen = info.LiveTable, info.Dev, int(info.OpenCount)
			s.NeedsRepair = s.NeedsRepair || broken
		case part == "real":
			s := get(name)
			s.HasReal = info.LiveTable
			s.NeedsRepair = s.NeedsRepair || broken
			if info.LiveTable {
				if tbl, err := m.Table(it.Name); err == nil && len(tbl) == 1 {
					if t, err := ParseTarget(tbl[0]); err == nil {
						if l, ok := t.(Linear); ok {
							s.RawDev = l.Device
						}
					}
				}
			}
		case strings.HasPrefix(part, "cow"):
			n, err := strconv.Atoi(part[len("cow"):])
			if err != nil || n < 0 {
				continue
			}
			cows[name] = append(cows[name], n)
			// Left suspended or with a new table loaded: a crash while its
			// fast part grew (Stack.GrowCOW); the snapshot's I/O waits.
			s := get(name)
			s.NeedsRepair = s.NeedsRepair || broken
		case strings.HasPrefix(part, "snap"):
			n, err := strconv.Atoi(part[len("snap"):])
			if err != nil || n < 0 {
				continue
			}
			s := get(name)
			snaps[name+"/"+strconv.Itoa(n)] = true
			if !info.LiveTable {
				s.NeedsRepair = true // a snapshot device that never got its table
				continue
			}
			s.NeedsRepair = s.NeedsRepair || broken
			snap, ok, err := stackSnapshot(m, it.Name, n, info)
			if err != nil {
				return nil, err
			}
			if ok {
				s.Snapshots = append(s.Snapshots, snap)
			}
		}
	}
	// A COW device whose snapshot is not there is a crash's leftover
	// (between the two at arming, or at removal): Repair removes it.
	for name, ns := range cows {
		s := get(name)
		for _, n := range ns {
			if !snaps[name+"/"+strconv.Itoa(n)] {
				s.NeedsRepair = true
			}
		}
	}
	out := make([]StackState, 0, len(stacks))
	for _, s := range stacks {
		out = append(out, *s)
	}
	return out, nil
}

func partSuffix(part string) string {
	if part == "origin" {
		return ""
	}
	return "-" + part
}

// stackSnapshot reads a snapshot device's status (ok false: not a
// snapshot table, a snapshot-merge say).
func stackSnapshot(m Kernel, name string, n int, info DeviceInfo) (StackSnapshot, bool, error) {
	st, err := m.Status(name)
	if errors.Is(err, ErrNotFound) {
		return StackSnapshot{}, false, nil
	}
	if err != nil {
		return StackSnapshot{}, false, err
	}
	if len(st) != 1 || st[0].Type != "snapshot" {
		return StackSnapshot{}, false, nil
	}
	ss, err := ParseSnapshotStatus(st[0].Params)
	if err != nil {
		return StackSnapshot{}, false, fmt.Errorf("%s: %w", name, err)
	}
	return StackSnapshot{N: n, Dev: info.Dev, Status: ss}, true, nil
}
