package session_test

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
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
	finishedSession(t, w.store, "sdb1", time.Unix(1600000000, 0), "test: the kernel dropped it")
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

// kernelCOW is a COW file the kernel wrote (snapstore's test data: an
// ext4 session on a 16 MiB device).
func kernelCOW(t *testing.T) []byte {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "snapstore", "testdata", "kernel", "ext4-4k", "cow.img.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// finishedSession makes a converted session of name in store, armed at
// armed, with a COW the kernel wrote; flagged invalid with reason when reason is
// not "".
func finishedSession(t *testing.T, store, name string, armed time.Time, reason string) string {
	t.Helper()
	dir, err := snapstore.CreateSession(store, snapstore.State{Name: name, Device: snapstore.Device{Path: "/dev/" + name, Size: 16 << 20},
		ChunkSize: 4096, Times: snapstore.Times{Armed: armed}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, snapstore.CowFile), kernelCOW(t), 0o600); err != nil {
		t.Fatal(err)
	}
	if dir, err = snapstore.MarkMounted(dir, armed.Add(time.Second), "ext4"); err != nil {
		t.Fatal(err)
	}
	if err := snapstore.MarkUnmounted(dir, armed.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if reason != "" {
		if err := snapstore.MarkInvalid(dir, reason); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := snapstore.Convert(bgctx, dir, snapstore.ConvertOptions{Salvage: true}); err != nil {
		t.Fatal(err)
	}
	return dir
}
