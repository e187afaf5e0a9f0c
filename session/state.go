package session

import (
	"time"

	"github.com/dmsnap/dmsnap/snapstore"
)

// DeviceState is where an activated device is in its life. The "-ing"
// states are intents: written before the work starts, replaced when it is
// done, so a crash leaves a record of what was under way.
type DeviceState string

const (
	// DeviceActivating: registered, stack and first session being built.
	// Reconcile rolls it forward (an interrupted activate finishes); a
	// failed Activate rolls it back itself.
	DeviceActivating DeviceState = "activating"
	// DeviceActive: the stack is up (or is rebuilt whenever the device is
	// present) and a session is armed.
	DeviceActive DeviceState = "active"
	// DeviceDeactivating: sessions being closed and the stack torn down;
	// the device leaves the registry when that is done.
	DeviceDeactivating DeviceState = "deactivating"
)

// SessionState is where a session is in its life (docs/architecture.md, "Sessions"):
//
//	arming → armed → opening → open → closing → closed (leaves the registry)
//	   any state ──(kernel marks the snapshot Invalid)──▶ invalid → closed
//
// arming and opening are the intents of the two steps that touch more than
// one thing; closing and invalid are intents too: the session's snapshot is
// being removed and its COW converted, after which the session is no longer
// in the registry (its directory holds meta.json with its final state).
type SessionState string

const (
	SessionArming  SessionState = "arming"  // directory, COW and snapshot being made
	SessionArmed   SessionState = "armed"   // snapshot live, device not mounted
	SessionOpening SessionState = "opening" // mount seen; directory being renamed to the mount time
	SessionOpen    SessionState = "open"    // device mounted
	SessionClosing SessionState = "closing" // unmounted or deactivated: snapshot removal and conversion pending
	SessionInvalid SessionState = "invalid" // the kernel dropped the snapshot; closed like closing, flagged
)

// Live reports whether s is the device's current session (the one that
// takes the writes): arming, armed, opening or open.
func (s SessionState) Live() bool {
	switch s {
	case SessionArming, SessionArmed, SessionOpening, SessionOpen:
		return true
	}
	return false
}

// Ending reports whether s is being closed (closing or invalid).
func (s SessionState) Ending() bool { return s == SessionClosing || s == SessionInvalid }

// Device is one activated device in the registry.
type Device struct {
	Name        string      `json:"name"`               // dmsnap name: dmsnap-NAME, NAME_<secs>
	Path        string      `json:"path"`               // the device path given at activation
	Identity    Identity    `json:"identity"`           // of the raw device
	Origin      DevNum      `json:"origin,omitzero"`    // dmsnap-NAME's number when last seen
	ChunkSize   uint32      `json:"chunk_size"`         // bytes
	Prealloc    int64       `json:"prealloc,omitempty"` // bytes of each new cow.img written ahead (ArmSpec.Prealloc)
	Store       string      `json:"store"`              // directory holding the session directories
	State       DeviceState `json:"state"`              //
	Activated   time.Time   `json:"activated"`          //
	NextSession int         `json:"next_session"`       // number of the next session to arm (from 1)
	Sessions    []*Session  `json:"sessions,omitzero"`  // the live session and those being closed, by number
	// Retention is the policy the watcher applies to the device's finished
	// sessions (nil: keep every one).
	Retention *snapstore.Retention `json:"retention,omitempty"`
	// OnUnmount is what happens at each unmount besides closing the
	// session: "" keeps the device as the session left it, OnUnmountRevert
	// puts it back (revert.go).
	OnUnmount string `json:"on_unmount,omitempty"`
	// RevertBase is the number (sequence) of the session whose start is
	// the state a revert puts back; RevertPending is set when a session
	// opens (a mount) and cleared when a revert or a restore has been
	// started.
	RevertBase    int    `json:"revert_base,omitempty"`
	RevertPending bool   `json:"revert_pending,omitempty"`
	Error         string `json:"error,omitempty"` // the last failed step, until one succeeds
}

// Session is one session the registry still tracks: the live one, and the
// ones being closed. Closed sessions leave the registry; their directory
// is their record.
type Session struct {
	N             int          `json:"n"`                        // dmsnap-NAME-snapN
	Dir           string       `json:"dir,omitempty"`            // session directory; "" until created
	State         SessionState `json:"state"`                    //
	Armed         time.Time    `json:"armed"`                    // also identifies the directory (state.json)
	Mounted       time.Time    `json:"mounted,omitzero"`         //
	Unmounted     time.Time    `json:"unmounted,omitzero"`       //
	FSType        string       `json:"fs_type,omitempty"`        // at mount
	InvalidReason string       `json:"invalid_reason,omitempty"` //
	Error         string       `json:"error,omitempty"`          // the last failed step
}

// ChunkSectors returns the chunk size in 512-byte sectors.
func (d *Device) ChunkSectors() uint32 { return d.ChunkSize / 512 }

// Current returns the live session (arming, armed, opening or open), or nil.
func (d *Device) Current() *Session {
	for _, s := range d.Sessions {
		if s.State.Live() {
			return s
		}
	}
	return nil
}

// Session returns session n, or nil.
func (d *Device) Session(n int) *Session {
	for _, s := range d.Sessions {
		if s.N == n {
			return s
		}
	}
	return nil
}

func (d *Device) removeSession(n int) {
	out := d.Sessions[:0]
	for _, s := range d.Sessions {
		if s.N != n {
			out = append(out, s)
		}
	}
	d.Sessions = out
}
