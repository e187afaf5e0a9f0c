package session_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/session/sessiontest"
)

const mib = 1 << 20

func (w *world) activatePrealloc(n int64) *session.Device {
	w.t.Helper()
	d, err := w.manager().Activate(bgctx, session.ActivateRequest{Device: rawDev, Store: w.store, Prealloc: n})
	if err != nil {
		w.t.Fatalf("activate: %v", err)
	}
	return d
}

func (w *world) grow(skip func(string) bool) []session.Growth {
	w.t.Helper()
	w.sys.ResetCalls()
	g, err := w.manager().GrowCOWs(bgctx, skip)
	if err != nil {
		w.t.Fatal(err)
	}
	return g
}

func (w *world) use(n int) session.COWUse {
	w.t.Helper()
	u, err := w.sys.Kernel.COWUse(bgctx, "sdb1", n)
	if err != nil {
		w.t.Fatal(err)
	}
	return u
}

// The live session's COW grows by a step when its frontier comes within
// two steps of the fast end, from the fast end, or from the frontier when
// that is past it; not when it is far, near the file's end, unmapped, or
// skipped. What was written is counted in state.json.
func TestGrowCOWsFollowsTheFrontier(t *testing.T) {
	w := newWorld(t)
	w.activatePrealloc(256 * mib)
	dir := w.device().Current().Dir
	set := func(allocated, fastEnd, size uint64) {
		w.sys.Kernel.SetCOWUse("sdb1", 1, session.COWUse{Allocated: allocated, FastEnd: fastEnd, Size: size})
	}
	step := uint64(session.GrowStep)

	set(8*mib, 256*mib, 1<<30)
	if g := w.grow(nil); len(g) != 0 || len(w.sys.Calls) != 0 {
		t.Fatalf("far from the end: grew %+v, calls %q", g, w.sys.Calls)
	}
	set(256*mib-2*step, 256*mib, 1<<30)
	g := w.grow(nil)
	if len(g) != 1 || g[0].Err != nil || g[0].Device != "sdb1" || g[0].Session != 1 || g[0].From != 256*mib || g[0].To != 256*mib+step || g[0].After.FastEnd != 256*mib+step {
		t.Fatalf("near the end: %+v", g)
	}
	if want := []string{"GrowCOW sdb1 1", "FillCOW " + dir + " 268435456 301989888"}; !slices.Equal(w.sys.Calls, want) {
		t.Fatalf("calls %q, want %q", w.sys.Calls, want)
	}
	if st, err := sessiontest.ReadState(dir); err != nil || st.Prealloc != int64(step) {
		t.Fatalf("state %+v, %v: want %d bytes counted", st, err, step)
	}
	// The kernel got past the fast end: from the frontier, on a MiB.
	set(300*mib+4096, 288*mib, 1<<30)
	if g := w.grow(nil); len(g) != 1 || g[0].From != 301*mib || g[0].To != 301*mib+step {
		t.Fatalf("past the end: %+v", g)
	}
	// Near the file's end: a short step, then nothing to do.
	set(990*mib, 1000*mib, 1010*mib)
	if g := w.grow(nil); len(g) != 1 || g[0].From != 1000*mib || g[0].To != 1009*mib {
		t.Fatalf("at the file's end: %+v", g)
	}
	if g := w.grow(nil); len(g) != 0 {
		t.Fatalf("no room left: %+v", g)
	}
	// Nothing mapped (a store that cannot be), or the session skipped.
	set(8*mib, 0, 1<<30)
	if g := w.grow(nil); len(g) != 0 {
		t.Fatalf("not mapped: %+v", g)
	}
	set(250*mib, 256*mib, 1<<30)
	if g := w.grow(func(key string) bool { return key == "sdb1/1" }); len(g) != 0 || len(w.sys.Calls) != 0 {
		t.Fatalf("skipped: %+v", g)
	}
	if len(w.sys.Violations) != 0 {
		t.Fatal(w.sys.Violations)
	}
}

