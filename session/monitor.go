package session

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/snapstore"
)

// Store free space below which the watcher warns: the larger of
// LowSpaceBytes and LowSpaceFraction of the store's file system.
const (
	LowSpaceBytes    = 64 << 20
	LowSpaceFraction = 0.05
)

// spaceEvery is how often the stores of devices with a --min-free are
// looked at (one statfs each): a live session filling the store must be
// made room for before the kernel drops its snapshot, not a beat later.
const spaceEvery = time.Second

// retainEvery is how often the watcher applies every device's retention
// policy besides after each close: rules by age (--keep-within,
// --keep-daily, ...) remove sessions as time passes, with no session
// closing to trigger them.
const retainEvery = time.Hour

// Space is the free and total bytes of a file system (free: what an
// unprivileged writer may still use).
type Space struct {
	FreeBytes  uint64 `json:"free_bytes"`
	TotalBytes uint64 `json:"total_bytes"`
}

// StoreSpace returns the space of the file system holding dir.
func StoreSpace(dir string) (Space, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return Space{}, err
	}
	bs := uint64(st.Bsize)
	return Space{FreeBytes: st.Bavail * bs, TotalBytes: st.Blocks * bs}, nil
}

// Monitor is what the watcher does between the reconciles that mounts and
// unmounts start: on every beat it finishes instant restores, logs COW use
// and low store space, reconciles at once when the kernel has invalidated
// a snapshot (which marks the session invalid, keeps it, and arms a fresh
// one, retried until the store has room again), and logs an error for
// every session that ends up kept as invalid, whichever reconcile got to it
// first. It applies the retention policies after each beat, once an hour,
// and whenever a store with a --min-free has less than that free.
type Monitor struct {
	m      *Manager
	log    *slog.Logger
	merges MergeKernel
	// Space is the space of a store (StoreSpace; tests replace it).
	Space func(dir string) (Space, error)

	low      map[string]bool   // stores warned about
	snapshot map[string]bool   // "device/session" invalid snapshots warned about
	invalid  map[string]bool   // invalid session directories known
	short    map[string]string // devices whose retention cannot free enough: why, as logged
}

// NewMonitor returns the monitor of m's devices, logging to log, finishing
// instant restores through merges. It notes the sessions already invalid,
// so that only new ones are reported as they appear (`dmsnap status` lists
// them all).
func NewMonitor(m *Manager, log *slog.Logger, merges MergeKernel) *Monitor {
	mon := &Monitor{m: m, log: log, merges: merges, Space: StoreSpace,
		low: map[string]bool{}, snapshot: map[string]bool{}, invalid: map[string]bool{}, short: map[string]string{}}
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
func invalidSessions(d *Device) []snapstore.SessionInfo {
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

// Run beats every interval until ctx ends (and looks at the stores'
// space every second, applies retention every hour).
func (mon *Monitor) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	sp := time.NewTicker(spaceEvery)
	defer sp.Stop()
	rt := time.NewTicker(retainEvery)
	defer rt.Stop()
	FinishMergesLogged(ctx, mon.m, mon.merges, mon.log) // a merge that finished while no watcher ran
	mon.Retain(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			mon.Beat(ctx)
		case <-sp.C:
			if mon.storeShort() {
				mon.Retain(ctx)
			}
		case <-rt.C:
			mon.Retain(ctx)
		}
	}
}

// storeShort reports whether the store of a device with a --min-free has
// less free space than that.
func (mon *Monitor) storeShort() bool {
	reg, err := mon.m.Registry()
	if err != nil {
		return false
	}
	for _, d := range reg.Devices {
		if d.Retention == nil || d.Retention.MinFree == 0 {
			continue
		}
		if sp, err := mon.Space(d.Store); err == nil && int64(sp.FreeBytes) < d.Retention.MinFree {
			return true
		}
	}
	return false
}

// Beat is one look at every device: see Monitor.
func (mon *Monitor) Beat(ctx context.Context) {
	log := mon.log
	FinishMergesLogged(ctx, mon.m, mon.merges, log)
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
		mon.checkSpace(d)
		mon.reportInvalid(d)
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
			case snap.State == SnapshotInvalid && s.State != SessionInvalid:
				reconcile = true
				if !mon.snapshot[key] {
					mon.snapshot[key] = true
					log.Warn("snapshot invalidated by the kernel (store full or I/O error): marking the session invalid and arming a new one",
						"device", d.Name, "session", snap.N, "dir", s.Dir)
				}
			case snap.State == SnapshotActive:
				log.Debug("cow use", "device", d.Name, "session", snap.N,
					"cow_used_bytes", snap.Allocated*512, "cow_size_bytes", snap.Total*512)
			}
		}
	}
	// Retention after what the beat's reconciles closed.
	mon.Retain(ctx)
	if reconcile {
		if _, err := mon.m.Reconcile(ctx); err != nil && ctx.Err() == nil {
			log.Error("reconcile after invalidation failed; retrying on the next beat", "err", err)
		}
	}
}

