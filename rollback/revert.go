package rollback

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/restore"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/session/system"
	"github.com/dmsnap/dmsnap/snapstore"
)

// Revert on unmount (session/revert.go has the bookkeeping): the revert
// is an instant restore of the device to the state before its base
// session, run under the exclusive hold the watcher took at the unmount,
// so nothing mounts the device before it shows the state put back.

// mergePoll is how often Revert looks at a running instant restore it
// waits for.
const mergePoll = 250 * time.Millisecond

// Revert reverts device name (activated with --on-unmount revert, its
// revert pending): an instant restore to the state before session
// RevertBase, which the device shows as soon as Revert returns. hold is the
// origin opened exclusively by the caller (nil: Revert opens it, and fails
// when the device is in use); Revert closes it, except when it returns
// ErrMergeRunning (a hold Revert took itself is closed then): an instant restore still merging (the last revert's,
// when the device was mounted and unmounted again meanwhile) must end
// first, and the caller keeps the hold and calls again. A device with
// nothing to revert gives a nil Result.
func Revert(ctx context.Context, cfg Config, name string, hold *os.File) (*Result, error) {
	release := func() {
		if hold != nil {
			hold.Close()
		}
	}
	own := hold == nil
	if own {
		h, err := openExclusive(cfg.originPath(name))
		if err != nil {
			return nil, fmt.Errorf("revert %s: %w", name, err)
		}
		hold = h
	}
	if err := mergeDone(ctx, cfg, name); err != nil {
		if own || !errors.Is(err, ErrMergeRunning) {
			release()
		}
		return nil, err
	}
	if err := finishClosing(ctx, cfg, name); err != nil {
		release()
		return nil, err
	}
	r, err := Open(cfg, name, "")
	if err != nil {
		release()
		return nil, err
	}
	defer r.Close()
	d := r.Active
	switch {
	case d == nil || !d.Reverts():
		release()
		return nil, fmt.Errorf("%s does not revert on unmount (dmsnap set %s --on-unmount revert)", name, name)
	case !d.RevertPending:
		release()
		return nil, nil
	}
	if err := r.RefuseUnfinished(); err != nil {
		release()
		return nil, err
	}
	sessions, err := r.Sessions()
	if err != nil {
		release()
		return nil, err
	}
	i := slices.IndexFunc(sessions, func(s snapstore.SessionInfo) bool { return s.Sequence == d.RevertBase })
	if i < 0 {
		release()
		if cur := d.Current(); cur != nil && cur.N == d.RevertBase && cur.State == session.SessionArmed {
			// The base session never closed: nothing was mounted since.
			return nil, cfg.Manager().Rebase(ctx, name, d.RevertBase)
		}
		return nil, fmt.Errorf("revert %s: session %d, whose start is the state its reverts put back, is not among its closed sessions in %s (pruned? dmsnap sessions list %s); restore the device to a state of your choice, which becomes the one put back", name, d.RevertBase, r.Store, name)
	}
	if err := r.CheckTarget(sessions, i); err != nil {
		release()
		return nil, fmt.Errorf("revert %s: %w", name, err)
	}
	pd, err := r.Prepare(ctx, sessions, i, DeviceOptions{Merge: true, Hold: hold})
	if err != nil {
		return nil, fmt.Errorf("revert %s: %w", name, err)
	}
	res, err := pd.Run(ctx)
	if err != nil {
		return nil, fmt.Errorf("revert %s: %w", name, err)
	}
	return res, nil
}

// finishClosing converts the sessions of device name still being closed
// (the mounted session, when the system went down before the watcher
// closed it: attach leaves conversions to the watcher), since the revert
// needs their pre-images.
func finishClosing(ctx context.Context, cfg Config, name string) error {
	reg, err := session.LoadRegistry(cfg.State)
	if err != nil {
		return err
	}
	d := reg.Device(name)
	if d == nil || !slices.ContainsFunc(d.Sessions, func(s *session.Session) bool { return s.State.Ending() }) {
		return nil
	}
	if _, err := cfg.Manager().Reconcile(ctx); err != nil {
		return fmt.Errorf("revert %s: closing its last session: %w", name, err)
	}
	return nil
}

