package restore

import (
	"errors"
	"fmt"

	"github.com/dmsnap/dmsnap/snapstore"
)

// Identity is what ties sessions to a device: its size and, when it holds a
// filesystem that has one, the filesystem UUID. Zero fields are unknown.
type Identity struct {
	Size   uint64 `json:"size,omitempty"`
	FSUUID string `json:"fs_uuid,omitempty"`
}

// Device is the target device as preflight sees it. The CLI implements it
// over the real device (mountinfo, an O_EXCL open, BLKGETSIZE64, a
// filesystem probe); tests use a fake.
type Device interface {
	// Path names the device in messages, e.g. "/dev/sdb1".
	Path() string
	// Busy says why the device cannot be written now ("mounted on /mnt",
	// "open by another process"), or "" when it is free.
	Busy() (reason string, err error)
	// Identity probes the device's current size and filesystem UUID.
	Identity() (Identity, error)
}

// SessionInfo is what preflight needs to know of one session of the plan.
type SessionInfo struct {
	ID string
	// State is how the session's directory reads (snapstore.Status):
	// complete, or invalid (the kernel dropped the snapshot: pre-images are
	// missing), or incomplete (no meta.json: never finished); a seed
	// session is complete and not Verified.
	State snapstore.Status
	// Verified is true when the session records checksums (dmsnap wrote
	// it); sessions the seed wrote are restorable but unverified.
	Verified bool
	// Identity is the device identity recorded in meta.json; zero fields
	// are unknown (the seed recorded none).
	Identity Identity
}

// PreflightOptions relax preflight's refusals.
type PreflightOptions struct {
	// AllowIncomplete lets invalid and incomplete sessions into the plan.
	// Their missing pre-images are missing from the restore too.
	AllowIncomplete bool
}

// BusyError: the device is mounted or open elsewhere. It is ErrDeviceBusy.
type BusyError struct {
	Device string
	Reason string
}

func (e *BusyError) Error() string {
	return fmt.Sprintf("%s is busy (%s): unmount it and stop whatever holds it open, then run the restore again", e.Device, e.Reason)
}

func (e *BusyError) Unwrap() error { return ErrDeviceBusy }

// IdentityError: the device is not the one the session was recorded on. It
// is ErrIdentityMismatch.
type IdentityError struct {
	Device  string
	Session string // the session whose recorded identity differs
	Field   string // "size" or "filesystem UUID"
	Want    string // recorded in the session
	Got     string // found on the device
}

func (e *IdentityError) Error() string {
	return fmt.Sprintf("%s does not match session %s: %s is %s, the session recorded %s; is this the device the sessions were taken of?",
		e.Device, e.Session, e.Field, e.Got, e.Want)
}

func (e *IdentityError) Unwrap() error { return ErrIdentityMismatch }

// StateError: a session of the plan is not complete. It is
// ErrSessionNotComplete.
type StateError struct {
	Session string
	State   snapstore.Status
}

func (e *StateError) Error() string {
	return fmt.Sprintf("session %s %s; restoring through it would not give back the device's old state; dmsnap sessions list shows which sessions can still be restored to",
		e.Session, describeState(e.State))
}

func describeState(s snapstore.Status) string {
	switch s {
	case snapstore.StatusInvalid:
		return "is invalid (its snapshot overflowed or failed, so pre-images are missing)"
	case snapstore.StatusIncomplete:
		return "is incomplete (it has no meta.json: still open, or its conversion did not finish)"
	}
	return fmt.Sprintf("is in state %q, not complete", string(s))
}

func (e *StateError) Unwrap() error { return ErrSessionNotComplete }

// Preflight decides whether the plan over sessions (oldest first) may be
// written to dev. It refuses, with every reason joined into one error, when
//
//   - dev is mounted or open elsewhere (*BusyError, ErrDeviceBusy: exit 4);
//   - dev's size differs from the size any session recorded, or its
//     filesystem UUID differs from the one the newest session recorded
//     (when both are known) (*IdentityError, ErrIdentityMismatch);
//   - a session is invalid or incomplete and opts does not allow that
//     (*StateError, ErrSessionNotComplete).
//
// The UUID is checked against the newest session only: a session can
// legitimately change it (mkfs), and the newest record is the closest to the
// device's present. It returns warnings that do not refuse the restore, such
// as sessions without checksums.
func Preflight(dev Device, sessions []SessionInfo, opts PreflightOptions) (warnings []string, err error) {
	if len(sessions) == 0 {
		return nil, ErrNoSessions
	}
	var errs []error
	seen := make(map[string]bool, len(sessions))
	for _, s := range sessions {
		if seen[s.ID] {
			errs = append(errs, fmt.Errorf("session %s is in the plan twice", s.ID))
		}
		seen[s.ID] = true
	}
	path := dev.Path()
	if reason, err := dev.Busy(); err != nil {
		errs = append(errs, fmt.Errorf("checking whether %s is in use: %w", path, err))
	} else if reason != "" {
		errs = append(errs, &BusyError{Device: path, Reason: reason})
	}
	if id, err := dev.Identity(); err != nil {
		errs = append(errs, fmt.Errorf("probing %s: %w", path, err))
	} else {
		errs = append(errs, checkIdentity(path, id, sessions)...)
	}
	for _, s := range sessions {
		switch {
		case s.State == snapstore.StatusComplete:
			if !s.Verified {
				warnings = append(warnings, fmt.Sprintf("session %s has no checksums (written by the seed): its pre-images are restored unverified", s.ID))
			}
		case opts.AllowIncomplete:
			warnings = append(warnings, fmt.Sprintf("session %s %s; using it anyway as asked: the bytes it lost stay as they are now", s.ID, describeState(s.State)))
		default:
			errs = append(errs, &StateError{Session: s.ID, State: s.State})
		}
	}
	return warnings, errors.Join(errs...)
}

func checkIdentity(path string, id Identity, sessions []SessionInfo) []error {
	var errs []error
	if id.Size != 0 {
		for _, s := range sessions {
			if s.Identity.Size != 0 && s.Identity.Size != id.Size {
				errs = append(errs, &IdentityError{Device: path, Session: s.ID, Field: "size",
					Want: fmt.Sprintf("%d bytes", s.Identity.Size), Got: fmt.Sprintf("%d bytes", id.Size)})
				break // one is enough: the size does not change between sessions
			}
		}
	}
	if id.FSUUID != "" {
		for i := len(sessions) - 1; i >= 0; i-- {
			s := sessions[i]
			if s.Identity.FSUUID == "" {
				continue
			}
			if s.Identity.FSUUID != id.FSUUID {
				errs = append(errs, &IdentityError{Device: path, Session: s.ID, Field: "filesystem UUID",
					Want: s.Identity.FSUUID, Got: id.FSUUID})
			}
			break
		}
	}
	return errs
}
