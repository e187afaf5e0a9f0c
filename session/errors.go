package session

import (
	"errors"
	"fmt"
)

// Sentinel errors. The CLI maps them to exit codes and hints; errors.Is
// works through every wrapper this package returns.
var (
	// ErrLocked: another dmsnap command holds the state lock (see *LockedError).
	ErrLocked = errors.New("state directory is locked")
	// ErrNotActivated: no activated device has this name or device path.
	ErrNotActivated = errors.New("device is not activated")
	// ErrAlreadyActivated: the device (or the name) is already activated.
	ErrAlreadyActivated = errors.New("device is already activated")
	// ErrBusy: the device is mounted or in use (exit code 4).
	ErrBusy = errors.New("device is busy")
	// ErrInvalidSessionID: a session ID given by a user is not a plain
	// directory name inside the store.
	ErrInvalidSessionID = errors.New("invalid session ID")
	// ErrIdentityMismatch: the device found is not the one that was
	// activated (its stable identity, size or filesystem UUID differ).
	ErrIdentityMismatch = errors.New("device identity does not match")
	// ErrNoIdentity: the activated device's stable identity is not known
	// (activated by an older dmsnap, or a device that has none), so no
	// device found can be shown to be it.
	ErrNoIdentity = errors.New("no stable identity recorded")
	// ErrUnsupportedVersion: the registry was written by a newer dmsnap.
	ErrUnsupportedVersion = errors.New("unsupported registry version")
)

// DeviceError is a failed operation on one activated device: what was tried,
// on which device (its dmsnap name, and path when known), why, and what to
// do next.
type DeviceError struct {
	Op     string // "activate", "attach", "close session 3", ...
	Device string // dmsnap name or device path
	Err    error
	Hint   string
}

func (e *DeviceError) Error() string {
	s := e.Op
	if e.Device != "" {
		s += " " + e.Device
	}
	s += ": " + e.Err.Error()
	if e.Hint != "" {
		s += "; " + e.Hint
	}
	return s
}

func (e *DeviceError) Unwrap() error { return e.Err }

func deviceErr(op, dev, hint string, err error) error {
	return &DeviceError{Op: op, Device: dev, Err: err, Hint: hint}
}

func deviceErrf(op, dev, hint string, kind error, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	if kind != nil {
		err = fmt.Errorf("%w (%w)", err, kind)
	}
	return &DeviceError{Op: op, Device: dev, Err: err, Hint: hint}
}
