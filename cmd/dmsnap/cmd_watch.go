package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/dmsnap/dmsnap/internal/sdnotify"
	"github.com/dmsnap/dmsnap/rollback"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

func init() { register(watchCmd) }

type watchFlags struct {
	interval, growEvery time.Duration
	jsonLogs            bool
}

func watchCmd(e *env) *cobra.Command {
	var f watchFlags
	c := &cobra.Command{
		Use:   "watch",
		Short: "run the watcher: open and close sessions on mount and unmount",
		Long: `The long-running watcher (run by the dmsnap-watch systemd unit). It
reconciles at start (re-stacking devices, finishing conversions), then opens
a session at each mount of /dev/mapper/dmsnap-NAME and closes it at the
unmount, arming the next one at once. On every beat it also checks the
snapshots and the stores: COW use and store free space are logged, a
snapshot the kernel invalidated (store full, I/O error) is marked invalid,
kept, and a fresh session armed as soon as there is room. Every
--grow-every (0: never) it looks at the live sessions' COW use: when the
kernel's pre-images come within 64 MiB of the part of the COW written ahead
(activate --prealloc), it writes the next 32 MiB ahead and maps it straight
to the store's device, pausing the session's first writes meanwhile ("COW
grown" in the log, with the pause). Each device's retention policy is
applied after every close and once an hour (rules by age remove sessions
as time passes). Logs go to
standard error (log/slog) with device and session attributes. SIGINT or
SIGTERM stops it.

Exit codes: 0 stopped by a signal, 1 failure, 2 usage.`,
		Args: argsBetween(0, 0, "watch takes no arguments"),
		RunE: func(c *cobra.Command, args []string) error { return runWatch(e, f) },
	}
	fs := c.Flags()
	fs.DurationVar(&f.interval, "interval", session.DefaultWatchInterval, "how often to check snapshots and store space without mount changes")
	fs.DurationVar(&f.growEvery, "grow-every", session.DefaultGrowEvery, "how often to look at the live sessions' COW use to write more of it ahead (0: never)")
	fs.BoolVar(&f.jsonLogs, "json-logs", false, "log JSON lines instead of text")
	return c
}

// Store free space below which the watcher warns: the larger of
// lowSpaceBytes and lowSpaceFraction of the store's filesystem.
const (
	lowSpaceBytes    = 64 << 20
	lowSpaceFraction = 0.05
)

func runWatch(e *env, f watchFlags) error {
	if f.interval <= 0 {
		return usagef("--interval must be positive")
	}
	if f.growEvery < 0 {
		return usagef("--grow-every must be 0 (never) or positive")
	}
	if f.growEvery == 0 {
		f.growEvery = -1 // session.WatchOptions: never
	}
	var h slog.Handler = slog.NewTextHandler(e.stderr, nil)
	if f.jsonLogs || e.json {
		h = slog.NewJSONHandler(e.stderr, nil)
	}
	log := slog.New(h)
	// The managed stores of the registered devices first: the first
	// reconcile re-attaches COWs that live on them (at boot the watcher
	// may start before udev has brought them up).
	managedStores(e).EnsureUsed(e.ctx, storeWait)
	m := newManager(e)
	m.Log = log
	m.LockNotice = func(path string, h session.Holder, wait time.Duration) {
		log.Info("waiting for the lock", "lock", path, "holder", h.String(), "up_to", wait)
	}

	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	mon := newMonitor(m, log)
	done := make(chan struct{})
	go func() {
		defer close(done)
		mon.run(ctx, f.interval)
	}()
	ready := func() {
		notify(log, sdnotify.Ready, sdnotify.Status("watching"))
	}
	// Retention right after each close, from the watch loop; the monitor
	// applies it on its beats too (the two never run at once: retain
	// takes the lock).
	settled := func(ctx context.Context) { retainAll(ctx, m, log, nil) }
	// Reverts on unmount: the restore's own configuration, quiet, its
	// warnings logged.
	rc := rollbackConfig(e)
	rc.Progress, rc.Warn = nil, func(s string) { log.Warn(s) }
	rc.Manager = func() *session.Manager { return m }
	err := m.Watch(ctx, session.WatchOptions{Interval: f.interval, GrowEvery: f.growEvery, Ready: ready, Settled: settled,
		Revert: rollback.Reverter{Cfg: rc, Log: log}})
	notify(log, sdnotify.Stopping, sdnotify.Status("stopping"))
	cancel()
	<-done
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	log.Info("stopped")
	return nil
}

// notify tells systemd (the unit is Type=notify); under no service manager
// it does nothing. A failure is logged, not fatal: the watcher works
// without it.
func notify(log *slog.Logger, lines ...string) {
	if sent, err := sdnotify.Notify(lines...); err != nil {
		log.Warn("cannot tell systemd", "err", err)
	} else if sent {
		log.Debug("told systemd", "state", lines)
	}
}

// monitor looks at the snapshots and the stores on every beat: it logs
// COW use and low store space; when the kernel has invalidated a snapshot
// it reconciles at once, which marks the session invalid, keeps it, and
// arms a fresh one (retried by the watcher until the store has room again);
// and it logs an error for every session that ends up kept as invalid,
// whichever reconcile (its own or the watcher's) got to it first.
type monitor struct {
	m        *session.Manager
	log      *slog.Logger
	low      map[string]bool   // stores warned about
	snapshot map[string]bool   // "device/session" invalid snapshots warned about
	invalid  map[string]bool   // invalid session directories known
	short    map[string]string // devices whose retention cannot free enough: why, as logged
}

