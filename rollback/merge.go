package rollback

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/internal/units"
	"github.com/dmsnap/dmsnap/restore"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/session/system"
	"github.com/dmsnap/dmsnap/snapstore"
)

// Instant restore, `dmsnap restore --merge` (session/merge.go has the life
// cycle, dm/merge.go the kernel side). The restore closes the armed
// session (its pre-images join the plan, and the next session is armed at
// once, as for a normal restore), writes the plan as a COW store in
// STATE/merges/NAME.cow (the views' writer), records the merge in
// STATE/merges.json and loads the origin as snapshot-merge. The origin shows
// the restored state from then on; the armed session records what the merge
// overwrites; `dmsnap watch` puts the snapshot-origin back when the kernel is
// done and removes the store.

// ErrMergeRefused wraps a kernel refusal of the snapshot-merge table
// (Kernel.StartMerge): the restore then falls back to writing the plan.
var ErrMergeRefused = errors.New("the kernel refused the snapshot-merge table")

// errMergeNoSpace: no room for the merge store in the state directory; the
// normal restore, which needs none, runs instead.
var errMergeNoSpace = errors.New("no room for the merge store")

// restoreMerge is the Merge part of Run, after the armed session was closed
// and p re-planned with it. It returns the result once the merge runs; when
// the kernel refuses the snapshot-merge table (or there is no room for its
// store) it warns and returns the fallback record, and the normal restore
// goes on.
func (r *Restorer) restoreMerge(ctx context.Context, p *restore.Plan, chain []snapstore.SessionInfo) (*Result, *MergeInfo, error) {
	cur, err := r.current()
	if err != nil {
		return nil, nil, err
	}
	if cur == nil {
		return nil, nil, fmt.Errorf("%s has no armed session to record the merge (run dmsnap watch, or dmsnap attach %s)", r.Name, r.Device)
	}
	origin := r.cfg.originPath(r.Name)
	mg, err := r.startMerge(ctx, p, chain[0], cur.N)
	if errors.Is(err, ErrMergeRefused) || errors.Is(err, errMergeNoSpace) {
		r.cfg.warn("no instant restore: %v; restoring by writing the plan through %s instead (undoable as usual)", err, origin)
		return nil, &MergeInfo{Requested: true, FallbackReason: err.Error()}, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("instant restore of %s: %w; nothing was written", r.Name, err)
	}
	sum, err := p.Summarize(ctx)
	if err != nil {
		return nil, nil, err
	}
	rr := r.result(chain)
	rr.Through, rr.Summary, rr.Undoable = "snapshot-merge on "+origin, sum, true
	rr.Merge = &MergeInfo{Requested: true, Started: true, Recording: mg.Recording, RecordingArmed: cur.Armed, Session: mg.Session, COW: mg.COW}
	return rr, nil, nil
}

// startMerge writes the plan p as the merge store and loads the origin as
// snapshot-merge over it. The armed session (recording) was armed after the
// one closed for the restore; nobody else has the origin open (the caller
// holds it exclusively). A kernel refusal is ErrMergeRefused and leaves
// nothing behind.
func (r *Restorer) startMerge(ctx context.Context, p *restore.Plan, target snapstore.SessionInfo, recording int) (*session.Merge, error) {
	state := r.cfg.State
	lock, err := r.cfg.Manager().Lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("instant restore of %s: %w", r.Name, err)
	}
	defer lock.Release()
	ms, err := session.LoadMerges(state)
	if err != nil {
		return nil, err
	}
	if mg := session.FindMerge(ms, r.Name); mg != nil {
		return nil, fmt.Errorf("%s: an instant restore (to the state before %s) is still merging; wait for it (dmsnap status) (%w)", r.Name, mg.Session, session.ErrBusy)
	}
	k := r.cfg.kernel()
	realPath, realSize, err := k.Real(r.Name)
	if err != nil {
		return nil, err
	}
	if err := r.cowSpace(ctx, p, filepath.Join(state, "merges"), "the merge store"); err != nil {
		return nil, fmt.Errorf("%w: %w", errMergeNoSpace, err)
	}
	mg := session.Merge{Device: r.Name, Session: target.ID, Recording: recording, Started: time.Now().UTC(), Phase: session.MergeStarting,
		COW: filepath.Join(state, "merges", r.Name+".cow")}
	if err := os.MkdirAll(filepath.Dir(mg.COW), 0o700); err != nil {
		return nil, err
	}
	// -real holds the state the closed session ended with: the armed
	// session is empty and the origin is held exclusively.
	if err := writePlanCow(ctx, p, mg.COW, realPath, realSize, int64(r.Active.ChunkSize)); err != nil {
		os.Remove(mg.COW)
		return nil, fmt.Errorf("writing the merge store %s: %w", mg.COW, err)
	}
	// The record first: a merge that runs is always recorded.
	if err := session.SaveMerges(state, append(ms, mg)); err != nil {
		os.Remove(mg.COW)
		return nil, err
	}
	// A device that reverts on unmount puts back the state this restore
	// gives from now on: the state before target. A pending revert is
	// done by this restore (the record carries it through a crash); it is
	// pending again if the kernel does not take the merge.
	undo := func(err error) (*session.Merge, error) {
		if serr := session.SaveMerges(state, ms); serr != nil {
			return nil, errors.Join(err, serr)
		}
		os.Remove(mg.COW)
		return nil, err
	}
	var was session.RevertState
	if r.Active.Reverts() {
		if was, err = session.SetRevertState(state, r.Name, session.RevertState{Base: target.Sequence}); err != nil {
			return undo(fmt.Errorf("recording the restored state as the one the reverts of %s put back: %w; nothing was written", r.Name, err))
		}
	}
	session.Crashpoint(session.CrashpointMergeRecorded)
	if err := k.StartMerge(r.Name, mg.COW, r.Active.ChunkSectors()); err != nil {
		if r.Active.Reverts() {
			if _, rerr := session.SetRevertState(state, r.Name, was); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
		return undo(err)
	}
	session.Crashpoint(session.CrashpointMergeLoaded)
	mg.Phase = session.MergeRunning
	if err := session.SaveMerges(state, append(ms, mg)); err != nil {
		return nil, fmt.Errorf("the merge runs, but recording it failed (dmsnap watch finishes it from the record it started with): %w", err)
	}
	session.Crashpoint(session.CrashpointMergeRunning)
	return &mg, nil
}

