package session_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
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
	defer cancel()
	watchDone := make(chan error, 1)
	logs := &lockedBuffer{}
	var readyCalls atomic.Int32 // WatchOptions.Ready: once, when watching

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
		ready := func() { readyCalls.Add(1) }
		watchDone <- m.Watch(ctx, session.WatchOptions{MountInfo: "/proc/thread-self/mountinfo", Interval: time.Hour, Retry: 50 * time.Millisecond, Ready: ready})
	}()
	ns := <-nsReady
	if ns.err != nil {
		t.Fatalf("set up the namespace: %v", ns.err)
	}
	defer unix.Close(ns.fd)

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
	bind := func() {
		t.Helper()
		if err := unix.Mount(base, point, "", unix.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
	}
	unbind := func() {
		t.Helper()
		if err := unix.Unmount(point, 0); err != nil {
			t.Fatal(err)
		}
	}
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

	cancel()
	select {
	case err := <-watchDone:
		if err != nil {
			t.Fatalf("Watch: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not stop with its context")
	}
	if n := readyCalls.Load(); n != 1 {
		t.Fatalf("WatchOptions.Ready called %d times, want once", n)
	}
	if err := unix.Unmount(base, 0); err != nil {
		t.Fatal(err)
	}
}
