package session

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// Revert on unmount (`dmsnap activate --on-unmount revert`, README "Revert
// on unmount"): every unmount puts the device back to the state it had
// before the mount, as an instant restore, while the sessions stay (so a
// revert can be looked into or undone like any restore).
//
// The state put back is the state before session RevertBase: restoring to
// it from whatever the device holds now is a restore like any other (a
// chain from RevertBase to the newest session), so it is right however
// sessions, merges and mounts interleaved, and a revert that was missed (a
// mount came first) is caught up by the next one. The base moves only to
// a session that starts from that state: one armed after an instant
// restore finished with nothing mounted meanwhile, or after a restore
// (Device.Rebase); a restore to session T sets the base to T.
//
// RevertPending is the intent: it is saved with each open (a mount), so a
// crash or a power cut while mounted, or before the revert started, ends
// with a revert at the next attach, before anything mounts the device. It
// is cleared in the same step that records the instant restore (whose own
// record carries it through a crash from there on).

// OnUnmountRevert is Device.OnUnmount for revert on unmount.
const OnUnmountRevert = "revert"

// OnUnmountKeep is the default mode's name on the command line (stored
// as "").
const OnUnmountKeep = "keep"

// ErrNothingToRevert: a revert was asked for a device whose base session
// is still the live one (it was never mounted since the base).
var ErrNothingToRevert = errors.New("nothing to revert")

// Reverts reports whether d puts itself back at every unmount.
func (d *Device) Reverts() bool { return d.OnUnmount == OnUnmountRevert }

// OnUnmountMode is d's mode as the command line names it.
func (d *Device) OnUnmountMode() string {
	if d.Reverts() {
		return OnUnmountRevert
	}
	return OnUnmountKeep
}

// Rebase makes the state before session n (0: the live one) the state a
// revert of d puts back, and clears a pending revert (unless the live
// session is mounted: its unmount reverts to the state it started from);
// nothing for a device that does not revert. The caller holds the lock
// and saves the registry.
func (d *Device) Rebase(n int) {
	if !d.Reverts() {
		return
	}
	pending := false
	if n == 0 {
		n = d.NextSession
		if cur := d.Current(); cur != nil {
			// Mounted already (the restore let the device go a moment
			// before): its unmount still reverts, to the state it started
			// from.
			n, pending = cur.N, cur.State == SessionOpening || cur.State == SessionOpen
		}
	}
	d.RevertBase, d.RevertPending = n, pending
}

// RebaseSaved is Rebase on the registry in stateDir, for a caller that
// holds the lock already (an instant restore being recorded).
func RebaseSaved(stateDir, name string, n int) error {
	reg, err := LoadRegistry(stateDir)
	if err != nil {
		return err
	}
	d := reg.Device(name)
	if d == nil || !d.Reverts() {
		return nil
	}
	d.Rebase(n)
	return reg.Save(stateDir)
}

// Rebase is Device.Rebase under the lock (after a restore that wrote the
// device: the live session starts from the restored state).
func (m *Manager) Rebase(ctx context.Context, name string, n int) error {
	return m.withLock(ctx, func(reg *Registry) error {
		d := reg.Device(name)
		if d == nil || !d.Reverts() {
			return nil
		}
		d.Rebase(n)
		return reg.Save(m.StateDir)
	})
}

