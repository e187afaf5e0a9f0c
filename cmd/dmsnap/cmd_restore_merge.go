package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/restore"
	"github.com/dmsnap/dmsnap/snapstore"
)

// restoreMerge is the --merge part of restoreDevice, after the armed session
// was closed and p re-planned with it. It reports done once the merge runs
// (the output written); when the kernel refuses the snapshot-merge table it
// (or there is no room for its store) says so on stderr and returns the fallback record, and the normal restore
// goes on.
func (r *restorer) restoreMerge(p *restore.Plan, chain []snapstore.SessionInfo) (bool, *mergeJSON, error) {
	cur, err := r.current()
	if err != nil {
		return true, nil, err
	}
	if cur == nil {
		return true, nil, fmt.Errorf("%s has no armed session to record the merge (run dmsnap watch, or dmsnap attach %s)", r.name, r.device)
	}
	mg, err := r.startMerge(p, chain[0].ID, cur.N)
	if errors.Is(err, errMergeRefused) || errors.Is(err, errMergeNoSpace) {
		fmt.Fprintf(r.e.stderr, "dmsnap: no instant restore: %v\ndmsnap: restoring by writing the plan through %s instead (undoable as usual)\n",
			err, dm.Stack{Name: r.name}.OriginPath())
		return false, &mergeJSON{Requested: true, FallbackReason: err.Error()}, nil
	}
	if err != nil {
		return true, nil, fmt.Errorf("instant restore of %s: %w; nothing was written", r.name, err)
	}
	sum, err := p.Summarize(r.e.ctx)
	if err != nil {
		return true, nil, err
	}
	origin := dm.Stack{Name: r.name}.OriginPath()
	rr := r.result(chain)
	rr.Through, rr.Summary, rr.Undoable = "snapshot-merge on "+origin, sum, true
	rr.Merge = &mergeJSON{Requested: true, Started: true, Recording: mg.Recording, Session: mg.Session, COW: mg.COW}
	if r.f.json {
		return true, nil, writeJSON(r.e.stdout, rr)
	}
	w := r.e.stdout
	fmt.Fprintf(w, "Restored %s to its state before session %s instantly: %s shows it now, and the kernel copies %s from %d session(s) back in the background (dmsnap status shows how far; dmsnap watch puts the stack back when it is done).\n",
		r.name, chain[0].ID, origin, restore.FormatBytes(sum.Bytes), len(chain))
	fmt.Fprintf(w, "This restore can be undone: session %d (armed at %s UTC) records what the merge overwrites. Once it has closed (dmsnap watch closes it when the merge is done, unless the device is mounted; then the unmount does), restore it: it is the first session of %s after this restore in dmsnap sessions list %s; dmsnap watch also logs the command.\n",
		mg.Recording, cur.Armed.UTC().Format(time.TimeOnly), r.name, r.name)
	return true, nil, nil
}
