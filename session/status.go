package session

import "context"

// DeviceStatus is what `dmsnap status` shows of one activated device.
type DeviceStatus struct {
	Device *Device     // the registry's record
	Stack  *StackInfo  // what the kernel has (nil: no stack)
	Mounts []MountInfo // mounts of the origin
	// Todo is what a reconcile would do now (empty when all is in order,
	// e.g. a conversion the watcher has not finished); Issues what it
	// cannot fix by itself.
	Todo   []Action
	Issues []Issue
}

// Status reports every activated device as the registry, the kernel, the
// mount table and the store show it now. It changes nothing and takes no
// lock (the registry file is replaced atomically); the answer may be a
// moment old when it is printed.
func (m *Manager) Status(ctx context.Context) ([]DeviceStatus, error) {
	reg, err := m.Registry()
	if err != nil {
		return nil, err
	}
	obs, err := m.Observe(ctx, reg, nil, false)
	if err != nil {
		return nil, err
	}
	out := make([]DeviceStatus, 0, len(reg.Devices))
	for _, d := range reg.Devices {
		st := DeviceStatus{Device: d}
		if s, ok := obs.Stacks[d.Name]; ok {
			st.Stack = &s
			if s.HasOrigin {
				st.Mounts = obs.Mounts[s.OriginDev]
			}
		}
		st.Todo, st.Issues = PlanDevice(d, obs)
		out = append(out, st)
	}
	return out, nil
}