// SetOnUnmount changes the unmount mode of device arg (keep or revert).
// Switching to revert makes the device's state now the one every revert
// puts back: the live session is the base, and when the device is mounted
// a revert is pending (its unmount reverts to the state before this
// mount). Refused while an instant restore merges.
func (m *Manager) SetOnUnmount(ctx context.Context, arg, mode string) (*Device, error) {
	const op = "set"
	var out *Device
	err := m.withLock(ctx, func(reg *Registry) error {
		d, err := m.lookup(ctx, reg, arg)
		if err != nil {
			return deviceErr(op, arg, "", err)
		}
		switch mode {
		case OnUnmountKeep:
			d.OnUnmount, d.RevertBase, d.RevertPending = "", 0, false
		case OnUnmountRevert:
			if d.Reverts() {
				break
			}
			ms, err := LoadMerges(m.StateDir)
			if err != nil {
				return deviceErr(op, d.Name, "", err)
			}
			if FindMerge(ms, d.Name) != nil {
				return deviceErrf(op, d.Name, "wait until dmsnap status no longer shows it", ErrBusy, "an instant restore is still merging")
			}
			cur := d.Current()
			if cur == nil || cur.State == SessionArming {
				return deviceErrf(op, d.Name, "dmsnap attach it first", nil, "no armed session")
			}
			d.OnUnmount, d.RevertBase = OnUnmountRevert, cur.N
			d.RevertPending = cur.State == SessionOpen || cur.State == SessionOpening
		default:
			return deviceErr(op, d.Name, "", fmt.Errorf("on-unmount %q: want keep or revert", mode))
		}
		if err := reg.Save(m.StateDir); err != nil {
			return deviceErr(op, d.Name, "", err)
		}
		c := *d
		out = &c
		return nil
	})
	return out, err
}

// Reverter is the watcher's side of revert on unmount (rollback.Reverter
// on the running system).
type Reverter interface {
	// Hold opens device name's origin exclusively, so that nothing mounts
	// it until its revert has started; it is called as soon as an unmount
	// of a device that reverts is seen.
	Hold(name string) (*os.File, error)
	// Revert reverts device name; hold, when not nil, is its Hold (Revert
	// closes it). A device in use (mounted again) is left pending.
	Revert(ctx context.Context, name string, hold *os.File) error
}

// holdReverts holds the origins of the devices that revert among those
// events unmounted, before their sessions close.
func (m *Manager) holdReverts(events []MountEvent, rv Reverter, holds map[string]*os.File) {
	if rv == nil || len(events) == 0 {
		return
	}
	reg, err := m.Registry()
	if err != nil {
		return
	}
	for _, e := range events {
		d := reg.ByDevNum(e.Dev)
		if e.Kind != DeviceUnmounted || d == nil || !d.Reverts() || holds[d.Name] != nil {
			continue
		}
		f, err := rv.Hold(d.Name)
		if err != nil {
			// Mounted again already: the revert waits for the next unmount.
			m.log().Warn("cannot hold the device for its revert (mounted again?): it reverts at the next unmount", "device", d.Name, "err", err)
			continue
		}
		holds[d.Name] = f
		m.log().Info("holding the device until its revert has started", "device", d.Name)
	}
}

// runReverts reverts every device whose revert is pending and that is not
// mounted, with the hold taken at its unmount when there is one; holds of
// devices with nothing (left) to revert are let go. Devices with events
// still queued wait for them.
func (m *Manager) runReverts(ctx context.Context, rv Reverter, holds map[string]*os.File, queued []MountEvent) {
	if rv == nil {
		return
	}
	reg, err := m.Registry()
	if err != nil {
		m.log().Error("read registry", "err", err)
		return
	}
	table, err := m.mounts()
	if err != nil {
		m.log().Error("read mount table", "err", err)
		return
	}
	mounted := MountsByDev(table, nil)
	waiting := map[DevNum]bool{}
	for _, e := range queued {
		waiting[e.Dev] = true
	}
	for _, d := range reg.Devices {
		hold := holds[d.Name]
		delete(holds, d.Name)
		switch {
		case !d.Reverts() || !d.RevertPending || d.State != DeviceActive:
		case waiting[d.Origin]:
			if hold != nil {
				holds[d.Name] = hold
			}
			continue
		case hold == nil && len(mounted[d.Origin]) > 0:
			// Mounted: it reverts at its unmount.
		default:
			if err := rv.Revert(ctx, d.Name, hold); err != nil && ctx.Err() == nil {
				m.log().Error("revert on unmount failed; the device keeps what the session wrote until a revert succeeds (retried on the watcher's beat)", "device", d.Name, "err", err)
			}
			continue
		}
		if hold != nil {
			hold.Close()
		}
	}
	for name, hold := range holds {
		if reg.Device(name) == nil {
			hold.Close()
			delete(holds, name)
		}
	}
}
