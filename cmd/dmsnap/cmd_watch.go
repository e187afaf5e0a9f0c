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
	"github.com/dmsnap/dmsnap/session/system"
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
	mon := session.NewMonitor(m, log, system.Merges{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		mon.Run(ctx, f.interval)
	}()
	ready := func() {
		notify(log, sdnotify.Ready, sdnotify.Status("watching"))
	}
	// Retention right after each close, from the watch loop; the monitor
	// applies it on its beats too (the two never run at once: retain
	// takes the lock).
	settled := func(ctx context.Context) { session.RetainAll(ctx, m, log) }
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
