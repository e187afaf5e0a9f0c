package rollback

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/restore"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

// DeviceOptions are the choices of a restore of the device itself.
type DeviceOptions struct {
	// NoUndo writes to -real, behind the session that would record the
	// restore: faster, and it cannot be undone.
	NoUndo bool
	// Merge restores instantly: the plan is loaded as a snapshot-merge in
	// place of the origin (falling back to writing it where the kernel
	// refuses).
	Merge bool
	// Hold is the device's origin already opened exclusively by the
	// caller (a revert holds it from the unmount on): Prepare uses it
	// instead of opening its own, and the Pending closes it.
	Hold *os.File
}

// Pending is a restore of the device planned, verified and holding the
// device exclusively (nobody mounts it meanwhile), not started: the caller
// asks for confirmation, then Runs or Closes it.
type Pending struct {
	r        *Restorer
	opt      DeviceOptions
	chain    []snapstore.SessionInfo
	plan     *restore.Plan
	dev      *probe
	hold     *os.File
	write    string
	real     bool // write is -real (NoUndo): held by device-mapper, opened without O_EXCL
	through  string
	Summary  restore.Summary // what the plan writes (before the armed session joins it)
	Warnings []string
}

// Chain is the plan's sessions, oldest first.
func (p *Pending) Chain() []snapstore.SessionInfo { return p.chain }

// Close lets the device go, when Run was not called or failed early.
func (p *Pending) Close() {
	if p.hold != nil {
		p.hold.Close()
		p.hold = nil
	}
	p.r.Close()
}

// Prepare plans the restore of the device to its state before
// sessions[target], checks the device (not busy, the size the sessions
// recorded), verifies every session's files and opens the device
// exclusively. Nothing is written.
func (r *Restorer) Prepare(ctx context.Context, sessions []snapstore.SessionInfo, target int, opt DeviceOptions) (*Pending, error) {
	chain := sessions[target:]
	refuse := func(err error) (*Pending, error) {
		if opt.Hold != nil {
			opt.Hold.Close()
		}
		return nil, err
	}
	if opt.Hold != nil && r.Active == nil {
		return refuse(fmt.Errorf("%s is not activated: there is no origin to hold", r.Device))
	}
	if r.Active != nil {
		if err := RefuseWhileMerging(r.cfg.State, r.Name, "a restore"); err != nil {
			return refuse(err)
		}
	}
	if opt.Merge && r.Active == nil {
		return nil, fmt.Errorf("--merge: %s is not activated; an instant restore loads a snapshot-merge in place of dmsnap-%s (restore without --merge writes the device directly)", r.Device, r.Name)
	}
	pd := &Pending{r: r, opt: opt, chain: chain, write: r.Device, through: "the raw device (" + r.Device + ")"}
	if r.Active != nil {
		pd.write = r.cfg.originPath(r.Name)
		pd.through = pd.write
	}
	pd.dev = newProbe(pd.write, r.Device)
	pd.dev.held = opt.Hold != nil
	pd.hold = opt.Hold
	p, warns, err := r.plan(ctx, chain, pd.dev)
	if err != nil {
		return refuse(err)
	}
	pd.plan, pd.Warnings = p, warns
	// Hold the device exclusively from here on: nobody mounts it while it
	// is restored.
	if pd.hold == nil {
		if pd.hold, err = openExclusive(pd.write); err != nil {
			return nil, err
		}
	}
	if pd.Summary, err = p.Summarize(ctx); err != nil {
		pd.Close()
		return nil, err
	}
	return pd, nil
}

