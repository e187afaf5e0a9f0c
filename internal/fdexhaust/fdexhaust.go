// Package fdexhaust lets a test meet a real error of the operating system
// while it reads files: it runs a function with every file descriptor of
// the process in use, so that each open(2) in it fails with EMFILE ("too
// many open files"). Tests run as root, which permission bits do not stop;
// the descriptor limit stops root too.
//
// It is for tests only, and not for parallel ones: the limit and the
// descriptors are the whole process's.
package fdexhaust

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// spare is how far above the descriptors already open the limit is set:
// the number of descriptors Run opens and holds.
const spare = 64

// Run calls fn while no file descriptor is free, then frees them and puts
// the descriptor limit back.
func Run(t testing.TB, fn func()) { RunWithFree(t, 0, fn) }

// RunWithFree is Run with free descriptors left free: fn's first opens
// succeed as long as no more than free files are open at once, and the
// next fails, which puts the failure half-way through what fn does.
func RunWithFree(t testing.TB, free int, fn func()) {
	t.Helper()
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	open, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	// A low limit first, so that filling it takes few descriptors (Go
	// raises the soft limit to the hard one, often a million, at start).
	lim := old
	lim.Cur = min(uint64(len(open)+spare), old.Cur)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
			t.Errorf("putting back the descriptor limit: %v", err)
		}
	}()
	var held []int
	defer func() {
		for _, fd := range held {
			unix.Close(fd)
		}
	}()
	for {
		// Raw descriptors: nothing of Go's (poller, finalizers) holds them.
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == unix.EMFILE {
			break
		}
		if err != nil {
			t.Fatalf("filling the descriptor table: %v", err)
		}
		held = append(held, fd)
		if len(held) > 1<<16 {
			t.Fatal("the descriptor limit did not take")
		}
	}
	if free > len(held) {
		t.Fatalf("%d descriptors free asked, %d held", free, len(held))
	}
	for _, fd := range held[len(held)-free:] {
		unix.Close(fd)
	}
	held = held[:len(held)-free]
	fn()
}