// newMonitor notes the sessions already invalid, so that only new ones are
// reported as they appear (`dmsnap status` lists them all).
func newMonitor(m *session.Manager, log *slog.Logger) *monitor {
	mon := &monitor{m: m, log: log, low: map[string]bool{}, snapshot: map[string]bool{}, invalid: map[string]bool{}, short: map[string]string{}}
	if reg, err := m.Registry(); err == nil {
		for _, d := range reg.Devices {
			for _, info := range invalidSessions(d) {
				mon.invalid[info.Dir] = true
			}
		}
	}
	return mon
}

// invalidSessions lists the finished sessions of d flagged invalid.
func invalidSessions(d *session.Device) []snapstore.SessionInfo {
	infos, err := snapstore.ListSessions(d.Store)
	if err != nil {
		return nil
	}
	var out []snapstore.SessionInfo
	for _, info := range infos {
		if info.Name == d.Name && info.Status == snapstore.StatusInvalid {
			out = append(out, info)
		}
	}
	return out
}

// spaceEvery is how often the stores of devices with a --min-free are
// looked at (one statfs each): a live session filling the store must be
// made room for before the kernel drops its snapshot, not a beat later.
const spaceEvery = time.Second

// retainEvery is how often the watcher applies every device's retention
// policy besides after each close: rules by age (--keep-within,
// --keep-daily, ...) remove sessions as time passes, with no session
// closing to trigger them.
const retainEvery = time.Hour

func (mon *monitor) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	sp := time.NewTicker(spaceEvery)
	defer sp.Stop()
	rt := time.NewTicker(retainEvery)
	defer rt.Stop()
	finishMerges(ctx, mon.m, mon.log) // a merge that finished while no watcher ran
	retainAll(ctx, mon.m, mon.log, mon.short)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			mon.beat(ctx)
		case <-sp.C:
			if mon.storeShort() {
				retainAll(ctx, mon.m, mon.log, mon.short)
			}
		case <-rt.C:
			retainAll(ctx, mon.m, mon.log, mon.short)
		}
	}
}

// storeShort reports whether the store of a device with a --min-free has
// less free space than that.
func (mon *monitor) storeShort() bool {
	reg, err := mon.m.Registry()
	if err != nil {
		return false
	}
	for _, d := range reg.Devices {
		if d.Retention == nil || d.Retention.MinFree == 0 {
			continue
		}
		if sp, err := storeSpace(d.Store); err == nil && int64(sp.FreeBytes) < d.Retention.MinFree {
			return true
		}
	}
	return false
}

func (mon *monitor) beat(ctx context.Context) {
	log := mon.log
	finishMerges(ctx, mon.m, log)
	sts, err := mon.m.Status(ctx)
	if err != nil {
		if ctx.Err() == nil {
			log.Error("status", "err", err)
		}
		return
	}
	reconcile := false
	for _, st := range sts {
		d := st.Device
		if sp, err := storeSpace(d.Store); err == nil {
			limit := max(uint64(lowSpaceBytes), uint64(float64(sp.TotalBytes)*lowSpaceFraction))
			switch {
			case sp.FreeBytes < limit && !mon.low[d.Store]:
				mon.low[d.Store] = true
				log.Warn("store nearly full: the kernel drops a snapshot whose COW cannot grow", "device", d.Name, "store", d.Store,
					"free_bytes", sp.FreeBytes, "total_bytes", sp.TotalBytes)
			case sp.FreeBytes >= limit && mon.low[d.Store]:
				delete(mon.low, d.Store)
				log.Info("store has room again", "device", d.Name, "store", d.Store, "free_bytes", sp.FreeBytes)
			}
		} else {
			log.Warn("store unreadable", "device", d.Name, "store", d.Store, "err", err)
		}
		for _, info := range invalidSessions(d) {
			if mon.invalid[info.Dir] {
				continue
			}
			mon.invalid[info.Dir] = true
			reason := ""
			if info.Meta != nil && info.Meta.Dmsnap != nil {
				reason = info.Meta.Dmsnap.InvalidReason
			}
			log.Error("session kept as invalid: its pre-images are incomplete and restoring through it cannot give the device back exactly",
				"device", d.Name, "session", info.ID, "reason", reason)
		}
		if st.Stack == nil {
			continue
		}
		for _, snap := range st.Stack.Snapshots {
			s := d.Session(snap.N)
			if s == nil {
				continue
			}
			key := fmt.Sprintf("%s/%d", d.Name, snap.N)
			switch {
			case snap.State == session.SnapshotInvalid && s.State != session.SessionInvalid:
				reconcile = true
				if !mon.snapshot[key] {
					mon.snapshot[key] = true
					log.Warn("snapshot invalidated by the kernel (store full or I/O error): marking the session invalid and arming a new one",
						"device", d.Name, "session", snap.N, "dir", s.Dir)
				}
			case snap.State == session.SnapshotActive:
				log.Debug("cow use", "device", d.Name, "session", snap.N,
					"cow_used_bytes", snap.Allocated*512, "cow_size_bytes", snap.Total*512)
			}
		}
	}
	// Retention after what the beat's reconciles closed.
	retainAll(ctx, mon.m, log, mon.short)
	if reconcile {
		if _, err := mon.m.Reconcile(ctx); err != nil && ctx.Err() == nil {
			log.Error("reconcile after invalidation failed; retrying on the next beat", "err", err)
		}
	}
}
