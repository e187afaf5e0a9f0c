package session

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
)

// DefaultWatchInterval is how often the watcher reconciles when no mount
// changes: the kernel raises no mount-table event when it invalidates a
// snapshot, so the snapshots' status is looked at on this beat.
const DefaultWatchInterval = 30 * time.Second

// WatchOptions tune Watch.
type WatchOptions struct {
	MountInfo string        // the mountinfo file to wait on ("" : /proc/self/mountinfo)
	Interval  time.Duration // reconcile beat without mount changes (0: DefaultWatchInterval)
	// Retry is the pause before retrying after a failure (another command
	// held the lock, say); 0 means one second.
	Retry time.Duration
	// GrowEvery is how often the live sessions' COW use is looked at, to
	// keep the part mapped straight to the store's device ahead of the
	// kernel (GrowCOWs); 0 means DefaultGrowEvery, negative never.
	GrowEvery time.Duration
	// Ready, when set, is called once the watcher is watching: the mount
	// table is open, the first reconcile has run (devices re-stacked,
	// conversions finished or retried) and the COW grower runs. The
	// watch command tells systemd (Type=notify) from it.
	Ready func()
	// Settled, when set, is called after every reconcile of the watch
	// loop (so after each close and conversion), without the lock: the
	// watch command applies retention from it.
	Settled func(ctx context.Context)
	// Revert, when set, reverts the devices activated with --on-unmount
	// revert (revert.go): each one's origin is held from the moment its
	// unmount is seen, and reverted after the reconcile that closed its
	// session.
	Revert Reverter
}

// DefaultGrowEvery is how often the watcher looks at the live sessions'
// COW use (two status ioctls per session; the lock only to grow).
const DefaultGrowEvery = time.Second

// Watch is `dmsnap watch`: it reconciles at start, then handles every mount
// and unmount of an activated device's origin as it happens (woken by the
// kernel, not by a timer), and reconciles on a slow beat, until ctx ends.
// Beside that it keeps the live sessions' fast COW ahead of the kernel
// (GrowCOWs, every opt.GrowEvery).
//
// Mounts and unmounts are handled as events (HandleMountEvent), not only
// as states: a device unmounted and mounted again before the watcher got to
// it — it was converting a session, or another command held the lock — still
// ends one session and starts the next. Failures are logged and retried;
// Watch returns nil when ctx ends, or an error when the mount table cannot
// be read.
//
// The mount table is read through Manager.ReadMounts when set (else the
// file waited on), so the events and the reconcile see the same table.
func (m *Manager) Watch(ctx context.Context, opt WatchOptions) error {
	if opt.Interval <= 0 {
		opt.Interval = DefaultWatchInterval
	}
	if opt.Retry <= 0 {
		opt.Retry = time.Second
	}
	table, err := OpenMountTable(opt.MountInfo)
	if err != nil {
		return err
	}
	defer table.Close()
	if m.ReadMounts == nil {
		mm := *m
		mm.ReadMounts = table.Read
		m = &mm
	}
	prev, err := m.ReadMounts()
	if err != nil {
		return err
	}
	log := m.log()
	log.Info("watching", "mountinfo", table.Path(), "state", m.StateDir)

	var queue []MountEvent         // events not handled yet, in order
	failures := 0                  // reconciles failed in a row
	holds := map[string]*os.File{} // origins held for their reverts
	defer func() {
		for _, f := range holds {
			f.Close()
		}
	}()
	note := func(ok bool) {
		if ok {
			failures = 0
		} else {
			failures++
		}
	}
	note(m.watchReconcile(ctx))
	// changed: the mount table changed, as runReverts found when it looked
	// (consuming the kernel's flag): read it at once.
	changed := false
	unchanged := func() bool {
		c, err := table.Changed()
		changed = changed || c || err != nil
		return !c && err == nil
	}
	reverting := m.runReverts(ctx, opt.Revert, holds, nil, unchanged) // pending from before a restart
	if opt.GrowEvery == 0 {
		opt.GrowEvery = DefaultGrowEvery
	}
	if opt.GrowEvery > 0 {
		gctx, stop := context.WithCancel(ctx)
		grower := make(chan struct{})
		go func() {
			defer close(grower)
			m.growLoop(gctx, opt.GrowEvery)
		}()
		defer func() { stop(); <-grower }()
	}
	if opt.Ready != nil {
		opt.Ready()
	}
	for {
		wait := opt.Interval
		if len(queue) > 0 {
			wait = opt.Retry
		} else if reverting {
			wait = min(revertRetry, opt.Interval)
		} else if failures > 0 {
			// Back off: a failure that persists (a damaged session that
			// will not convert) must not be retried every second.
			wait = min(opt.Retry<<min(failures-1, 16), opt.Interval)
		}
		var err error
		if changed {
			changed = false
		} else {
			wctx, cancel := context.WithTimeout(ctx, wait)
			err = table.Wait(wctx)
			cancel()
		}
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("watch %s: %w", table.Path(), err)
		}
		if err == nil {
			cur, rerr := m.ReadMounts()
			if rerr != nil {
				return fmt.Errorf("watch %s: %w", table.Path(), rerr)
			}
			events := m.mountEvents(prev, cur)
			m.holdReverts(events, opt.Revert, holds)
			queue = append(queue, events...)
			prev = cur
			// Reconcile on every change, even one that yields no event:
			// a mount and unmount that both happened while the watcher
			// was busy leave prev and cur alike, yet a reconcile run
			// meanwhile may have opened a session on the mount it saw.
			// Only a reconcile now closes that session.
		}
		queue = m.handleEvents(ctx, queue)
		note(m.watchReconcile(ctx))
		reverting = m.runReverts(ctx, opt.Revert, holds, queue, unchanged)
		if opt.Settled != nil {
			opt.Settled(ctx)
		}
	}
}