// Run restores the device. An activated device's armed session is closed
// first (its pre-images join the plan), the restore is written through the
// origin (recorded by the next session, which is then closed: Result.Undo
// undoes the restore), through -real with NoUndo, or merged by the kernel
// with Merge. A restore no session records is noted in the store's
// restores.log. Run closes p.
func (pd *Pending) Run(ctx context.Context) (*Result, error) {
	defer pd.Close()
	r, chain, p := pd.r, pd.chain, pd.plan
	var m *session.Manager
	var fallback *MergeInfo // --merge refused by the kernel: the normal restore runs
	if r.Active != nil {
		// Close the armed session so its pre-images count: it joins the plan.
		m = r.cfg.Manager()
		if _, err := m.Rotate(ctx, r.Name, "restore: closing the armed session"); err != nil {
			return nil, fmt.Errorf("closing the armed session of %s before the restore: %w", r.Name, err)
		}
		if err := r.reload(); err != nil {
			return nil, err
		}
		sessions, err := r.Sessions()
		if err != nil {
			return nil, err
		}
		i := indexOf(sessions, chain[0].ID)
		if i < 0 {
			return nil, fmt.Errorf("session %s vanished from %s", chain[0].ID, r.Store)
		}
		chain = sessions[i:]
		r.Close()
		if p, _, err = r.plan(ctx, chain, nil); err != nil {
			return nil, err
		}
		if pd.opt.NoUndo {
			real, _, err := r.cfg.kernel().Real(r.Name)
			if err != nil {
				return nil, err
			}
			pd.write, pd.through, pd.real = real, real, true
		}
		if pd.opt.Merge {
			res, mj, err := r.restoreMerge(ctx, p, chain)
			if res != nil || err != nil {
				return res, err
			}
			fallback = mj
		}
	}
	var dst *os.File
	var err error
	if pd.real {
		// -real is held by device-mapper: no exclusive open, but the origin
		// stays held exclusively above.
		if dst, err = os.OpenFile(pd.write, os.O_RDWR, 0); err != nil {
			return nil, err
		}
	} else if dst = pd.hold; r.Active == nil {
		pd.hold = nil // the raw device: closed after the write
	}
	// An activated device's origin stays held until the session that
	// recorded the restore is closed (Run's deferred Close): a mount
	// before that would write into it.
	res, err := p.Apply(ctx, dst, restore.ApplyOptions{SkipVerify: true, TargetSize: pd.dev.size, Progress: r.cfg.progress()})
	if r.Active != nil && pd.opt.NoUndo {
		// The origin's page cache may hold blocks written behind its back.
		if pd.hold != nil {
			unix.IoctlSetInt(int(pd.hold.Fd()), unix.BLKFLSBUF, 0)
		}
	}
	cerr := dst.Sync()
	if dst != pd.hold {
		cerr = errors.Join(cerr, dst.Close())
	}
	if err == nil {
		err = cerr
	}
	undoable := r.Active != nil && !pd.opt.NoUndo
	if !undoable && (err == nil || errors.As(err, new(*restore.PartialWriteError))) {
		// The device no longer has the past the chain's sessions describe
		// (some of it, when the write stopped half-way).
		how := "direct"
		if r.Active != nil {
			how = "no-undo"
		}
		if nerr := r.noteRestore(chain, how); nerr != nil {
			r.cfg.warn("noting the restore in %s failed (%v): a later restore to a session after %s would not be refused, and would give a state the device never had",
				filepath.Join(r.Store, snapstore.RestoresLog), nerr, chain[0].ID)
		}
	}
	if err != nil {
		err = fmt.Errorf("restoring %s: %w", pd.write, err)
		var pw *restore.PartialWriteError
		if undoable && errors.As(err, &pw) {
			// Half the plan is on the device: close the session that
			// recorded it, so the device can be put back as it was.
			if undo, cerr := r.closeRecording(ctx, m); cerr == nil && undo != "" {
				err = fmt.Errorf("%w; to put the device back as it was before this restore: dmsnap restore %s --session %s", err, r.Name, undo)
			}
		}
		return nil, err
	}
	rr := r.result(chain)
	rr.Through, rr.Summary, rr.Written, rr.Writes = pd.through, res.Summary, res.Bytes, res.Writes
	rr.Warnings = append(rr.Warnings, pd.Warnings...)
	rr.Merge, rr.NoUndo = fallback, pd.opt.NoUndo
	if undoable {
		// Close the session that recorded the restore, so that it has an ID
		// the user can restore to undo this one.
		undo, err := r.closeRecording(ctx, m)
		if err != nil {
			return nil, fmt.Errorf("restored %s, but closing the session that recorded the restore failed: %w", r.Name, err)
		}
		rr.Undo, rr.Undoable = undo, undo != ""
	}
	if r.Active != nil && r.Active.Reverts() {
		// The live session starts from the restored state: reverts put
		// that back from now on.
		if err := m.Rebase(ctx, r.Name, 0); err != nil {
			return nil, fmt.Errorf("restored %s, but recording the restored state as the one its reverts put back failed: %w", r.Name, err)
		}
	}
	return rr, nil
}

// closeRecording closes the live session of the activated device, the one
// that recorded the restore's writes, and returns its ID once it is a
// complete session ("" when it is not).
func (r *Restorer) closeRecording(ctx context.Context, m *session.Manager) (string, error) {
	cur, err := r.current()
	if err != nil {
		return "", err
	}
	if _, err := m.Rotate(ctx, r.Name, "restore finished: closing the session that recorded it"); err != nil {
		return "", err
	}
	if cur == nil {
		return "", nil
	}
	if info := snapstore.Inspect(cur.Dir); info.Status == snapstore.StatusComplete {
		return info.ID, nil
	}
	return "", nil
}