// The step is the device's --prealloc when smaller; --prealloc 0 never
// grows.
func TestGrowCOWsStep(t *testing.T) {
	w := newWorld(t)
	w.activatePrealloc(8 * mib)
	w.sys.Kernel.SetCOWUse("sdb1", 1, session.COWUse{Allocated: 7 * mib, FastEnd: 8 * mib, Size: 1 << 30})
	if g := w.grow(nil); len(g) != 1 || g[0].From != 8*mib || g[0].To != 16*mib {
		t.Fatalf("%+v", g)
	}

	w = newWorld(t)
	w.activatePrealloc(0)
	w.sys.Kernel.SetCOWUse("sdb1", 1, session.COWUse{Allocated: 7 * mib, FastEnd: 8 * mib, Size: 1 << 30})
	if g := w.grow(nil); len(g) != 0 {
		t.Fatalf("--prealloc 0: %+v", g)
	}
}

// An open session grows; after its unmount only the next one does, and a
// closing session's COW is never filled (the fake flags it).
func TestGrowCOWsOnlyTheLiveSession(t *testing.T) {
	w := newWorld(t)
	w.activatePrealloc(256 * mib)
	w.mount()
	w.reconcile()
	if cur := w.device().Current(); cur.State != session.SessionOpen {
		t.Fatalf("session 1 %s, want open", cur.State)
	}
	w.sys.Kernel.SetCOWUse("sdb1", 1, session.COWUse{Allocated: 250 * mib, FastEnd: 256 * mib, Size: 1 << 30})
	if g := w.grow(nil); len(g) != 1 || g[0].Session != 1 || g[0].To <= g[0].From {
		t.Fatalf("open session: %+v", g)
	}
	w.unmount()
	w.tick(time.Minute)
	w.reconcile()
	w.steady(2, false)
	w.sys.Kernel.SetCOWUse("sdb1", 2, session.COWUse{Allocated: 250 * mib, FastEnd: 256 * mib, Size: 1 << 30})
	g := w.grow(nil)
	if len(g) != 1 || g[0].Session != 2 {
		t.Fatalf("after the unmount: %+v", g)
	}
	if len(w.sys.Violations) != 0 {
		t.Fatal(w.sys.Violations)
	}
}

// A lock held by another command: the grow says ErrLocked and changes
// nothing; a kernel failure is reported per session.
func TestGrowCOWsLockedOrFailing(t *testing.T) {
	w := newWorld(t)
	w.activatePrealloc(256 * mib)
	w.sys.Kernel.SetCOWUse("sdb1", 1, session.COWUse{Allocated: 250 * mib, FastEnd: 256 * mib, Size: 1 << 30})
	l, err := session.AcquireLock(bgctx, w.state, 0)
	if err != nil {
		t.Fatal(err)
	}
	m := w.manager()
	m.LockWait = 50 * time.Millisecond
	g, err := m.GrowCOWs(bgctx, nil)
	if err != nil || len(g) != 1 || !errors.Is(g[0].Err, session.ErrLocked) || g[0].To != 0 {
		t.Fatalf("locked: %+v, %v", g, err)
	}
	l.Release()
	if u := w.use(1); u.FastEnd != 256*mib {
		t.Fatalf("use %+v after a locked grow", u)
	}
	w.sys.FailCalls("GrowCOW", errors.New("device busy"))
	g = w.grow(nil)
	if len(g) != 1 || g[0].Err == nil || !strings.Contains(g[0].Err.Error(), "growing the COW of sdb1 session 1: device busy") {
		t.Fatalf("failing: %+v", g)
	}
}

// The watcher grows on its own beat, with no mount event and its
// reconcile beat an hour away.
func TestWatchGrowsCOW(t *testing.T) {
	w := newWorld(t)
	w.activatePrealloc(256 * mib)
	w.sys.Kernel.SetCOWUse("sdb1", 1, session.COWUse{Allocated: 250 * mib, FastEnd: 256 * mib, Size: 1 << 30})
	ctx, cancel := context.WithCancel(bgctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- w.manager().Watch(ctx, session.WatchOptions{MountInfo: "/proc/self/mountinfo", Interval: time.Hour, GrowEvery: 10 * time.Millisecond})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for w.use(1).FastEnd < 256*mib+2*session.GrowStep {
		if time.Now().After(deadline) {
			t.Fatalf("the watcher did not grow the COW: %+v", w.use(1))
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Two steps ahead of the frontier, it stops.
	time.Sleep(100 * time.Millisecond)
	if u := w.use(1); u.FastEnd != 256*mib+2*session.GrowStep {
		t.Fatalf("grew past two steps ahead: %+v", u)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