// checkSpace warns once when d's store runs low, and says when it has
// room again.
func (mon *Monitor) checkSpace(d *Device) {
	sp, err := mon.Space(d.Store)
	if err != nil {
		mon.log.Warn("store unreadable", "device", d.Name, "store", d.Store, "err", err)
		return
	}
	limit := max(uint64(LowSpaceBytes), uint64(float64(sp.TotalBytes)*LowSpaceFraction))
	switch {
	case sp.FreeBytes < limit && !mon.low[d.Store]:
		mon.low[d.Store] = true
		mon.log.Warn("store nearly full: the kernel drops a snapshot whose COW cannot grow", "device", d.Name, "store", d.Store,
			"free_bytes", sp.FreeBytes, "total_bytes", sp.TotalBytes)
	case sp.FreeBytes >= limit && mon.low[d.Store]:
		delete(mon.low, d.Store)
		mon.log.Info("store has room again", "device", d.Name, "store", d.Store, "free_bytes", sp.FreeBytes)
	}
}

// reportInvalid logs each session of d newly kept as invalid.
func (mon *Monitor) reportInvalid(d *Device) {
	for _, info := range invalidSessions(d) {
		if mon.invalid[info.Dir] {
			continue
		}
		mon.invalid[info.Dir] = true
		reason := ""
		if info.Meta != nil && info.Meta.Dmsnap != nil {
			reason = info.Meta.Dmsnap.InvalidReason
		}
		mon.log.Error("session kept as invalid: its pre-images are incomplete and restoring through it cannot give the device back exactly",
			"device", d.Name, "session", info.ID, "reason", reason)
	}
}

// Retain applies every device's retention policy, logging what it removes
// and, once per change, a device whose policy cannot free enough.
func (mon *Monitor) Retain(ctx context.Context) { retainAll(ctx, mon.m, mon.log, mon.short) }

// RetainAll applies every device's retention policy, logging what it
// removes (the watcher, after each close).
func RetainAll(ctx context.Context, m *Manager, log *slog.Logger) { retainAll(ctx, m, log, nil) }

// retainAll applies every device's retention policy. short, when not nil,
// remembers which devices' policies cannot free enough, so that each is
// warned about once per change.
func retainAll(ctx context.Context, m *Manager, log *slog.Logger, short map[string]string) {
	reg, err := m.Registry()
	if err != nil {
		return
	}
	for _, d := range reg.Devices {
		if d.Retention == nil {
			continue
		}
		plan, err := m.Retain(ctx, d.Name, false, func(info snapstore.SessionInfo, why string) {
			log.Info("retention removed a session", "device", d.Name, "session", info.ID, "by", why, "policy", d.Retention.String())
		})
		switch {
		case err != nil:
			if ctx.Err() == nil {
				log.Error("retention", "device", d.Name, "err", err)
			}
		case short == nil:
		case plan.Short != "" && short[d.Name] != plan.Short:
			short[d.Name] = plan.Short
			log.Warn("retention cannot free enough space: the kernel drops the live session's snapshot when the store fills", "device", d.Name, "why", plan.Short)
		case plan.Short == "":
			delete(short, d.Name)
		}
	}
}

// FinishMergesLogged finishes the instant restores that are done
// (Manager.FinishMerges over k) and logs each outcome: the watcher's beat,
// and attach's after it rebuilt a stack.
func FinishMergesLogged(ctx context.Context, m *Manager, k MergeKernel, log *slog.Logger) {
	outs, err := m.FinishMerges(ctx, k)
	for _, o := range outs {
		switch {
		case o.Problem != "":
			log.Error("instant restore needs attention", "device", o.Merge.Device, "problem", o.Problem)
		case o.Finished && o.Undo != "":
			log.Info("instant restore finished", "device", o.Merge.Device, "restored_before", o.Merge.Session,
				"undo", "dmsnap restore "+o.Merge.Device+" --session "+o.Undo)
		case o.Finished:
			log.Info("instant restore finished", "device", o.Merge.Device, "restored_before", o.Merge.Session)
		}
	}
	if err != nil && ctx.Err() == nil {
		log.Error("instant restore", "err", err)
	}
}
