package session

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// DefaultWatchInterval is how often the watcher reconciles when no mount
// changes: the kernel raises no mount-table event when it invalidates a
// snapshot, so the snapshots' status is looked at on this beat.
const DefaultWatchInterval = 30 * time.Second

// WatchOptions tune Watch.
type WatchOptions struct {
	MountInfo string        // the mountinfo file to watch ("" : /proc/self/mountinfo)
	Interval  time.Duration // reconcile beat without mount changes (0: DefaultWatchInterval)
	// Retry is the pause before retrying after a failed reconcile (another
	// command held the lock, say); 0 means one second.
	Retry time.Duration
}

// Watch is `dmsnap watch`: it reconciles at start, then whenever the mount
// table changes (woken by the kernel, not by a timer) and on a slow beat,
// until ctx ends. Mounts and unmounts of the origins open and close
// sessions through Reconcile; a device unmounted and mounted again between
// two reads of the table is rotated explicitly, so the session boundary is
// not lost. Failures are logged and retried; Watch returns only when ctx
// ends (nil) or the mount table cannot be read.
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
	if opt.MountInfo != "" && m.ReadMounts == nil {
		mm := *m
		mm.ReadMounts = table.Read
		m = &mm
	}
	prev, err := table.Read()
	if err != nil {
		return err
	}
	log := m.log()
	log.Info("watching", "mountinfo", table.Path(), "state", m.StateDir)

	pending := m.watchReconcile(ctx)
	for {
		wait := opt.Interval
		if pending {
			wait = opt.Retry
		}
		wctx, cancel := context.WithTimeout(ctx, wait)
		err := table.Wait(wctx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("watch %s: %w", table.Path(), err)
		}
		if err == nil {
			cur, rerr := table.Read()
			if rerr != nil {
				return rerr
			}
			events := m.mountEvents(prev, cur)
			prev = cur
			if len(events) == 0 && !pending {
				continue
			}
			m.rotateRemounted(ctx, events)
		}
		pending = m.watchReconcile(ctx)
	}
}

// watchReconcile reconciles and logs; it reports whether to retry soon.
func (m *Manager) watchReconcile(ctx context.Context) (retry bool) {
	rep, err := m.Reconcile(ctx)
	for _, is := range rep.Issues {
		m.log().Warn("needs attention", "device", is.Device, "session", is.Session, "problem", is.Problem)
	}
	if err != nil && ctx.Err() == nil {
		m.log().Error("reconcile failed; retrying", "err", err)
		return true
	}
	return false
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

// rotateRemounted closes the session of each device that was unmounted and
// mounted again between two reads: Reconcile alone would see it mounted in
// both and keep one session across the two mounts.
func (m *Manager) rotateRemounted(ctx context.Context, events []MountEvent) {
	for i := 0; i+1 < len(events); i++ {
		a, b := events[i], events[i+1]
		if a.Kind == DeviceUnmounted && b.Kind == DeviceMounted && a.Dev == b.Dev {
			reg, err := m.Registry()
			if err != nil {
				continue
			}
			if d := reg.ByDevNum(a.Dev); d != nil {
				if _, err := m.Rotate(ctx, d.Name, "unmounted and mounted again"); err != nil {
					m.log().Error("rotate", "device", d.Name, "err", err)
				}
			}
		}
	}
}
