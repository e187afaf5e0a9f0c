package session

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// inMountNamespace runs fn on a thread of its own in a new, private mount
// namespace, so the test's mounts touch nobody else. The thread is thrown
// away afterwards (the goroutine exits locked).
func inMountNamespace(t *testing.T, fn func(mountinfo string)) {
	t.Helper()
	done := make(chan struct{})
	var setupErr error
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			setupErr = err
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			setupErr = err
			return
		}
		fn("/proc/thread-self/mountinfo")
	}()
	<-done
	if setupErr != nil {
		t.Fatalf("private mount namespace: %v", setupErr)
	}
}

// waitResult runs Wait in the background and returns its result channel.
func waitResult(ctx context.Context, tab *MountTable) chan error {
	ch := make(chan error, 1)
	go func() { ch <- tab.Wait(ctx) }()
	return ch
}

func expectQuiet(t *testing.T, ch chan error, d time.Duration) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("Wait returned %v with no mount change", err)
	case <-time.After(d):
	}
}

func expectWake(t *testing.T, ch chan error, want error) {
	t.Helper()
	select {
	case err := <-ch:
		if !errors.Is(err, want) && err != want {
			t.Fatalf("Wait returned %v, want %v", err, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return")
	}
}

func TestMountTableWaitsForChanges(t *testing.T) {
	dir := t.TempDir()
	point := filepath.Join(dir, "mnt")
	if err := os.Mkdir(point, 0o755); err != nil {
		t.Fatal(err)
	}
	inMountNamespace(t, func(mountinfo string) {
		tab, err := OpenMountTable(mountinfo)
		if err != nil {
			t.Error(err)
			return
		}
		defer tab.Close()
		before, err := tab.Read()
		if err != nil {
			t.Error(err)
			return
		}
		if _, ok := find(before, point); ok {
			t.Errorf("%s mounted before the test", point)
			return
		}

		ctx := context.Background()
		ch := waitResult(ctx, tab)
		expectQuiet(t, ch, 300*time.Millisecond)
		if err := unix.Mount("dmsnaptest", point, "tmpfs", 0, "size=1m"); err != nil {
			t.Errorf("mount tmpfs: %v", err)
			return
		}
		expectWake(t, ch, nil)
		after, err := tab.Read()
		if err != nil {
			t.Error(err)
			return
		}
		m, ok := find(after, point)
		if !ok || m.FSType != "tmpfs" || m.Source != "dmsnaptest" {
			t.Errorf("the new mount is not in the table re-read from offset 0: %+v", m)
			return
		}
		var st unix.Stat_t
		if err := unix.Stat(point, &st); err != nil || DevNumFromRdev(st.Dev) != m.Dev {
			t.Errorf("mount's device %s, stat says %v (%v)", m.Dev, st.Dev, err)
		}
		events := DiffMounts(before, after, func(d DevNum) bool { return d == m.Dev })
		if len(events) != 1 || events[0].Kind != DeviceMounted {
			t.Errorf("events %+v", events)
		}

		// One wake-up per change: the next Wait sleeps again.
		ch = waitResult(ctx, tab)
		expectQuiet(t, ch, 300*time.Millisecond)
		if err := unix.Unmount(point, 0); err != nil {
			t.Errorf("unmount: %v", err)
			return
		}
		expectWake(t, ch, nil)
		final, _ := tab.Read()
		if ev := DiffMounts(after, final, func(d DevNum) bool { return d == m.Dev }); len(ev) != 1 || ev[0].Kind != DeviceUnmounted {
			t.Errorf("unmount events %+v", ev)
		}

		// A change made while nobody waits is reported by the next Wait.
		if err := unix.Mount("dmsnaptest", point, "tmpfs", 0, ""); err != nil {
			t.Errorf("mount: %v", err)
			return
		}
		unix.Unmount(point, 0)
		expectWake(t, waitResult(ctx, tab), nil)

		// Cancelling the context ends a Wait.
		cctx, cancel := context.WithCancel(ctx)
		ch = waitResult(cctx, tab)
		expectQuiet(t, ch, 100*time.Millisecond)
		cancel()
		expectWake(t, ch, context.Canceled)

		// So does Close.
		ch = waitResult(ctx, tab)
		expectQuiet(t, ch, 100*time.Millisecond)
		tab.Close()
		expectWake(t, ch, os.ErrClosed)
		if err := tab.Wait(ctx); !errors.Is(err, os.ErrClosed) {
			t.Errorf("Wait after Close: %v", err)
		}
	})
}

// A change that arrives together with a wake-up (a context ending, or a
// stale wake-up from an earlier Wait) is reported, not swallowed: poll(2)
// has consumed the kernel's flag, so a later Wait would never see it.
func TestMountTableChangeWithWakeUp(t *testing.T) {
	dir := t.TempDir()
	point := filepath.Join(dir, "mnt")
	if err := os.Mkdir(point, 0o755); err != nil {
		t.Fatal(err)
	}
	inMountNamespace(t, func(mountinfo string) {
		tab, err := OpenMountTable(mountinfo)
		if err != nil {
			t.Error(err)
			return
		}
		defer tab.Close()
		tab.interrupt() // a stale wake-up, as an earlier Wait's ended context leaves
		if err := unix.Mount("dmsnaptest", point, "tmpfs", 0, ""); err != nil {
			t.Errorf("mount: %v", err)
			return
		}
		defer unix.Unmount(point, 0)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := tab.Wait(ctx); err != nil {
			t.Errorf("Wait with a change and a stale wake-up pending: %v, want the change", err)
		}
	})
}

func TestMountTableDeadline(t *testing.T) {
	tab, err := OpenMountTable("")
	if err != nil {
		t.Fatal(err)
	}
	defer tab.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = tab.Wait(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		// A mount elsewhere on the host may wake it: that is a nil error,
		// also correct, but then the deadline was not tested. Retry once.
		ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel2()
		start = time.Now()
		err = tab.Wait(ctx2)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait: %v, want the deadline", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Wait took %v past a 50ms deadline", d)
	}
	if _, err := tab.Read(); err != nil {
		t.Fatal(err)
	}
}
