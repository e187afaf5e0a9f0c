package session_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/session"
	"golang.org/x/sys/unix"
)

// lockedBuffer is a log sink safe for the watcher's goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestWatchFollowsRealMounts runs the watcher against a real mount table
// (in a private mount namespace) and the fake kernel and store: the fake
// origin of sdb1 gets the device number of a tmpfs, whose bind mounts are
// then the mounts of the origin. The watcher must open a session at the
// mount and rotate at the unmount, woken by poll(2) alone (its beat is an
// hour), and must keep the session boundary of an unmount and mount that
// happen while another command holds the lock.
func TestWatchFollowsRealMounts(t *testing.T) {
	w := newWorld(t)
	w.activate()
	var readyCalls atomic.Int32 // WatchOptions.Ready: once, when watching
	ns := watchInNamespace(t, w, session.WatchOptions{Ready: func() { readyCalls.Add(1) }})
	bind, unbind, logs := ns.bind, ns.unbind, ns.logs
	// until waits for the registry to show sdb1's live session as n in
	// state, with every older session gone.
	until := func(n int, state session.SessionState) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			d := w.device()
			if len(d.Sessions) == 1 && d.Sessions[0].N == n && d.Sessions[0].State == state {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("sessions %v, want only %d %s; watcher log:\n%s", sessions(d), n, state, logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	until(1, session.SessionArmed)
	for deadline := time.Now().Add(10 * time.Second); readyCalls.Load() == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the watcher never said it was watching (WatchOptions.Ready); log:\n%s", logs.String())
		}
	}
	bind()
	until(1, session.SessionOpen)
	unbind()
	until(2, session.SessionArmed)
	w.steady(2, false)

	// An unmount and a mount while another command holds the lock: the
	// watcher is held up, yet session 2 ends at the unmount and session 3
	// is the new mount's.
	bind()
	until(2, session.SessionOpen)
	l, err := session.AcquireLock(context.Background(), w.state, 0)
	if err != nil {
		t.Fatal(err)
	}
	unbind()
	time.Sleep(100 * time.Millisecond)
	bind()
	time.Sleep(100 * time.Millisecond)
	l.Release()
	until(3, session.SessionOpen)
	unbind()
	until(4, session.SessionArmed)
	w.steady(4, false)

	ns.stop()
	if n := readyCalls.Load(); n != 1 {
		t.Fatalf("WatchOptions.Ready called %d times, want once", n)
	}
}

// watchNS is a watcher running against a real mount table in a private
// mount namespace (see TestWatchFollowsRealMounts); the test's thread
// joins the namespace, where bind and unbind mount and unmount the fake
// origin.
type watchNS struct {
	bind, unbind func()
	logs         *lockedBuffer
	stop         func()
}

func watchInNamespace(t *testing.T, w *world, opt session.WatchOptions) watchNS {
	t.Helper()
	root := t.TempDir()
	base, point := filepath.Join(root, "base"), filepath.Join(root, "mnt")
	os.Mkdir(base, 0o755)
	os.Mkdir(point, 0o755)

	type nsInfo struct {
		fd  int
		dev session.DevNum
		err error
	}
	nsReady := make(chan nsInfo, 1)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	watchDone := make(chan error, 1)
	logs := &lockedBuffer{}

	// The watcher's thread: a new mount namespace holding the tmpfs.
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		fail := func(err error) { nsReady <- nsInfo{err: err}; watchDone <- err }
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			fail(err)
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			fail(err)
			return
		}
		if err := unix.Mount("dmsnaptest", base, "tmpfs", 0, "size=1m"); err != nil {
			fail(err)
			return
		}
		var st unix.Stat_t
		if err := unix.Stat(base, &st); err != nil {
			fail(err)
			return
		}
		nsfd, err := unix.Open("/proc/thread-self/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			fail(err)
			return
		}
		dev := session.DevNumFromRdev(st.Dev)
		w.sys.Kernel.SetOriginDev("sdb1", dev)
		m := w.manager()
		m.Log = slog.New(slog.NewTextHandler(logs, nil))
		// The tmpfs's own mount at base is not a mount of the origin.
		m.ReadMounts = func() ([]session.MountInfo, error) {
			f, err := os.Open("/proc/thread-self/mountinfo")
			if err != nil {
				return nil, err
			}
			defer f.Close()
			ms, err := session.ParseMountInfo(f)
			return slices.DeleteFunc(ms, func(mi session.MountInfo) bool { return mi.MountPoint == base }), err
		}
		nsReady <- nsInfo{fd: nsfd, dev: dev}
		opt.MountInfo, opt.Retry = "/proc/thread-self/mountinfo", 50*time.Millisecond
		if opt.Interval == 0 {
			opt.Interval = time.Hour
		}
		watchDone <- m.Watch(ctx, opt)
	}()
	ns := <-nsReady
	if ns.err != nil {
		cancel()
		t.Fatalf("set up the namespace: %v", ns.err)
	}
	t.Cleanup(func() { unix.Close(ns.fd) })

	// The test's own thread joins that namespace to mount and unmount.
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setns(ns.fd, unix.CLONE_NEWNS); err != nil {
		t.Fatalf("join the namespace: %v", err)
	}
	// This thread is now in the test namespace for good: let it die with
	// the test's goroutine (the test runner starts each test on its own).
	return watchNS{
		bind: func() {
			t.Helper()
			if err := unix.Mount(base, point, "", unix.MS_BIND, ""); err != nil {
				t.Fatal(err)
			}
		},
		unbind: func() {
			t.Helper()
			if err := unix.Unmount(point, 0); err != nil {
				t.Fatal(err)
			}
		},
		logs: logs,
		stop: func() {
			t.Helper()
			cancel()
			select {
			case err := <-watchDone:
				if err != nil {
					t.Fatalf("Watch: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Watch did not stop with its context")
			}
			if err := unix.Unmount(base, 0); err != nil {
				t.Fatal(err)
			}
		},
	}
}

