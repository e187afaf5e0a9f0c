package session

import (
	"context"
	"fmt"
	"time"
)

// Mark is a change to a session's label and pin (snapstore.Mark); a nil
// field is left as it is.
type Mark struct {
	Label  *string
	Pinned *bool
}

// Marked is a session's label and pin as recorded.
type Marked struct {
	Dir    string
	Label  string
	Pinned bool
	// Mounted is when the live session was opened by a mount (zero: it is
	// armed): its label then marks the state before that mount, not now.
	Mounted time.Time
}

// ErrWhichDevice: a command that may leave its device out found more than
// one activated.
var ErrWhichDevice = fmt.Errorf("more than one device is activated: name one")

// MarkLive labels or pins the live session of device name (the armed one,
// or the open one while mounted): "" names the only activated device. It
// runs under the lock, so the session's directory is not renamed by a
// mount meanwhile.
func (m *Manager) MarkLive(ctx context.Context, name string, mark Mark) (Marked, error) {
	const op = "label"
	var out Marked
	err := m.withLock(ctx, func(reg *Registry) error {
		var d *Device
		switch {
		case name != "":
			if d = reg.Device(name); d == nil {
				return deviceErr(op, name, "`dmsnap status` lists the activated devices", ErrNotActivated)
			}
		case len(reg.Devices) == 1:
			d = reg.Devices[0]
		case len(reg.Devices) == 0:
			return fmt.Errorf("%s: no device is activated: %w", op, ErrNotActivated)
		default:
			return fmt.Errorf("%s: %d devices are activated: %w", op, len(reg.Devices), ErrWhichDevice)
		}
		cur := d.Current()
		if cur == nil || cur.Dir == "" {
			return deviceErrf(op, d.Name, "run dmsnap watch, or dmsnap attach "+d.Path, nil, "no live session now")
		}
		var err error
		if out, err = m.Store.SetMark(ctx, cur.Dir, mark); err != nil {
			return deviceErr(op, d.Name, "", fmt.Errorf("session %d: %w", cur.N, err))
		}
		if cur.State == SessionOpen || cur.State == SessionOpening {
			out.Mounted = cur.Mounted
		}
		return nil
	})
	return out, err
}

// MarkSession labels or pins the session in dir, finished or not, under
// the lock (no conversion or rename runs meanwhile).
func (m *Manager) MarkSession(ctx context.Context, dir string, mark Mark) (Marked, error) {
	var out Marked
	err := m.withLock(ctx, func(*Registry) error {
		var err error
		out, err = m.Store.SetMark(ctx, dir, mark)
		return err
	})
	return out, err
}