// RefuseWhileMerging fails when device name has an instant restore running:
// its -real is being rewritten by the kernel, so a plan that reads the
// device, or a session closed now, would not be what it seems.
func RefuseWhileMerging(state, name, what string) error {
	ms, err := session.LoadMerges(state)
	if err != nil {
		return err
	}
	if mg := session.FindMerge(ms, name); mg != nil {
		return fmt.Errorf("%s: an instant restore (to the state before %s) is still merging; %s waits until dmsnap status no longer shows it (%w)", name, mg.Session, what, session.ErrBusy)
	}
	return nil
}

// MergeOf is the running instant restore of device name, with the kernel's
// progress, for status; nil when there is none or merges.json cannot be
// read.
func MergeOf(ctx context.Context, state, name string) *MergeInfo {
	ms, err := session.LoadMerges(state)
	if err != nil {
		return nil
	}
	mg := session.FindMerge(ms, name)
	if mg == nil {
		return nil
	}
	out := &MergeInfo{Requested: true, Started: true, Recording: mg.Recording, Session: mg.Session, COW: mg.COW}
	if p, err := (system.Merges{}).MergeStatus(ctx, name); err == nil && p.Merging {
		rem := p.Remaining() * 512
		out.RemainingBytes, out.Done, out.Failed = &rem, p.Done(), p.Failed
	}
	return out
}

// writePlanCow writes the plan's pre-images as a COW file in the kernel's
// persistent exception-store format at path (made anew, synced): the store
// of a view or of an instant restore. real is the device the plan's
// chunks not in the store are read from, of size bytes.
func writePlanCow(ctx context.Context, p *restore.Plan, path, real string, size, chunk int64) error {
	cow, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	src, err := os.Open(real)
	if err != nil {
		cow.Close()
		return err
	}
	_, err = p.WriteViewCow(ctx, cow, src, size, chunk)
	src.Close()
	if err == nil {
		err = cow.Sync()
	}
	if cerr := cow.Close(); err == nil {
		err = cerr
	}
	return err
}

// cowSpaceMargin is the free space a COW written from a plan leaves on its
// file system: the state directory lives there too, and the kernel copies
// into a view's COW what the origin overwrites while the view is open.
const cowSpaceMargin = 64 << 20

// cowSpace checks that the file system of dir (made if missing) has room
// for a COW holding plan p's chunks, plus cowSpaceMargin. A view's COW may
// grow beyond that while the origin is written; when the file system fills
// up, the kernel drops the view (status shows it INVALID), never the origin.
func (r *Restorer) cowSpace(ctx context.Context, p *restore.Plan, dir, what string) error {
	sum, err := p.Summarize(ctx)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	free := st.Bavail * uint64(st.Bsize)
	need := sum.Bytes + uint64(r.Active.ChunkSize)*uint64(sum.Runs) + cowSpaceMargin
	if free < need {
		return fmt.Errorf("not enough space for %s in %s: it needs about %s, %s is free; free some space there, or use another --state directory",
			what, dir, units.FormatBytes(need), units.FormatBytes(free))
	}
	return nil
}
