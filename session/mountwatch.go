package session

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// SelfMountInfo is the mount table of the calling process's mount namespace.
const SelfMountInfo = "/proc/self/mountinfo"

// MountTable is an open mountinfo file that can be waited on. The kernel
// flags the file with POLLPRI|POLLERR once the mount table has changed since
// the descriptor last saw it (fs/proc_namespace.c, mounts_poll): Wait blocks
// in poll(2) until then, Read reads the whole table again from offset 0.
// There is no timer and no busy polling: the watcher sleeps in the kernel
// between changes.
//
// A MountTable sees the mounts of one mount namespace, the one its file
// belongs to; the watcher must run in the namespace where the devices are
// mounted (systemd's, for the unit this package generates).
type MountTable struct {
	f    *os.File
	path string

	mu      sync.Mutex
	wake    int // eventfd that interrupts a Wait when its context ends or Close runs
	closed  bool
	waiting sync.WaitGroup // Waits in progress; Close lets them leave before closing wake
}

// OpenMountTable opens a mountinfo file (SelfMountInfo when path is "").
func OpenMountTable(path string) (*MountTable, error) {
	if path == "" {
		path = SelfMountInfo
	}
	// Not os.Open: it would register the descriptor with Go's epoll-based
	// poller, and every epoll check calls the file's poll method, which
	// consumes the "changed" flag (it is per open file, reset by whoever
	// polls first), so Wait would miss changes. A descriptor opened
	// blocking stays out of the poller.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open mount table %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open mount table: eventfd: %w", err)
	}
	return &MountTable{f: f, path: path, wake: wake}, nil
}

// Path returns the mountinfo file's path.
func (t *MountTable) Path() string { return t.path }

// Read reads and parses the whole table from offset 0. The kernel builds
// the text afresh on each read from the start, so this is a consistent
// snapshot as long as it is read in one go.
func (t *MountTable) Read() ([]MountInfo, error) {
	if _, err := t.f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("read %s: %w", t.path, err)
	}
	m, err := ParseMountInfo(t.f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.path, err)
	}
	return ResolveSourceDevs(m, BlockDevNum), nil
}

// Wait blocks until the mount table has changed since the descriptor last
// saw it (its open, or the previous Wait), or ctx ends (ctx.Err()), or the
// table is closed (os.ErrClosed). A change that happened between a Read and
// the next Wait is not lost: Wait returns at once for it.
func (t *MountTable) Wait(ctx context.Context) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return os.ErrClosed
	}
	t.waiting.Add(1)
	t.mu.Unlock()
	defer t.waiting.Done()
	stop := context.AfterFunc(ctx, t.interrupt)
	defer stop()

	sc, err := t.f.SyscallConn()
	if err != nil {
		return err
	}
	var werr error
	cerr := sc.Control(func(fd uintptr) {
		fds := []unix.PollFd{
			{Fd: int32(fd), Events: unix.POLLPRI},
			{Fd: int32(t.wake), Events: unix.POLLIN},
		}
		for {
			if ctx.Err() != nil {
				werr = ctx.Err()
				return
			}
			_, err := unix.Poll(fds, -1)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				werr = fmt.Errorf("poll %s: %w", t.path, err)
				return
			}
			if fds[1].Revents != 0 {
				t.drainWake()
				t.mu.Lock()
				closed := t.closed
				t.mu.Unlock()
				if closed {
					werr = os.ErrClosed
					return
				}
				// This poll(2) has consumed the kernel's change flag if it
				// was up: report the change even when the context ended
				// meanwhile or the wake-up was a stale one, or it is lost
				// (the next poll would not see it, and the watcher would
				// miss a mount or an unmount).
				if fds[0].Revents&(unix.POLLPRI|unix.POLLERR) != 0 {
					return
				}
				if ctx.Err() != nil {
					werr = ctx.Err()
					return
				}
				continue // a stale wake-up from an earlier Wait's context
			}
			if fds[0].Revents&(unix.POLLPRI|unix.POLLERR) != 0 {
				return
			}
			if fds[0].Revents&unix.POLLNVAL != 0 {
				werr = fmt.Errorf("poll %s: descriptor not open", t.path)
				return
			}
		}
	})
	if cerr != nil {
		return cerr
	}
	return werr
}

// Changed reports, without waiting, whether the mount table changed since
// the last Wait or Changed: the kernel's change flag is consumed, so a
// caller told true must read the table (as after Wait) or the change is
// lost.
func (t *MountTable) Changed() (bool, error) {
	sc, err := t.f.SyscallConn()
	if err != nil {
		return false, err
	}
	var changed bool
	var perr error
	cerr := sc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLPRI}}
		for {
			_, err := unix.Poll(fds, 0)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			perr = err
			changed = fds[0].Revents&(unix.POLLPRI|unix.POLLERR) != 0
			return
		}
	})
	if cerr != nil {
		return false, cerr
	}
	return changed, perr
}

func (t *MountTable) interrupt() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1) // an eventfd counter is a host-endian u64
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.wake >= 0 {
		unix.Write(t.wake, one[:])
	}
}

func (t *MountTable) drainWake() {
	var b [8]byte
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.wake >= 0 {
		unix.Read(t.wake, b[:])
	}
}

// Close ends any Wait in progress (it returns os.ErrClosed) and releases the
// descriptors.
func (t *MountTable) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	t.mu.Unlock()
	t.interrupt()
	// Let a Wait in progress see the wake-up and leave poll(2) before its
	// descriptors are closed (a closed number could be reused meanwhile).
	t.waiting.Wait()
	err := t.f.Close()
	t.mu.Lock()
	unix.Close(t.wake)
	t.wake = -1
	t.mu.Unlock()
	return err
}
