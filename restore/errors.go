package restore

import (
	"errors"
	"fmt"
)

// Sentinel errors; the typed errors below unwrap to them so callers can use
// errors.Is without parsing messages.
var (
	// ErrDeviceBusy: the device is mounted or open by someone else. The CLI
	// maps it to exit code 4.
	ErrDeviceBusy = errors.New("device busy")
	// ErrIdentityMismatch: the device is not the one the sessions were
	// recorded on (size or filesystem UUID differ).
	ErrIdentityMismatch = errors.New("device identity mismatch")
	// ErrSessionNotComplete: a session of the plan is invalid or incomplete
	// and the caller did not allow using it.
	ErrSessionNotComplete = errors.New("session not complete")
	// ErrNoSessions: a plan needs at least one session.
	ErrNoSessions = errors.New("no sessions to restore")
	// ErrUnsorted: a session's records are not in ascending sector order.
	ErrUnsorted = errors.New("records not in ascending sector order")
	// ErrOverlap: two records of one session cover the same byte.
	ErrOverlap = errors.New("records of one session overlap")
	// ErrRecordRange: a record reaches past the largest device offset.
	ErrRecordRange = errors.New("record out of range")
	// ErrRecordTooLarge: a record is larger than MaxRecordSize, which apply
	// refuses to buffer. Every pass over the plan refuses it (a
	// *SessionError), so a plan holding one writes nothing.
	ErrRecordTooLarge = errors.New("record too large")
	// ErrOutOfBounds: the plan writes past the end of the target.
	ErrOutOfBounds = errors.New("plan reaches past the end of the target")
)

// SessionError reports a session whose record stream is unusable: the
// planner found it unsorted or overlapping, or the stream failed to open or
// read.
type SessionError struct {
	Session string // session ID
	Index   int64  // position of the record in the session's stream, -1 when none
	Record  Record // the offending record when Index >= 0
	Err     error
}

func (e *SessionError) Error() string {
	if e.Index < 0 {
		return fmt.Sprintf("session %s: %v", e.Session, e.Err)
	}
	return fmt.Sprintf("session %s: record %d (sector %d, %d bytes): %v",
		e.Session, e.Index, e.Record.Sector, e.Record.Size, e.Err)
}

func (e *SessionError) Unwrap() error { return e.Err }

// RecordError reports a record whose pre-image could not be read or failed
// its integrity check. It names the session and the chunk.
type RecordError struct {
	Session string // session ID
	Index   int64  // position of the record in the session's stream
	Record  Record
	Err     error
}

func (e *RecordError) Error() string {
	return fmt.Sprintf("session %s: record %d (sector %d, %d bytes at blocks.dat offset %d): %v",
		e.Session, e.Index, e.Record.Sector, e.Record.Size, e.Record.Offset, e.Err)
}

func (e *RecordError) Unwrap() error { return e.Err }
