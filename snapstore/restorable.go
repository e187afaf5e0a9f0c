package snapstore

import "fmt"

// RestorePoint says whether the state a device had before a session can
// still be rebuilt from the store. A restore to session S writes back the
// pre-images of S and of every later session of the device (for each chunk
// the oldest wins), so S is a restore point only while S and every session
// after it are whole: one invalid, damaged or unreadable session breaks the
// chain for itself and every session before it, however complete they are.
type RestorePoint struct {
	OK bool
	// Why the session cannot be restored to (empty when OK).
	Why string
	// Blocker is the session that breaks the chain: the session itself,
	// or a later one ("" when OK, or when the session is not finished).
	Blocker string
}

// Sentence says why session id (whose point p is) cannot be restored to, as
// a clause: "it is invalid: ..." or "the later session X is ..., and a
// restore to this one goes through it".
func (p RestorePoint) Sentence(id string) string {
	if p.Blocker == "" || p.Blocker == id {
		return "it " + p.Why
	}
	return p.Why
}

// RestorePoints computes the restore points of one device's sessions,
// given in the order they were taken (ListSessions, Order). A session not
// finished yet (armed, open, being converted) is not a restore point until
// it is converted, and does not break the chain of the sessions before it
// (a restore converts it first) — unless the kernel invalidated it.
func RestorePoints(sessions []SessionInfo) []RestorePoint {
	out := make([]RestorePoint, len(sessions))
	blocker, blockWhy := "", ""
	for i := len(sessions) - 1; i >= 0; i-- {
		s := sessions[i]
		own := ownProblem(s)
		switch {
		case own != "" && s.Status != StatusIncomplete:
			out[i] = RestorePoint{Why: own, Blocker: s.ID}
			blocker, blockWhy = s.ID, own
		case own != "":
			out[i] = RestorePoint{Why: own}
			if s.Phase == PhaseInvalid {
				blocker, blockWhy = s.ID, own
			}
		case blocker != "":
			out[i] = RestorePoint{Blocker: blocker, Why: fmt.Sprintf(
				"the later session %s %s, and a restore to this one goes through it", blocker, blockWhy)}
		default:
			out[i] = RestorePoint{OK: true}
		}
	}
	return out
}

// ownProblem says why a session is no restore point by itself ("" when it
// is one).
func ownProblem(s SessionInfo) string {
	switch s.Status {
	case StatusComplete, StatusUnverified:
		return ""
	case StatusInvalid:
		why := "is invalid: its pre-images are incomplete"
		if s.Meta != nil && s.Meta.Dmsnap != nil && s.Meta.Dmsnap.InvalidReason != "" {
			why += " (" + s.Meta.Dmsnap.InvalidReason + ")"
		}
		return why
	case StatusIncomplete:
		if s.Phase == PhaseInvalid {
			return "is invalid (the kernel dropped its snapshot): its pre-images are incomplete"
		}
		return "is not finished yet (live, or waiting for dmsnap watch to convert it)"
	case StatusDamaged:
		return fmt.Sprintf("is damaged (%v)", s.Err)
	}
	if s.Err != nil {
		return fmt.Sprintf("is %s (%v)", s.Status, s.Err)
	}
	return fmt.Sprintf("is %s", s.Status)
}

// OldestRestorable returns the index of the oldest session that is a
// restore point (the furthest back the device can be put), or -1.
func OldestRestorable(points []RestorePoint) int {
	for i, p := range points {
		if p.OK {
			return i
		}
	}
	return -1
}

// CountRestorable returns how many of points are restore points.
func CountRestorable(points []RestorePoint) int {
	n := 0
	for _, p := range points {
		if p.OK {
			n++
		}
	}
	return n
}
