package dm

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// Sentinel errors. Every *Error unwraps to one of these when it applies, and
// to the errno it carries, so both errors.Is(err, ErrBusy) and
// errors.Is(err, unix.EBUSY) work.
var (
	// ErrBusy: the device is mounted, open, or held by another device.
	ErrBusy = errors.New("device is busy")
	// ErrNotFound: no such device-mapper device, loop device or file.
	ErrNotFound = errors.New("device not found")
	// ErrNotBlockDevice: the path exists but is not a block device.
	ErrNotBlockDevice = errors.New("not a block device")
	// ErrNoDeviceMapper: the running kernel has no usable device-mapper.
	ErrNoDeviceMapper = errors.New("no device-mapper in this kernel")
)

// Error is a failed kernel operation: what was tried (Op), on which device
// (Device: a device-mapper name or a path), why (Err, usually a
// unix.Errno), and what the user can do about it (Hint).
type Error struct {
	Op     string // "create", "load table", "suspend", "attach loop", ...
	Device string // device-mapper name or device/file path
	Kind   error  // one of the sentinels above, or nil
	Err    error  // the underlying cause, usually a unix.Errno
	Hint   string // what to do next; may be empty
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Op)
	if e.Device != "" {
		b.WriteString(" ")
		b.WriteString(e.Device)
	}
	b.WriteString(": ")
	switch {
	case e.Err != nil:
		b.WriteString(e.Err.Error())
	case e.Kind != nil:
		b.WriteString(e.Kind.Error())
	default:
		b.WriteString("failed")
	}
	if e.Hint != "" {
		b.WriteString("; ")
		b.WriteString(e.Hint)
	}
	return b.String()
}

// Unwrap exposes both the sentinel kind and the cause.
func (e *Error) Unwrap() []error {
	var errs []error
	if e.Kind != nil {
		errs = append(errs, e.Kind)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// newError builds an *Error from a raw cause: it reduces wrapped syscall
// errors to their errno, classifies the errno into a sentinel and adds the
// default hint for the operation unless hint is given.
func newError(op, device string, cause error, hint string) *Error {
	e := &Error{Op: op, Device: device, Hint: hint}
	var errno unix.Errno
	if errors.As(cause, &errno) {
		e.Err = errno
	} else {
		e.Err = cause
	}
	e.Kind = classify(cause)
	if e.Hint == "" {
		e.Hint = defaultHint(op, e.Kind, errno)
	}
	return e
}

// classify maps a cause to a sentinel kind.
func classify(err error) error {
	for _, s := range []error{ErrBusy, ErrNotFound, ErrNotBlockDevice, ErrNoDeviceMapper} {
		if errors.Is(err, s) {
			return s
		}
	}
	var errno unix.Errno
	if !errors.As(err, &errno) {
		return nil
	}
	switch errno {
	case unix.EBUSY:
		return ErrBusy
	case unix.ENXIO, unix.ENOENT:
		return ErrNotFound
	case unix.ENOTBLK:
		return ErrNotBlockDevice
	}
	return nil
}

func defaultHint(op string, kind error, errno unix.Errno) string {
	switch kind {
	case ErrBusy:
		switch op {
		case "remove":
			return "the device is open or mounted, or another device is stacked on it: unmount it and stop its users, then retry"
		case "suspend", "resume":
			return "another device-mapper operation may be in progress on it: retry"
		}
		return "the device is in use: unmount it and stop its users, then retry"
	case ErrNotFound:
		return "check the name with `dmsnap status`"
	case ErrNoDeviceMapper:
		return "load the dm-mod and dm-snapshot modules (modprobe dm-snapshot) or boot a kernel with device-mapper"
	case ErrNotBlockDevice:
		return "give the path of a block device such as /dev/sdb1"
	}
	switch errno {
	case unix.EPERM, unix.EACCES:
		return "run as root"
	case unix.EINVAL:
		if op == "load table" {
			return "the kernel refused the table; the kernel log (dmesg) says why"
		}
	case unix.ENOSPC:
		return "free space on the file system holding the file"
	}
	return ""
}

// errorf is shorthand for an *Error with a formatted cause.
func errorf(op, device string, kind error, hint, format string, args ...any) *Error {
	return &Error{Op: op, Device: device, Kind: kind, Err: fmt.Errorf(format, args...), Hint: hint}
}
