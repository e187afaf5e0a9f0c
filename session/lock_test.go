package session

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLockExcludesAndNamesHolder(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	l1, err := AcquireLock(ctx, dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	wantLine := fmt.Sprintf("%d %s\n", os.Getpid(), holderCommand(os.Args))
	if b, _ := os.ReadFile(filepath.Join(dir, LockFile)); string(b) != wantLine || !strings.HasPrefix(holderCommand(os.Args), filepath.Base(os.Args[0])) {
		t.Fatalf("lock file holds %q, want %q: our pid and command", b, wantLine)
	}
	start := time.Now()
	_, err = AcquireLock(ctx, dir, 200*time.Millisecond)
	waited := time.Since(start)
	var le *LockedError
	if !errors.As(err, &le) || !errors.Is(err, ErrLocked) {
		t.Fatalf("second lock: %v, want a LockedError", err)
	}
	if le.Holder.PID != os.Getpid() || le.Holder.Command != holderCommand(os.Args) || le.Path != filepath.Join(dir, LockFile) {
		t.Fatalf("LockedError %+v", le)
	}
	want := fmt.Sprintf("dmsnap pid %d (%s) holds the lock on %s; retry when it is done (--wait DURATION waits longer)", os.Getpid(), holderCommand(os.Args), le.Path)
	if err.Error() != want {
		t.Fatalf("message %q, want %q", err, want)
	}
	if waited < 200*time.Millisecond || waited > 2*time.Second {
		t.Fatalf("waited %v for a 200ms wait", waited)
	}
	if err := l1.Release(); err != nil {
		t.Fatal(err)
	}
	if err := l1.Release(); err != nil {
		t.Fatalf("second release: %v", err)
	}
	l2, err := AcquireLock(ctx, dir, 200*time.Millisecond)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	l2.Release()
}

func TestLockWaitsForRelease(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	l1, err := AcquireLock(ctx, dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Many goroutines contend; the critical sections must never overlap.
	var mu sync.Mutex
	inside, maxInside, done := 0, 0, 0
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := AcquireLock(ctx, dir, 10*time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			inside++
			maxInside = max(maxInside, inside)
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
			mu.Lock()
			inside--
			done++
			mu.Unlock()
			l.Release()
		}()
	}
	time.Sleep(150 * time.Millisecond)
	mu.Lock()
	if done != 0 {
		t.Fatalf("%d goroutines got the lock while it was held", done)
	}
	mu.Unlock()
	l1.Release()
	wg.Wait()
	if done != 8 || maxInside != 1 {
		t.Fatalf("done %d, max holders at once %d", done, maxInside)
	}
}

func TestLockContext(t *testing.T) {
	dir := t.TempDir()
	l, err := AcquireLock(context.Background(), dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	start := time.Now()
	_, err = AcquireLock(ctx, dir, 10*time.Second)
	if !errors.Is(err, context.Canceled) || time.Since(start) > 2*time.Second {
		t.Fatalf("err %v after %v, want context.Canceled soon", err, time.Since(start))
	}
}

// TestLockHelperProcess is not a test: TestLockAcrossProcesses runs the test
// binary with it to hold the lock in another process.
func TestLockHelperProcess(t *testing.T) {
	dir := os.Getenv("DMSNAP_LOCK_HELPER_DIR")
	if dir == "" {
		return
	}
	l, err := AcquireLock(context.Background(), dir, time.Second)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("locked")
	// Hold it until stdin closes, or die holding it.
	bufio.NewReader(os.Stdin).ReadString('\n')
	l.Release()
	os.Exit(0)
}

func TestLockAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestLockHelperProcess$")
	cmd.Env = append(os.Environ(), "DMSNAP_LOCK_HELPER_DIR="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "locked" {
		t.Fatalf("helper: %q %v", line, err)
	}
	_, err = AcquireLock(context.Background(), dir, 100*time.Millisecond)
	var le *LockedError
	if !errors.As(err, &le) || le.Holder.PID != cmd.Process.Pid {
		t.Fatalf("err %v, want a LockedError naming pid %d", err, cmd.Process.Pid)
	}
	// The holder dies without releasing: the kernel drops the lock.
	cmd.Process.Kill()
	cmd.Wait()
	stdin.Close()
	l, err := AcquireLock(context.Background(), dir, 2*time.Second)
	if err != nil {
		t.Fatalf("lock after the holder died: %v", err)
	}
	l.Release()
}

// Two managers of different state directories exclude each other through
// the host lock: device-mapper names are one namespace for the host.
func TestHostLockSpansStateDirectories(t *testing.T) {
	host := filepath.Join(t.TempDir(), "run", "lock")
	a := &Manager{StateDir: t.TempDir(), HostLock: host, LockWait: time.Second}
	b := &Manager{StateDir: t.TempDir(), HostLock: host, LockWait: 200 * time.Millisecond}
	l, err := a.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Lock(context.Background())
	var le *LockedError
	if !errors.As(err, &le) || le.Path != host {
		t.Fatalf("second state directory's lock: %v, want the host lock %s held", err, host)
	}
	// Without the host lock (tests, other hosts' state) they do not.
	c := &Manager{StateDir: t.TempDir(), LockWait: 200 * time.Millisecond}
	lc, err := c.Lock(context.Background())
	if err != nil {
		t.Fatalf("a manager without the host lock: %v", err)
	}
	lc.Release()
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	lb, err := b.Lock(context.Background())
	if err != nil {
		t.Fatalf("after the release: %v", err)
	}
	// The state directory's lock is held too.
	if _, err := AcquireLock(context.Background(), b.StateDir, 100*time.Millisecond); !errors.Is(err, ErrLocked) {
		t.Fatalf("state lock while the manager holds both: %v", err)
	}
	lb.Release()
}

// A held lock is announced once, naming its holder, before the wait; with
// NoLockWait there is no wait and no announcement, only the refusal.
func TestLockWaitNotice(t *testing.T) {
	dir := t.TempDir()
	l, err := AcquireLock(context.Background(), dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	var notices []string
	m := &Manager{StateDir: dir, LockWait: 300 * time.Millisecond, LockNotice: func(path string, h Holder, wait time.Duration) {
		notices = append(notices, fmt.Sprintf("%s %d %s", path, h.PID, h.Command))
	}}
	if _, err := m.Lock(context.Background()); !errors.Is(err, ErrLocked) {
		t.Fatalf("Lock while held: %v", err)
	}
	want := fmt.Sprintf("%s %d %s", filepath.Join(dir, LockFile), os.Getpid(), holderCommand(os.Args))
	if len(notices) != 1 || notices[0] != want {
		t.Fatalf("notices %q, want one: %q", notices, want)
	}
	notices = nil
	m.LockWait = NoLockWait
	start := time.Now()
	if _, err := m.Lock(context.Background()); !errors.Is(err, ErrLocked) || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("NoLockWait: %v after %v, want ErrLocked at once", err, time.Since(start))
	}
	if len(notices) != 0 {
		t.Fatalf("NoLockWait announced a wait: %q", notices)
	}
}

func TestHolderCommand(t *testing.T) {
	if got := holderCommand([]string{"/usr/sbin/dmsnap", "restore", "a\nb"}); got != "dmsnap restore a b" {
		t.Errorf("holderCommand = %q", got)
	}
	long := holderCommand([]string{"x", strings.Repeat("y", 500)})
	if len(long) != maxHolderCommand+3 {
		t.Errorf("a long command is %d bytes", len(long))
	}
	f, err := os.CreateTemp(t.TempDir(), "lock")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for text, want := range map[string]Holder{"42\n": {PID: 42}, "42 dmsnap watch\n": {42, "dmsnap watch"}, "": {}, "x y\n": {}} {
		f.Truncate(0)
		f.WriteAt([]byte(text), 0)
		if got := readHolder(f); got != want {
			t.Errorf("readHolder(%q) = %+v, want %+v", text, got, want)
		}
	}
}