// handleEvents handles queued events in order and returns those to retry:
// from the first that failed because the lock was held. An event that
// failed otherwise is dropped after logging; the reconcile that follows
// repairs what it can from the state it sees.
func (m *Manager) handleEvents(ctx context.Context, queue []MountEvent) []MountEvent {
	for i, e := range queue {
		_, err := m.HandleMountEvent(ctx, e)
		if err == nil {
			continue
		}
		if errors.Is(err, ErrLocked) && ctx.Err() == nil {
			m.log().Warn("state locked; will retry", "event", e.Kind.String(), "dev", e.Dev.String(), "err", err)
			return queue[i:]
		}
		m.log().Error("mount event", "event", e.Kind.String(), "dev", e.Dev.String(), "err", err)
	}
	return nil
}

// watchReconcile reconciles and logs; it reports success.
func (m *Manager) watchReconcile(ctx context.Context) bool {
	rep, err := m.Reconcile(ctx)
	for _, is := range rep.Issues {
		m.log().Warn("needs attention", "device", is.Device, "session", is.Session, "problem", is.Problem)
	}
	if err != nil && ctx.Err() == nil {
		m.log().Error("reconcile failed; retrying", "err", err)
		return false
	}
	return true
}

// mountEvents diffs two reads of the mount table for the registered
// devices' origins, logging the events.
func (m *Manager) mountEvents(prev, cur []MountInfo) []MountEvent {
	reg, err := m.Registry()
	if err != nil {
		m.log().Error("read registry", "err", err)
		return nil
	}
	names := map[DevNum]string{}
	for _, d := range reg.Devices {
		if !d.Origin.IsZero() {
			names[d.Origin] = d.Name
		}
	}
	events := DiffMounts(prev, cur, func(n DevNum) bool { _, ok := names[n]; return ok })
	for _, e := range events {
		m.log().Info(e.Kind.String(), "device", names[e.Dev], "dev", e.Dev.String(), "mountpoint", mountPoints(e.Mounts))
	}
	return events
}

// HandleMountEvent applies a mount event to the session of the device whose
// origin it concerns (others are ignored): a mount opens the armed session,
// an unmount closes the open one; then the device is reconciled (arming the
// next session after an unmount). The event is applied even when the mount
// table has moved on since — a mount already gone again still makes one
// session — so no session boundary is lost to a busy watcher.
func (m *Manager) HandleMountEvent(ctx context.Context, e MountEvent) (Report, error) {
	var rep Report
	err := m.withLock(ctx, func(reg *Registry) error {
		d := reg.ByDevNum(e.Dev)
		if d == nil || d.Origin != e.Dev || d.State == DeviceDeactivating {
			return nil
		}
		cur := d.Current()
		var step []Action
		switch {
		case cur == nil:
		case e.Kind == DeviceMounted && cur.State == SessionArmed:
			fsType := ""
			if len(e.Mounts) > 0 {
				fsType = e.Mounts[0].FSType
			}
			step = []Action{{Kind: ActOpen, Device: d.Name, Session: cur.N, At: m.now(), FSType: fsType, Reason: "mounted"}}
		case e.Kind == DeviceUnmounted && (cur.State == SessionOpen || cur.State == SessionOpening):
			step = []Action{{Kind: ActClose, Device: d.Name, Session: cur.N, At: m.now(), Reason: "unmounted"}}
		}
		if len(step) > 0 {
			done, err := m.Apply(ctx, reg, step)
			rep.Done = append(rep.Done, done...)
			if err != nil {
				return err
			}
		}
		r, err := m.reconcile(ctx, reg, scope{only: []string{d.Name}})
		rep.Done = append(rep.Done, r.Done...)
		rep.Issues = r.Issues
		return err
	})
	return rep, err
}
