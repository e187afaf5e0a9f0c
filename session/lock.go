package session

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// LockFile is the lock's file name in the state directory.
const LockFile = "lock"

// HostLockPath is the lock every dmsnap command of the running system takes
// before its state directory's (Manager.HostLock, set by the system
// wiring): device-mapper names (dmsnap-*) and loop devices are one
// namespace for the whole host, whatever --state a command was given, so a
// watcher or a command of another state directory must not change the
// kernel's stacks, or touch their session directories, at the same time.
// /run is a tmpfs: the lock, like the stacks it guards, lasts until reboot.
const HostLockPath = "/run/dmsnap/lock"

// DefaultLockWait is how long a command waits for another one to finish
// before giving up with a *LockedError.
const DefaultLockWait = 10 * time.Second

// NoLockWait as a wait tries the lock once: a held lock is a *LockedError
// at once (dmsnap --no-wait).
const NoLockWait time.Duration = -1

// Holder is who holds a lock, as written in its file: the process ID and
// its command line (PID 0 when unknown).
type Holder struct {
	PID     int
	Command string
}

func (h Holder) String() string {
	switch {
	case h.PID <= 0:
		return "another dmsnap command"
	case h.Command == "":
		return fmt.Sprintf("pid %d", h.PID)
	}
	return fmt.Sprintf("pid %d (%s)", h.PID, h.Command)
}

// WaitNotice, when set on a lock request, is called once when the lock is
// found held, before the wait: the command tells its user who it waits for.
type WaitNotice func(path string, holder Holder, wait time.Duration)

// lockRetry is the pause between attempts while the lock is held. A
// blocking flock(2) cannot be interrupted by a context, so the wait is a
// short sleep between non-blocking attempts.
const lockRetry = 50 * time.Millisecond

// LockedError says who holds the state lock.
type LockedError struct {
	Path   string // the lock file
	Holder Holder
}

func (e *LockedError) Error() string {
	who := e.Holder.String()
	if e.Holder.PID > 0 {
		who = "dmsnap " + who
	}
	return fmt.Sprintf("%s holds the lock on %s; retry when it is done (--wait DURATION waits longer)", who, e.Path)
}

func (e *LockedError) Is(target error) bool { return target == ErrLocked }

// Lock is the state lock: one exclusive flock(2) on <state>/lock taken for
// every change of the registry, session state or kernel stack, so the CLI,
// the watcher and udev-triggered `dmsnap attach` runs never race — and,
// taken through Manager.Lock, the host lock before it (HostLockPath). The
// holder's PID is written into each file for the message others get.
//
// flock locks belong to the open file description: two Locks in one
// process exclude each other like two processes do, and the kernel drops
// the lock when the holder dies, so a crash never leaves a stale lock.
type Lock struct {
	files []*os.File
	path  string // the last file locked (the state directory's)
}

// AcquireLock takes the lock of stateDir (created if missing), waiting up to
// wait (DefaultLockWait when 0) or until ctx ends. When the wait runs out
// the error is a *LockedError (errors.Is(err, ErrLocked)).
func AcquireLock(ctx context.Context, stateDir string, wait time.Duration) (*Lock, error) {
	return acquireLocks(ctx, wait, nil, filepath.Join(stateDir, LockFile))
}

// AcquireLockFile takes the lock file at path (made, with its directory,
// when missing), waiting as AcquireLock does: for a lock of its own that
// must not wait behind the state directory's (dmsnap store up runs while
// an attach holds that one and waits for the store).
func AcquireLockFile(ctx context.Context, path string, wait time.Duration) (*Lock, error) {
	return acquireLocks(ctx, wait, nil, path)
}

// acquireLocks takes the lock files in order (each made, with its
// directory, when missing), sharing one wait. Every caller names them in
// the same order (host, then state), so two commands never deadlock.
// notice (when not nil) is called once, at the first lock found held.
func acquireLocks(ctx context.Context, wait time.Duration, notice WaitNotice, paths ...string) (*Lock, error) {
	switch {
	case wait == 0:
		wait = DefaultLockWait
	case wait < 0:
		wait = 0
	}
	deadline := time.Now().Add(wait)
	l := &Lock{}
	for _, p := range paths {
		f, err := acquireFile(ctx, p, time.Until(deadline), func(h Holder) {
			if notice != nil && wait > 0 {
				notice(p, h, time.Until(deadline).Round(time.Second))
				notice = nil
			}
		})
		if err != nil {
			l.Release()
			return nil, err
		}
		l.files, l.path = append(l.files, f), p
	}
	return l, nil
}

func acquireFile(ctx context.Context, path string, wait time.Duration, held func(Holder)) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	deadline := time.NewTimer(max(wait, time.Millisecond))
	defer deadline.Stop()
	for first := true; ; first = false {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if first {
			held(readHolder(f))
		}
		retry := time.NewTimer(lockRetry)
		select {
		case <-retry.C:
			continue
		case <-deadline.C:
			retry.Stop()
		case <-ctx.Done():
			retry.Stop()
			f.Close()
			return nil, fmt.Errorf("waiting for the lock on %s: %w", path, ctx.Err())
		}
		h := readHolder(f)
		f.Close()
		return nil, &LockedError{Path: path, Holder: h}
	}
	if err := writeHolder(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

// Path returns the state directory's lock file.
func (l *Lock) Path() string { return l.path }

// Release drops the lock (the state directory's, then the host's). The PID
// stays in the files; it is only read while someone holds the lock.
// Release on a released lock does nothing.
func (l *Lock) Release() error {
	if l == nil {
		return nil
	}
	var errs []error
	for i := len(l.files) - 1; i >= 0; i-- {
		errs = append(errs, l.files[i].Close()) // closing the last descriptor drops the flock
	}
	l.files = nil
	return errors.Join(errs...)
}

// writeHolder writes this process's ID and command line into the lock
// file: "<pid> <command>\n", the command cut to maxHolderCommand bytes
// and made one line.
func writeHolder(f *os.File) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	line := strconv.Itoa(os.Getpid()) + " " + holderCommand(os.Args) + "\n"
	_, err := f.WriteAt([]byte(line), 0)
	return err
}

// maxHolderCommand bounds the command line written beside the PID.
const maxHolderCommand = 200

func holderCommand(args []string) string {
	if len(args) > 0 {
		args = append([]string{filepath.Base(args[0])}, args[1:]...)
	}
	cmd := strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, strings.Join(args, " "))
	if len(cmd) > maxHolderCommand {
		cmd = cmd[:maxHolderCommand] + "..."
	}
	return strings.ToValidUTF8(cmd, "?")
}

// readHolder reads who holds the lock of f ("<pid>" alone, as written
// before the command line was added, is read too).
func readHolder(f *os.File) Holder {
	b := make([]byte, 32+maxHolderCommand+8)
	n, _ := f.ReadAt(b, 0)
	line, _, _ := strings.Cut(string(b[:n]), "\n")
	pidText, cmd, _ := strings.Cut(strings.TrimSpace(line), " ")
	pid, err := strconv.Atoi(pidText)
	if err != nil || pid <= 0 {
		return Holder{}
	}
	return Holder{PID: pid, Command: strings.TrimSpace(cmd)}
}
