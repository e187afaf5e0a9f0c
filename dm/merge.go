package dm

import (
	"errors"
	"fmt"
)

// Instant restore: the origin's snapshot-origin table is replaced by a
// snapshot-merge target over -real with a COW store holding the restored
// state (restore.Plan.WriteViewCow writes it). From the moment the origin
// resumes it reads as the restored device, while the kernel copies the
// store's chunks back onto -real in the background (dm-snap.c,
// snapshot_merge_next_chunks).
//
// Other snapshots of -real (the armed session's) stay loaded: before each
// merged extent is written the kernel copies the origin's old content into
// every other snapshot (origin_write_extent), and writes through the merging
// origin to chunks not in the store go through do_origin as with
// snapshot-origin. So the armed session records everything the merge and
// the users overwrite, and a merge restore is undone by restoring that
// session, like a normal restore. The kernel refuses a second merging
// snapshot of one origin ("A snapshot is already merging").
//
// When the status shows only metadata allocated (SnapshotStatus.MergeDone)
// EndMerge puts the snapshot-origin table back; the merge store's loop
// device (AutoClear) goes with the table.

// merging returns the origin's snapshot-merge target, if it has one.
func (s Stack) merging() (SnapshotMerge, bool, error) {
	tbl, err := s.dm().Table(s.OriginName())
	if err != nil {
		return SnapshotMerge{}, false, err
	}
	if len(tbl) != 1 || tbl[0].Type != "snapshot-merge" {
		return SnapshotMerge{}, false, nil
	}
	t, err := ParseTarget(tbl[0])
	if err != nil {
		return SnapshotMerge{}, false, &Error{Op: "merge status", Device: s.OriginName(), Err: err}
	}
	sm, ok := t.(SnapshotMerge)
	return sm, ok, nil
}

// Merging reports whether the origin is loaded as snapshot-merge.
func (s Stack) Merging() (bool, error) {
	if err := s.check("merge status"); err != nil {
		return false, err
	}
	_, ok, err := s.merging()
	return ok, err
}

// StartMerge loads the origin as snapshot-merge over -real with the store on
// cow (a loop device over a COW file written for the restore; not zeroed:
// its exceptions are the restore) and resumes it. The origin must be a
// snapshot-origin over -real. The order is LVM's for a merge of an active
// origin: load the new table while the old one is live, suspend, resume.
// A table the kernel refuses (EINVAL, with its reason in the kernel log)
// leaves the stack as it was.
func (s Stack) StartMerge(cow string, chunkSectors uint32) error {
	const op = "start merge"
	if err := ValidateChunkSectors(chunkSectors); err != nil {
		return &Error{Op: op, Device: s.OriginName(), Err: err}
	}
	l, err := s.live(op)
	if err != nil {
		return err
	}
	if l.merging {
		return errorf(op, s.OriginName(), nil, "wait for it to finish (dmsnap status)", "a merge is already running")
	}
	m := s.dm()
	cd, err := m.Inspect(cow)
	if err != nil {
		return err
	}
	if cd.Dev == l.real || cd.Dev == l.origin {
		return errorf(op, cow, nil, "give the loop device of the merge COW file", "COW device %s is the stack's own device %s", cow, cd.Dev)
	}
	origin := s.OriginName()
	t := SnapshotMerge{Length: l.sectors, Origin: l.real, COW: cd.Dev, ChunkSectors: chunkSectors}
	if err := m.Load(origin, t); err != nil {
		return err
	}
	if err := m.Suspend(origin); err != nil {
		return undo(err, func() error { return m.ClearTable(origin) })
	}
	return resumeOrStuck(m, origin)
}

// MergeStatus returns the status of the origin's snapshot-merge target;
// merging is false (and the status zero) when the origin is not merging.
func (s Stack) MergeStatus() (st SnapshotStatus, merging bool, err error) {
	const op = "merge status"
	if err := s.check(op); err != nil {
		return st, false, err
	}
	if _, ok, err := s.merging(); err != nil || !ok {
		return st, false, err
	}
	sts, err := s.dm().Status(s.OriginName())
	if err != nil {
		return st, true, err
	}
	if len(sts) != 1 || sts[0].Type != "snapshot-merge" {
		return st, false, nil // ended meanwhile
	}
	st, err = ParseSnapshotStatus(sts[0].Params)
	if err != nil {
		return st, true, &Error{Op: op, Device: s.OriginName(), Err: err}
	}
	return st, true, nil
}

// EndMerge puts the snapshot-origin table back over -real in place of a
// finished merge. It refuses while chunks are still to merge (unless force):
// the chunks not merged yet would fall back to their old content. An origin
// that is not merging is left alone.
func (s Stack) EndMerge(force bool) error {
	const op = "end merge"
	st, merging, err := s.MergeStatus()
	if err != nil || !merging {
		return err
	}
	if !force && !st.MergeDone() {
		return errorf(op, s.OriginName(), nil, "wait for the merge to finish (dmsnap status)",
			"merge not finished (%s, state %s)", st, st.State)
	}
	l, err := s.live(op)
	if err != nil {
		return err
	}
	m, origin := s.dm(), s.OriginName()
	if err := m.Load(origin, SnapshotOrigin{Length: l.sectors, Origin: l.real}); err != nil {
		return err
	}
	if err := m.Suspend(origin); err != nil {
		return undo(err, func() error { return m.ClearTable(origin) })
	}
	return resumeOrStuck(m, origin)
}

// errMerging is the reason Teardown refuses a merging stack.
var errMerging = errors.New("an instant restore (snapshot-merge) is running")

func mergingError(op, origin string) error {
	return &Error{Op: op, Device: origin, Kind: ErrBusy, Err: fmt.Errorf("%s: %w", origin, errMerging),
		Hint: "wait until dmsnap status shows the merge done and dmsnap watch has put the stack back"}
}
