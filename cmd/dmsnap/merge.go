package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/restore"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

// Instant restore, `dmsnap restore --merge` (session/merge.go has the life
// cycle, dm/merge.go the kernel side). The restore command closes the armed
// session (its pre-images join the plan, and the next session is armed at
// once, as for a normal restore), writes the plan as a COW store in
// STATE/merges/NAME.cow (the views' writer), records the merge in
// STATE/merges.json and loads the origin as snapshot-merge. The origin shows
// the restored state from then on; the armed session records what the merge
// overwrites; `dmsnap watch` puts the snapshot-origin back when the kernel is
// done and removes the store.

// dmMerges is session.MergeKernel over the running kernel.
type dmMerges struct{}

func (dmMerges) MergeStatus(_ context.Context, name string) (session.MergeProgress, error) {
	st, merging, err := dm.Stack{Name: name}.MergeStatus()
	if err != nil || !merging {
		return session.MergeProgress{}, err
	}
	return session.MergeProgress{
		Merging: true, Failed: st.State != dm.SnapshotActive,
		Allocated: st.Allocated, Metadata: st.Metadata, Total: st.Total,
	}, nil
}

func (dmMerges) EndMerge(_ context.Context, name string) error {
	return dm.Stack{Name: name}.EndMerge(false)
}