// fakeReverter is session.Reverter noting its calls; its revert does the
// bookkeeping of a real one (a rebase).
type fakeReverter struct {
	w     *world
	mu    sync.Mutex
	calls []string
}

func (f *fakeReverter) Hold(name string, wait bool) (*os.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("hold %s wait=%v", name, wait))
	return os.Open(os.DevNull)
}

// Revert does what a revert does to the registry: the armed session is
// closed (its pre-images join the plan), the next one records the
// revert's instant restore, the base stays and the revert is no longer
// pending.
func (f *fakeReverter) Revert(ctx context.Context, name string, hold *os.File) (bool, error) {
	d := f.w.device()
	cur := d.Current()
	f.mu.Lock()
	f.calls = append(f.calls, fmt.Sprintf("revert %s held=%v live=%d %s", name, hold != nil, cur.N, cur.State))
	f.mu.Unlock()
	if hold != nil {
		defer hold.Close()
	}
	m := f.w.manager()
	if _, err := m.Rotate(ctx, name, "fake revert"); err != nil {
		return true, err
	}
	_, err := session.SetRevertState(f.w.state, name, session.RevertState{Base: d.RevertBase})
	return true, err
}

func (f *fakeReverter) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// TestWatchRevertsAtUnmount: on a device that reverts, the watcher holds
// the origin as soon as it sees the unmount, before the session closes,
// and reverts with that hold once the session is closed and the next one
// armed; a device that keeps what sessions write is never held.
func TestWatchRevertsAtUnmount(t *testing.T) {
	w := newWorld(t)
	w.activateReverting()
	rv := &fakeReverter{w: w}
	ns := watchInNamespace(t, w, session.WatchOptions{Revert: rv, Interval: 50 * time.Millisecond})
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; calls %v; log:\n%s", what, rv.seen(), ns.logs.String())
			}
		}
	}
	ns.bind()
	waitFor("the mount to open session 1 with a revert pending", func() bool {
		d := w.device()
		cur := d.Current()
		return cur != nil && cur.State == session.SessionOpen && d.RevertPending
	})
	if got := rv.seen(); len(got) != 0 {
		t.Fatalf("calls while mounted: %v", got)
	}
	ns.unbind()
	// The hold at the unmount, the revert once session 1 is closed and 2
	// armed; session 3 records the revert, and on a later beat, with
	// nothing mounted since, the watcher holds the device again (without
	// waiting), closes 3 and makes 4 the base.
	waitFor("the revert and the base to move", func() bool { return w.device().RevertBase == 4 })
	// The revert is logged after the registry moves the base.
	waitFor("the revert's undo session to be logged", func() bool { return strings.Contains(ns.logs.String(), "undo_session=") })
	want := []string{"hold sdb1 wait=true", "revert sdb1 held=true live=2 armed", "hold sdb1 wait=false"}
	// Under load a beat may find the unmounted device before the watcher
	// has read the unmount event: it then reverts with a hold of its own
	// (held=false), and the hold taken at the event is let go.
	raced := []string{"revert sdb1 held=false live=2 armed", "hold sdb1 wait=true", "hold sdb1 wait=false"}
	if got := rv.seen(); !slices.Equal(got, want) && !slices.Equal(got, raced) {
		t.Fatalf("calls %v, want %v", got, want)
	}
	if d := w.device(); d.RevertPending || d.Current().N != 4 || d.Current().State != session.SessionArmed {
		t.Fatalf("after the revert: %+v", d)
	}
	if !strings.Contains(ns.logs.String(), "undo_session=") {
		t.Fatalf("the session that recorded the revert was not logged:\n%s", ns.logs.String())
	}

	// Writes to the unmounted base session (a mount and an unmount the
	// watcher did not see) revert too.
	w.sys.Kernel.SetSnapshotData("sdb1", 4, 8)
	waitFor("a revert of the written base, and the base to move", func() bool { return w.device().RevertBase == 6 })
	if got := rv.seen(); len(got) != 5 || got[3] != "revert sdb1 held=false live=4 armed" {
		t.Fatalf("calls %v: want the written base reverted (a hold of its own) and the base moved", got)
	}

	// Keep mode: the next mount and unmount make no call.
	if _, err := w.manager().SetOnUnmount(bgctx, "sdb1", session.OnUnmountKeep); err != nil {
		t.Fatal(err)
	}
	ns.bind()
	waitFor("session 6 to open", func() bool { cur := w.device().Current(); return cur.N == 6 && cur.State == session.SessionOpen })
	ns.unbind()
	waitFor("session 7 to be armed", func() bool { cur := w.device().Current(); return cur.N == 7 && cur.State == session.SessionArmed })
	ns.stop()
	if got := rv.seen(); len(got) != 5 {
		t.Fatalf("keep mode: calls %v", got)
	}
}
