package rollback

import (
	"time"

	"github.com/dmsnap/dmsnap/restore"
	"github.com/dmsnap/dmsnap/snapstore"
)

// Result is what a restore did (or, for a dry run, would do); the CLI
// prints it, or writes it as restore --json.
type Result struct {
	Device   string             `json:"device"`
	Name     string             `json:"name"`
	Session  string             `json:"session"`  // the target: restored to the state before it
	Sessions []string           `json:"sessions"` // the plan, oldest first
	DryRun   bool               `json:"dry_run,omitempty"`
	To       string             `json:"to,omitempty"`
	Image    *restore.CopyStats `json:"image,omitempty"`
	// Source is what an image was made from (only read).
	Source string `json:"-"`
	// Through is where the restore wrote: dmsnap-NAME (undoable), -real
	// (--no-undo) or the raw device (not activated); "" for --to and --dry-run.
	Through string `json:"through,omitempty"`
	// Undo is the session to restore to undo this restore; "" when it
	// cannot be undone.
	Undo     string          `json:"undo_session,omitempty"`
	Undoable bool            `json:"undoable"`
	Written  uint64          `json:"bytes_written"`
	Writes   int64           `json:"writes"`
	Summary  restore.Summary `json:"summary"`
	// ArmedCloses: a dry run of an activated device; the real restore first
	// closes the armed session, which then joins the plan.
	ArmedCloses bool `json:"armed_session_closes_first,omitempty"`
	// Merge: --merge was given; whether the merge started or the normal
	// restore ran instead (and why).
	Merge    *MergeInfo `json:"merge,omitempty"`
	Warnings []string   `json:"warnings"`
	// Active: the device is activated (the restore went through its stack).
	Active bool `json:"-"`
	// NoUndo: written to -real, behind the recording session.
	NoUndo bool `json:"-"`
}

// MergeInfo is an instant restore: the merge part of restore --json and
// status --json.
type MergeInfo struct {
	Requested bool `json:"requested"`
	// Started: the origin is a snapshot-merge; false with FallbackReason
	// when the kernel refused it and the normal restore ran instead.
	Started        bool   `json:"started"`
	FallbackReason string `json:"fallback_reason,omitempty"`
	// Recording is the armed session that records what the merge
	// overwrites: once closed, restoring it undoes the restore.
	Recording int `json:"recording_session,omitempty"`
	// RecordingArmed is when the recording session was armed.
	RecordingArmed time.Time `json:"-"`
	Session        string    `json:"session,omitempty"` // status: restored to the state before it
	COW            string    `json:"cow,omitempty"`
	// Progress, for status: sectors left to copy back, and done.
	RemainingBytes *uint64 `json:"remaining_bytes,omitempty"`
	Done           bool    `json:"done,omitempty"`
	Failed         bool    `json:"failed,omitempty"`
}

func (r *Restorer) result(chain []snapstore.SessionInfo) *Result {
	return &Result{Device: r.Device, Name: r.Name, Session: chain[0].ID, Sessions: IDs(chain), Warnings: []string{}, Active: r.Active != nil}
}