func (dmMerges) RemoveCOW(_ context.Context, file string) error {
	if l, err := dm.FindLoop(file); err == nil && l != nil {
		// AutoClear detaches it with the merge table; one left behind (the
		// table never took it) is detached here.
		if err := dm.DetachLoop(l.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func (dmMerges) ResumeMerge(_ context.Context, name, file string, chunkSectors uint32) (bool, error) {
	f, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return false, err
	}
	c, err := snapstore.OpenCow(f, fi.Size(), file)
	if err != nil {
		f.Close()
		return false, err
	}
	st, err := c.Walk(func(snapstore.CowEntry) error { return nil })
	f.Close()
	if err != nil || st.Exceptions == 0 {
		return false, err
	}
	loop, err := dm.AttachLoop(file, dm.LoopOptions{AutoClear: true})
	if err != nil {
		return false, err
	}
	defer loop.Close()
	if err := (dm.Stack{Name: name}).StartMerge(loop.Path, chunkSectors); err != nil {
		return false, err
	}
	return true, nil
}

// finishMerges is the watcher's beat for instant restores.
func finishMerges(ctx context.Context, m *session.Manager, log *slog.Logger) {
	outs, err := m.FinishMerges(ctx, dmMerges{})
	for _, o := range outs {
		switch {
		case o.Problem != "":
			log.Error("instant restore needs attention", "device", o.Merge.Device, "problem", o.Problem)
		case o.Finished && o.Undo != "":
			log.Info("instant restore finished", "device", o.Merge.Device, "restored_before", o.Merge.Session,
				"undo", "dmsnap restore "+o.Merge.Device+" --session "+o.Undo)
		case o.Finished:
			log.Info("instant restore finished", "device", o.Merge.Device, "restored_before", o.Merge.Session)
		}
	}
	if err != nil && ctx.Err() == nil {
		log.Error("instant restore", "err", err)
	}
}

// mergeJSON is the merge part of restore --json and status --json.
type mergeJSON struct {
	Requested bool `json:"requested"`
	// Started: the origin is a snapshot-merge; false with FallbackReason
	// when the kernel refused it and the normal restore ran instead.
	Started        bool   `json:"started"`
	FallbackReason string `json:"fallback_reason,omitempty"`
	// Recording is the armed session that records what the merge
	// overwrites: once closed, restoring it undoes the restore.
	Recording int    `json:"recording_session,omitempty"`
	Session   string `json:"session,omitempty"` // status: restored to the state before it
	COW       string `json:"cow,omitempty"`
	// Progress, for status: sectors left to copy back, and done.
	RemainingBytes *uint64 `json:"remaining_bytes,omitempty"`
	Done           bool    `json:"done,omitempty"`
	Failed         bool    `json:"failed,omitempty"`
}

// mergeOf is the running merge of device name for status, or nil.
func mergeOf(state, name string) *mergeJSON {
	ms, err := session.LoadMerges(state)
	if err != nil {
		return nil
	}
	mg := session.FindMerge(ms, name)
	if mg == nil {
		return nil
	}
	out := &mergeJSON{Requested: true, Started: true, Recording: mg.Recording, Session: mg.Session, COW: mg.COW}
	if p, err := (dmMerges{}).MergeStatus(context.Background(), name); err == nil && p.Merging {
		rem := p.Remaining() * 512
		out.RemainingBytes, out.Done, out.Failed = &rem, p.Done(), p.Failed
	}
	return out
}

func (mj *mergeJSON) text() string {
	switch {
	case mj.Failed:
		return fmt.Sprintf("to the state before %s: MERGE FAILED (kernel log); the store %s is kept", mj.Session, mj.COW)
	case mj.Done:
		return fmt.Sprintf("to the state before %s: copied back; dmsnap watch puts the stack back", mj.Session)
	case mj.RemainingBytes != nil:
		return fmt.Sprintf("to the state before %s: %s left to copy back (the device shows the restored state already)", mj.Session, humanBytes(*mj.RemainingBytes))
	}
	return fmt.Sprintf("to the state before %s: recorded, but the origin is not merging (dmsnap watch cleans it up)", mj.Session)
}

// loadMergeTable loads the origin as snapshot-merge; a variable so that a
// VM test can play a kernel that refuses the table.
var loadMergeTable = func(s dm.Stack, cow string, chunkSectors uint32) error {
	return s.StartMerge(cow, chunkSectors)
}

// errMergeRefused wraps a kernel refusal of the snapshot-merge table: the
// restore then falls back to writing the plan.
var errMergeRefused = errors.New("the kernel refused the snapshot-merge table")

// errMergeNoSpace: no room for the merge store in the state directory; the
// normal restore, which needs none, runs instead.
var errMergeNoSpace = errors.New("no room for the merge store")

// startMerge writes the plan p as the merge store and loads the origin as
// snapshot-merge over it. The armed session (recording) was armed after the
// one closed for the restore; nobody else has the origin open (the caller
// holds it exclusively). A kernel refusal is errMergeRefused and leaves
// nothing behind.
func (r *restorer) startMerge(p *restore.Plan, target string, recording int) (*session.Merge, error) {
	lock, err := newManager(r.e).Lock(r.e.ctx)
	if err != nil {
		return nil, fmt.Errorf("instant restore of %s: %w", r.name, err)
	}
	defer lock.Release()
	ms, err := session.LoadMerges(r.e.state)
	if err != nil {
		return nil, err
	}
	if mg := session.FindMerge(ms, r.name); mg != nil {
		return nil, fmt.Errorf("%s: an instant restore (to the state before %s) is still merging; wait for it (dmsnap status) (%w)", r.name, mg.Session, session.ErrBusy)
	}
	stack := dm.Stack{Name: r.name}
	real, err := dm.Inspect(stack.RealPath())
	if err != nil {
		return nil, err
	}
	if err := r.cowSpace(p, filepath.Join(r.e.state, "merges"), "the merge store"); err != nil {
		return nil, fmt.Errorf("%w: %w", errMergeNoSpace, err)
	}
	mg := session.Merge{Device: r.name, Session: target, Recording: recording, Started: time.Now().UTC(), Phase: session.MergeStarting,
		COW: filepath.Join(r.e.state, "merges", r.name+".cow")}
	if err := os.MkdirAll(filepath.Dir(mg.COW), 0o700); err != nil {
		return nil, err
	}
	drop := func(err error) (*session.Merge, error) {
		os.Remove(mg.COW)
		return nil, err
	}
	// -real holds the state the closed session ended with: the armed
	// session is empty and the origin is held exclusively.
	if err := writePlanCow(r.e.ctx, p, mg.COW, stack.RealPath(), int64(real.Sectors)*512, int64(r.active.ChunkSize)); err != nil {
		return drop(fmt.Errorf("writing the merge store %s: %w", mg.COW, err))
	}
	loop, err := dm.AttachLoop(mg.COW, dm.LoopOptions{AutoClear: true})
	if err != nil {
		return drop(err)
	}
	// AutoClear: the loop device goes with the merge table.
	defer loop.Close()
	// The record first: a merge that runs is always recorded.
	if err := session.SaveMerges(r.e.state, append(ms, mg)); err != nil {
		return drop(err)
	}
	session.Crashpoint(session.CrashpointMergeRecorded)
	if err := loadMergeTable(stack, loop.Path, r.active.ChunkSectors()); err != nil {
		if serr := session.SaveMerges(r.e.state, ms); serr != nil {
			return nil, errors.Join(err, serr)
		}
		os.Remove(mg.COW)
		var de *dm.Error
		if errors.As(err, &de) && de.Op == "load table" {
			return nil, fmt.Errorf("%w: %w", errMergeRefused, err)
		}
		return nil, err
	}
	// The origin's page cache may hold blocks read before the table
	// changed under it: drop them, so the next reader sees the restore.
	if f, err := os.Open(stack.OriginPath()); err == nil {
		unix.IoctlSetInt(int(f.Fd()), unix.BLKFLSBUF, 0)
		f.Close()
	}
	session.Crashpoint(session.CrashpointMergeLoaded)
	mg.Phase = session.MergeRunning
	if err := session.SaveMerges(r.e.state, append(ms, mg)); err != nil {
		return nil, fmt.Errorf("the merge runs, but recording it failed (dmsnap watch finishes it from the record it started with): %w", err)
	}
	session.Crashpoint(session.CrashpointMergeRunning)
	return &mg, nil
}

// refuseWhileMerging fails when device name has an instant restore running:
// its -real is being rewritten by the kernel, so a plan that reads the
// device, or a session closed now, would not be what it seems.
func refuseWhileMerging(state, name, what string) error {
	ms, err := session.LoadMerges(state)
	if err != nil {
		return err
	}
	if mg := session.FindMerge(ms, name); mg != nil {
		return fmt.Errorf("%s: an instant restore (to the state before %s) is still merging; %s waits until dmsnap status no longer shows it (%w)", name, mg.Session, what, session.ErrBusy)
	}
	return nil
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
