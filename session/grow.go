package session

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Growing a live session's fast COW. At arming the Store writes zeros over
// the start of cow.img (ArmSpec.Prealloc) and the Kernel maps them straight
// to the store's block device; a session whose pre-images outgrow them
// would send the rest through the store's filesystem, at the cost the
// README's benchmarks show. The watcher keeps the mapped part ahead of the
// kernel: when a session's exception store comes within two steps of its
// end, it writes the next step ahead and maps it (COWGrower.GrowCOW), with
// the COW device suspended meanwhile, which pauses the session's first
// writes for as long as writing GrowStep bytes takes.

// GrowStep is how much of a COW the watcher writes ahead and maps at a
// time: at most a quarter of the store's free space, and never more than
// the device's --prealloc (0 turns growing off with the rest).
const GrowStep = 32 << 20

// growQuiet is how long the watcher leaves a session alone after a grow
// that wrote nothing or failed (a full store, say): every grow suspends
// the COW device, even one that then finds no room.
const growQuiet = 30 * time.Second

// COWUse is how much of a live session's COW the kernel uses and how much
// of it is mapped straight to the store's device, in bytes.
type COWUse struct {
	Allocated uint64 // the exception store's frontier: nothing at or past it was ever written
	FastEnd   uint64 // end of the part mapped straight (0: none is; the store cannot be)
	Size      uint64 // the COW's size
}

// COWGrower is the part of a Kernel that grows the fast part of a live COW
// (dm.Stack.GrowCOW). system.Kernel and sessiontest.Kernel have it; a
// Kernel without it never grows.
type COWGrower interface {
	// COWUse reads session n's COW use.
	COWUse(ctx context.Context, name string, n int) (COWUse, error)
	// GrowCOW suspends session n's COW device, has fill write zeros over
	// a region of cowFile at or past the frontier (up to want bytes), maps
	// what it wrote and resumes. It returns the use after and the region
	// filled (from == to: none, there was no room).
	GrowCOW(ctx context.Context, name string, n int, cowFile string, want uint64, fill func(from, to uint64) (uint64, error)) (after COWUse, from, to uint64, err error)
}

// COWFiller is the part of a Store that writes zeros ahead in a live
// session's cow.img (snapstore.FillCow).
type COWFiller interface {
	// FillCOW writes zeros over [from, to) of the cow.img of the session
	// in dir, or less (no more than a quarter of the store's free space,
	// none where the store cannot be mapped), durably, and returns the
	// end of what it wrote.
	FillCOW(ctx context.Context, dir string, from, to uint64) (uint64, error)
}

// Growth is what GrowCOWs did to one session.
type Growth struct {
	Device   string
	Session  int
	From, To uint64 // the region written ahead and mapped (empty: none)
	After    COWUse
	Took     time.Duration // the COW device was suspended for about this long
	Err      error
}

// Key names the session: "NAME/N".
func (g Growth) Key() string { return g.Device + "/" + strconv.Itoa(g.Session) }

// needsGrowth reports whether a COW's mapped part is within two steps of
// the frontier (or behind it) and the file has room for more.
func needsGrowth(u COWUse, step uint64) bool {
	return u.FastEnd > 0 && u.Allocated+2*step >= u.FastEnd && u.FastEnd+(1<<20)+4096 <= u.Size
}

// GrowCOWs grows the COW of every live session (armed or open) of an
// active device with --prealloc that needs it (see above), one step each,
// skipping the sessions skip names (Growth.Key). It looks without the
// lock and grows with it, after checking the session is still the same.
// It returns what it did, a failure per session in Growth.Err; a lock held
// by another command is ErrLocked there (try again later).
func (m *Manager) GrowCOWs(ctx context.Context, skip func(key string) bool) ([]Growth, error) {
	g, ok := m.Kernel.(COWGrower)
	f, ok2 := m.Store.(COWFiller)
	if !ok || !ok2 {
		return nil, nil
	}
	reg, err := m.Registry()
	if err != nil {
		return nil, err
	}
	var out []Growth
	for _, d := range reg.Devices {
		cur := d.Current()
		if d.State != DeviceActive || d.Prealloc <= 0 || cur == nil || cur.Dir == "" ||
			(cur.State != SessionArmed && cur.State != SessionOpen) {
			continue
		}
		step := min(uint64(d.Prealloc), GrowStep)
		gr := Growth{Device: d.Name, Session: cur.N}
		if skip != nil && skip(gr.Key()) {
			continue
		}
		use, err := g.COWUse(ctx, d.Name, cur.N)
		if err != nil || !needsGrowth(use, step) {
			continue // a stack being changed, or one the reconcile will see to
		}
		gr.Err = m.withLock(ctx, func(reg *Registry) error {
			d := reg.Device(gr.Device)
			if d == nil || d.State != DeviceActive {
				return nil
			}
			cur := d.Current()
			if cur == nil || cur.N != gr.Session || (cur.State != SessionArmed && cur.State != SessionOpen) {
				return nil
			}
			dir := cur.Dir
			start := time.Now()
			after, from, to, err := g.GrowCOW(ctx, d.Name, cur.N, m.Store.COWFile(dir), step, func(from, to uint64) (uint64, error) {
				return f.FillCOW(ctx, dir, from, to)
			})
			gr.Took = time.Since(start)
			if err != nil {
				return fmt.Errorf("growing the COW of %s session %d: %w", d.Name, cur.N, err)
			}
			gr.From, gr.To, gr.After = from, to, after
			return nil
		})
		out = append(out, gr)
	}
	return out, nil
}

// growLoop runs GrowCOWs every interval until ctx ends, logging what grew
// and leaving a session alone for growQuiet after a grow that did nothing
// or failed other than on the lock.
func (m *Manager) growLoop(ctx context.Context, interval time.Duration) {
	quiet := map[string]time.Time{}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := m.now()
		grown, err := m.GrowCOWs(ctx, func(key string) bool { return now.Before(quiet[key]) })
		if err != nil && ctx.Err() == nil {
			m.log().Error("grow COWs", "err", err)
		}
		for _, g := range grown {
			switch {
			case g.Err != nil && errors.Is(g.Err, ErrLocked):
			case g.Err != nil:
				m.log().Error("grow COW", "device", g.Device, "session", g.Session, "err", g.Err)
				quiet[g.Key()] = now.Add(growQuiet)
			case g.To <= g.From:
				quiet[g.Key()] = now.Add(growQuiet)
			default:
				m.log().Info("COW grown", "device", g.Device, "session", g.Session, "from", g.From, "to", g.To,
					"fast_end", g.After.FastEnd, "allocated", g.After.Allocated, "paused_ms", g.Took.Milliseconds())
			}
		}
	}
}
