//go:build !vm

package dm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestErrorWrapsErrnoAndKind(t *testing.T) {
	// What the anatol calls return: a SyscallError around the errno.
	raw := os.NewSyscallError("dm ioctl (cmd=0xc138fd04)", unix.EBUSY)
	err := fmt.Errorf("deactivate: %w", dmErr("remove", "dmsnap-sdb1", raw))
	if !errors.Is(err, unix.EBUSY) {
		t.Error("errors.Is(err, EBUSY) = false")
	}
	if !errors.Is(err, ErrBusy) {
		t.Error("errors.Is(err, ErrBusy) = false")
	}
	var e *Error
	if !errors.As(err, &e) || e.Op != "remove" || e.Device != "dmsnap-sdb1" {
		t.Fatalf("errors.As: %#v", e)
	}
	msg := err.Error()
	for _, want := range []string{"remove dmsnap-sdb1", "device or resource busy", "unmount"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	// The ioctl command number is noise to a user.
	if strings.Contains(msg, "cmd=") {
		t.Errorf("message %q leaks the ioctl number", msg)
	}
}

func TestErrorKinds(t *testing.T) {
	cases := []struct {
		op, dev string
		cause   error
		kind    error
		errno   unix.Errno
		hint    string
	}{
		{"info", "dmsnap-x", unix.ENXIO, ErrNotFound, unix.ENXIO, "no device-mapper device has this name"},
		{"create", "dmsnap-x", unix.EBUSY, ErrBusy, unix.EBUSY, "already exists"},
		{"load table", "dmsnap-x", unix.EINVAL, nil, unix.EINVAL, "dmesg"},
		{"suspend", "dmsnap-x", unix.EPERM, nil, unix.EPERM, "run as root"},
		{"list devices", "", &fs.PathError{Op: "open", Path: ControlPath, Err: unix.ENODEV}, ErrNoDeviceMapper, unix.ENODEV, "modprobe"},
		{"info", "dmsnap-x", &fs.PathError{Op: "open", Path: ControlPath, Err: unix.ENOENT}, ErrNoDeviceMapper, unix.ENOENT, "dm-mod"},
	}
	for _, c := range cases {
		err := dmErr(c.op, c.dev, c.cause)
		if c.kind != nil && !errors.Is(err, c.kind) {
			t.Errorf("%s %v: not %v: %v", c.op, c.cause, c.kind, err)
		}
		if c.kind == nil {
			for _, s := range []error{ErrBusy, ErrNotFound, ErrNotBlockDevice, ErrNoDeviceMapper} {
				if errors.Is(err, s) {
					t.Errorf("%s %v: unexpectedly %v", c.op, c.cause, s)
				}
			}
		}
		if !errors.Is(err, c.errno) {
			t.Errorf("%s %v: errno %v lost: %v", c.op, c.cause, c.errno, err)
		}
		if !strings.Contains(err.Error(), c.hint) {
			t.Errorf("%s %v: message %q lacks %q", c.op, c.cause, err, c.hint)
		}
	}
}

func TestMountedAndHeldMessages(t *testing.T) {
	err := mountedError("/dev/sdb1", []MountEntry{{MountPoint: "/mnt/data"}, {MountPoint: "/srv"}})
	if !errors.Is(err, ErrBusy) {
		t.Error("mounted error is not ErrBusy")
	}
	want := "check /dev/sdb1: /dev/sdb1 is mounted on /mnt/data, /srv; unmount it first (umount /mnt/data), then try again"
	if err.Error() != want {
		t.Errorf("message\n got %q\nwant %q", err.Error(), want)
	}
	held := heldError("/dev/loop0", Dev{Major: 7, Minor: 0}, []string{"dm-0 (device-mapper dmsnap-a-real)"})
	if !errors.Is(held, ErrBusy) || !strings.Contains(held.Error(), "held by dm-0 (device-mapper dmsnap-a-real)") {
		t.Errorf("held message %q", held)
	}
}

func TestUndoKeepsCause(t *testing.T) {
	cause := &Error{Op: "resume", Device: "dmsnap-a-snap1", Kind: ErrBusy, Err: unix.EBUSY}
	if got := undo(cause, func() error { return nil }); got != error(cause) {
		t.Errorf("clean undo changed the error: %v", got)
	}
	left := &Error{Op: "remove", Device: "dmsnap-a-snap1", Err: unix.EIO}
	got := undo(cause, func() error { return left })
	if !errors.Is(got, ErrBusy) || !errors.Is(got, unix.EIO) {
		t.Errorf("joined error lost a cause: %v", got)
	}
	if !strings.Contains(got.Error(), "left behind: remove dmsnap-a-snap1") {
		t.Errorf("message %q does not name what was left", got)
	}
}
