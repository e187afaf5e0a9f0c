package session_test

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore/snapstoretest"
)

// monitorWorld is a world whose watcher's monitor logs into a buffer and
// sees the stores' space as the test sets it.
func monitorWorld(t *testing.T) (*world, *session.Monitor, *bytes.Buffer, *session.Space) {
	w := newWorld(t)
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	sp := &session.Space{FreeBytes: 1 << 30, TotalBytes: 2 << 30}
	m := w.manager()
	m.Log = log
	mon := session.NewMonitor(m, log, &fakeMerges{})
	mon.Space = func(string) (session.Space, error) { return *sp, nil }
	return w, mon, &buf, sp
}

// A beat logs COW use, warns once when a store runs low and says when it
// has room again, and an unreadable store is a warning.
func TestMonitorStoreSpace(t *testing.T) {
	w, mon, buf, sp := monitorWorld(t)
	w.activate()
	w.mount()
	w.reconcile()
	mon.Beat(bgctx)
	if !strings.Contains(buf.String(), `msg="cow use" device=sdb1 session=1`) || strings.Contains(buf.String(), "nearly full") {
		t.Fatalf("first beat:\n%s", buf)
	}
	// Below 5 % of 2 GiB (more than 64 MiB): one warning for two beats.
	sp.FreeBytes = 100 << 20
	mon.Beat(bgctx)
	mon.Beat(bgctx)
	if n := strings.Count(buf.String(), "store nearly full"); n != 1 {
		t.Fatalf("%d low-space warnings over two beats, want 1:\n%s", n, buf)
	}
	sp.FreeBytes = 1 << 30
	mon.Beat(bgctx)
	if !strings.Contains(buf.String(), `msg="store has room again"`) {
		t.Fatalf("no word when the store had room again:\n%s", buf)
	}
	mon.Space = func(string) (session.Space, error) { return session.Space{}, errors.New("EIO") }
	mon.Beat(bgctx)
	if !strings.Contains(buf.String(), `msg="store unreadable" device=sdb1`) {
		t.Fatalf("no warning for an unreadable store:\n%s", buf)
	}
}

// A snapshot the kernel invalidated: the beat warns once, reconciles at
// once (the session is kept as invalid and a new one armed and opened,
// since the device is still mounted), and then reports the session kept
// as invalid, once.
func TestMonitorInvalidSnapshot(t *testing.T) {
	w, mon, buf, _ := monitorWorld(t)
	w.activate()
	w.tick(time.Minute)
	w.mount()
	w.reconcile()
	w.sys.Kernel.Invalidate("sdb1", 1)
	w.tick(time.Minute)
	mon.Beat(bgctx)
	if n := strings.Count(buf.String(), "snapshot invalidated by the kernel"); n != 1 {
		t.Fatalf("%d invalidation warnings, want 1:\n%s", n, buf)
	}
	w.steady(2, true) // the beat's reconcile replaced the session
	mon.Beat(bgctx)
	if n := strings.Count(buf.String(), "snapshot invalidated by the kernel"); n != 1 {
		t.Fatalf("%d invalidation warnings after another beat, want 1:\n%s", n, buf)
	}
}

// A finished session flagged invalid in the store is reported once, as
// it appears; a restarted watcher does not report it again.
func TestMonitorReportsInvalidSessions(t *testing.T) {
	w, mon, buf, _ := monitorWorld(t)
	w.activate()
	snapstoretest.Finished(t, w.store, "sdb1", time.Unix(1600000000, 0), "test: the kernel dropped it")
	mon.Beat(bgctx)
	mon.Beat(bgctx)
	if n := strings.Count(buf.String(), `msg="session kept as invalid`); n != 1 || !strings.Contains(buf.String(), `reason="test: the kernel dropped it"`) {
		t.Fatalf("%d reports of the invalid session over two beats, want 1 with its reason:\n%s", n, buf)
	}
	buf.Reset()
	mon2 := session.NewMonitor(w.manager(), slog.New(slog.NewTextHandler(buf, nil)), &fakeMerges{})
	mon2.Space = mon.Space
	mon2.Beat(bgctx)
	if strings.Contains(buf.String(), "session kept as invalid") {
		t.Fatalf("a restarted monitor reported an old invalid session again:\n%s", buf)
	}
}
