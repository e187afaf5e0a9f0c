package session

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
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

// RevertState is a device's revert base and pending flag.
type RevertState struct {
	Base    int
	Pending bool
}

// SetRevertState sets device name's revert base and pending flag in the
// registry in stateDir, for a caller that holds the lock already (an
// instant restore being recorded), and returns what they were. A device
// that does not revert is left alone; a base below 1 is refused.
func SetRevertState(stateDir, name string, st RevertState) (RevertState, error) {
	reg, err := LoadRegistry(stateDir)
	if err != nil {
		return RevertState{}, err
	}
	d := reg.Device(name)
	if d == nil || !d.Reverts() {
		return RevertState{}, nil
	}
	was := RevertState{Base: d.RevertBase, Pending: d.RevertPending}
	if st.Base < 1 {
		return was, fmt.Errorf("session number %d: the sessions of a device that reverts on unmount must be numbered (a session older than dmsnap's sequence numbers cannot be the state its reverts put back)", st.Base)
	}
	d.RevertBase, d.RevertPending = st.Base, st.Pending
	return was, reg.Save(stateDir)
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
			if cur.State == SessionArmed {
				// The armed session may hold writes from before now (an
				// instant restore's): the base is a session armed now.
				cur.State = SessionClosing
				if err := reg.Save(m.StateDir); err != nil {
					return deviceErr(op, d.Name, "", err)
				}
				if _, err := m.reconcile(ctx, reg, scope{only: []string{d.Name}}); err != nil {
					return deviceErr(op, d.Name, "", err)
				}
				d = reg.Device(d.Name)
				if cur = d.Current(); cur == nil || cur.State != SessionArmed {
					return deviceErrf(op, d.Name, "dmsnap status says why", nil, "no session armed after closing the last one")
				}
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
	// it until its revert has started. With wait, it retries while the
	// file system just unmounted still has the device; without, a busy
	// device is an error at once.
	Hold(name string, wait bool) (*os.File, error)
	// Revert reverts device name with hold (nil: Revert takes its own).
	// done is false when the revert has to wait (an instant restore of the
	// device still merges): hold, not closed, is to be kept and Revert
	// called again later. Otherwise Revert has closed hold.
	Revert(ctx context.Context, name string, hold *os.File) (done bool, err error)
}

// revertRetry is how soon the watcher comes back to a revert that waits
// for an instant restore, holding the device meanwhile.
const revertRetry = time.Second

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
		f, err := rv.Hold(d.Name, true)
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
// mounted, with the hold taken at its unmount when there is one, and moves
// the revert base of a device whose last revert has finished copying
// (advanceRevertBase). Holds of devices with nothing (left) to revert are
// let go; devices with events still queued wait for them. unchanged
// reports whether the mount table is as the watcher last read it. It
// returns whether a revert is waiting (the watcher then comes back soon).
func (m *Manager) runReverts(ctx context.Context, rv Reverter, holds map[string]*os.File, queued []MountEvent, unchanged func() bool) bool {
	if rv == nil {
		return false
	}
	reg, err := m.Registry()
	if err != nil {
		m.log().Error("read registry", "err", err)
		return false
	}
	table, err := m.mounts()
	if err != nil {
		m.log().Error("read mount table", "err", err)
		return false
	}
	ms, err := LoadMerges(m.StateDir)
	if err != nil {
		m.log().Error("read merges", "err", err)
		return false
	}
	stacks, err := m.Kernel.Stacks(ctx)
	if err != nil {
		m.log().Error("read the stacks", "err", err)
		return false
	}
	mounted := MountsByDev(table, nil)
	waiting := map[DevNum]bool{}
	for _, e := range queued {
		waiting[e.Dev] = true
	}
	again := false
	for _, d := range reg.Devices {
		hold := holds[d.Name]
		delete(holds, d.Name)
		switch {
		case !d.Reverts() || d.State != DeviceActive:
		case waiting[d.Origin]:
			if hold != nil {
				holds[d.Name] = hold
			}
			continue
		case !d.RevertPending && len(mounted[d.Origin]) == 0 && baseWritten(stacks, d):
			// The base session took writes with no mount the watcher saw
			// (a mount and unmount while it was busy, or a write to the
			// unmounted device): put the device back all the same.
			if err := m.markRevertPending(ctx, d.Name); err != nil {
				m.log().Error("marking a revert pending", "device", d.Name, "err", err)
				break
			}
			m.log().Warn("the device was written with no mount seen: reverting it", "device", d.Name)
			again = true // reverted on the next pass, as pending
			if hold != nil {
				holds[d.Name] = hold
			}
			continue
		case !d.RevertPending:
			if hold == nil && len(mounted[d.Origin]) == 0 && FindMerge(ms, d.Name) == nil && unchanged != nil {
				m.advanceRevertBase(ctx, rv, d, unchanged)
			}
		case hold == nil && len(mounted[d.Origin]) > 0:
			// Mounted: it reverts at its unmount.
		default:
			done, err := rv.Revert(ctx, d.Name, hold)
			switch {
			case err != nil && ctx.Err() == nil:
				m.log().Error("revert on unmount failed; the device keeps what the session wrote until a revert succeeds (retried on the watcher's beat)", "device", d.Name, "err", err)
			case !done && hold != nil:
				holds[d.Name], again = hold, true
			case !done:
				again = true
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
	return again
}

// baseWritten reports whether d's live session is its revert base, armed,
// and holds pre-images: the device changed since the state reverts put back.
func baseWritten(stacks []StackInfo, d *Device) bool {
	cur := d.Current()
	if cur == nil || cur.State != SessionArmed || cur.N != d.RevertBase {
		return false
	}
	i := slices.IndexFunc(stacks, func(s StackInfo) bool { return s.Name == d.Name })
	if i < 0 {
		return false
	}
	sn, ok := stacks[i].Snapshot(cur.N)
	return ok && sn.State == SnapshotActive && sn.Allocated > sn.Metadata
}

// markRevertPending sets device name's pending revert.
func (m *Manager) markRevertPending(ctx context.Context, name string) error {
	return m.withLock(ctx, func(reg *Registry) error {
		d := reg.Device(name)
		if d == nil || !d.Reverts() || d.RevertPending {
			return nil
		}
		d.RevertPending = true
		return reg.Save(m.StateDir)
	})
}

// advanceRevertBase closes the live session of device d when it is armed
// and is not the revert base, and makes the session armed next the base.
// That live session is the one that recorded d's last revert (or restore):
// once the kernel has copied it back and nothing was mounted since, the
// next session starts from the state reverts put back, and the sessions
// before it may go by retention; the closed one undoes the revert. It
// holds the device exclusively meanwhile, after which unchanged (no mount
// or unmount the watcher has not seen yet) proves nothing was mounted
// since: a mount and an unmount the watcher has not handled would have
// written into the session closed here, past the base.
func (m *Manager) advanceRevertBase(ctx context.Context, rv Reverter, d *Device, unchanged func() bool) {
	if cur := d.Current(); cur == nil || cur.State != SessionArmed || cur.N == d.RevertBase {
		return
	}
	hold, err := rv.Hold(d.Name, false)
	if err != nil {
		return // in use: a later beat
	}
	defer hold.Close()
	held := time.Now()
	if !unchanged() {
		return
	}
	log := m.log().With("device", d.Name)
	err = m.withLock(ctx, func(reg *Registry) error {
		d := reg.Device(d.Name)
		if d == nil || !d.Reverts() || d.RevertPending {
			return nil
		}
		cur := d.Current()
		if cur == nil || cur.State != SessionArmed || cur.N == d.RevertBase {
			return nil
		}
		if ms, err := LoadMerges(m.StateDir); err != nil || FindMerge(ms, d.Name) != nil {
			return err
		}
		dir := cur.Dir
		cur.State = SessionClosing
		if err := reg.Save(m.StateDir); err != nil {
			return err
		}
		if _, err := m.reconcile(ctx, reg, scope{only: []string{d.Name}}); err != nil {
			return fmt.Errorf("closing session %d, which recorded the revert: %w", cur.N, err)
		}
		d = reg.Device(d.Name)
		d.Rebase(0)
		if err := reg.Save(m.StateDir); err != nil {
			return err
		}
		log.Info("closed the session that recorded the revert; restore it to undo the revert", "undo_session", filepath.Base(dir), "revert_base", d.RevertBase,
			"held", time.Since(held).Round(time.Millisecond))
		return nil
	})
	if err != nil && ctx.Err() == nil {
		log.Error("moving the revert base", "err", err)
	}
}