// ErrMergeRunning: a revert has to wait for an instant restore of the
// device still merging (the last revert's, when the device was mounted and
// unmounted again meanwhile); Revert then leaves the hold open.
var ErrMergeRunning = errors.New("an instant restore of the device is still merging")

// mergeDone finishes the instant restore of device name when the kernel
// is done with it (FinishMerges, as the watcher's beat does) and reports
// ErrMergeRunning while it is not. A merge the kernel stopped is an error.
func mergeDone(ctx context.Context, cfg Config, name string) error {
	ms, err := session.LoadMerges(cfg.State)
	if err != nil || session.FindMerge(ms, name) == nil {
		return err
	}
	// Errors of other devices' merges are theirs (the watcher logs them).
	outs, _ := cfg.Manager().FinishMerges(ctx, system.Merges{})
	for _, o := range outs {
		if o.Merge.Device == name && o.Problem != "" {
			return fmt.Errorf("revert %s: the instant restore before it: %s", name, o.Problem)
		}
	}
	if ms, err = session.LoadMerges(cfg.State); err != nil {
		return err
	}
	if mg := session.FindMerge(ms, name); mg != nil {
		return fmt.Errorf("revert %s: %w (to the state before %s)", name, ErrMergeRunning, mg.Session)
	}
	return nil
}

// Reverter is session.Reverter on the running system, for the watcher.
type Reverter struct {
	Cfg Config
	Log *slog.Logger
}

// holdWait is how long Hold tries while the unmounted file system still
// has the device: the mount table drops a mount before the kernel has shut
// the file system down and let go of its device (that happens as umount
// returns). Hold tries every holdEvery, so that it takes the device within
// a fraction of a millisecond of that, before a mount run after umount can.
const (
	holdWait  = 5 * time.Second
	holdEvery = 100 * time.Microsecond
	// holdCheck is how often Hold looks at the mount table meanwhile.
	holdCheck = 10 * time.Millisecond
)

// Hold implements session.Reverter: it opens the origin exclusively; with
// wait, retrying while the file system just unmounted still holds it, and
// giving up as soon as the mount table shows the device mounted again.
func (rv Reverter) Hold(name string, wait bool) (*os.File, error) {
	path := rv.Cfg.originPath(name)
	if !wait {
		return openExclusive(path)
	}
	start := time.Now()
	checked := start
	for {
		f, err := openExclusive(path)
		var busy *restore.BusyError
		if err == nil || !errors.As(err, &busy) || time.Since(start) > holdWait {
			return f, err
		}
		if time.Since(checked) > holdCheck {
			checked = time.Now()
			if why, _ := dm.Busy(path); strings.HasPrefix(why, "mounted") {
				return nil, fmt.Errorf("%s was mounted again before its revert could start: %s", path, why)
			}
		}
		time.Sleep(holdEvery)
	}
}

// Revert implements session.Reverter, logging what the revert did.
func (rv Reverter) Revert(ctx context.Context, name string, hold *os.File) (bool, error) {
	res, err := Revert(ctx, rv.Cfg, name, hold)
	if errors.Is(err, ErrMergeRunning) {
		return false, nil
	}
	if err != nil || res == nil {
		return true, err
	}
	log := rv.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	args := []any{"device", name, "restored_before", res.Session, "through", res.Through}
	if res.Merge != nil && res.Merge.FallbackReason != "" {
		args = append(args, "no_instant_restore", res.Merge.FallbackReason)
	}
	log.Info("reverted on unmount", args...)
	return true, nil
}

// RevertWaiting is Reverter.Revert for a caller with no watcher loop to
// come back (attach): it waits, holding the device, while an instant
// restore of it still merges.
func (rv Reverter) RevertWaiting(ctx context.Context, name string, hold *os.File) error {
	for {
		done, err := rv.Revert(ctx, name, hold)
		if done || err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			if hold != nil {
				hold.Close()
			}
			return ctx.Err()
		case <-time.After(mergePoll):
		}
	}
}
