package session

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/dmsnap/dmsnap/internal/atomicfile"
	"github.com/dmsnap/dmsnap/internal/names"
)

// Instant restores (`dmsnap restore --merge`, README "Using it"): the
// origin's table is a snapshot-merge over -real with a COW
// store holding the restored state while the kernel copies it back. The
// session armed when the merge started stays loaded and records what the
// merge overwrites (the kernel copies into other snapshots before merging a
// chunk), so the restore is undone by restoring that session.
//
// Each running merge is a Merge record in STATE/merges.json, written before
// the merge starts and removed after the watcher has put the snapshot-origin
// table back, so a merge outlives any restart of the watcher: on its next
// beat the watcher sees the record, asks the kernel how far the merge is and
// finishes it when it is done (FinishMerges). A record whose origin is not
// merging is a merge that ended (or never started): its store is removed.

// MergesFile is the file, in the state directory, of the running merges.
const MergesFile = "merges.json"

// Merge is one instant restore in progress.
type Merge struct {
	Device  string    `json:"device"`  // dmsnap name
	Session string    `json:"session"` // restored to the state before this session
	COW     string    `json:"cow"`     // the merge store (a file in the state directory)
	Started time.Time `json:"started"`
	// Recording is the session armed when the merge started: it records
	// what the merge overwrites, so restoring it undoes the restore.
	Recording int `json:"recording_session"`
	// Phase is MergeStarting until the kernel took the snapshot-merge
	// table, then MergeRunning.
	Phase string `json:"phase"`
}

// Merge phases.
const (
	MergeStarting = "starting" // recorded; the table may not be loaded yet
	MergeRunning  = "merging"  // the kernel took the table
)

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// LoadMerges reads the running merges; none when the file is missing. A
// file ParseMerges refuses is an error that names it.
func LoadMerges(stateDir string) ([]Merge, error) {
	path := filepath.Join(stateDir, MergesFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return ParseMerges(b, path, stateDir)
}

// ParseMerges decodes and checks the bytes of merges.json; name (its path)
// is what errors name. stateDir is the state directory the file belongs
// to: every merge store must be a file directly in its merges/
// subdirectory, since dmsnap attaches that file to a loop device and
// removes it (a planted or damaged record must not make it load or remove
// any other file). Refused: anything but a JSON list of Merge records,
// unknown keys, a device name ValidateName refuses, a device twice, a
// session ID ValidateSessionID refuses, a recording session below 1, a
// phase other than starting and merging, a store path that is not
// absolute and clean or not in merges/, and a store path twice.
func ParseMerges(b []byte, name, stateDir string) ([]Merge, error) {
	damaged := func(err error) error {
		return fmt.Errorf("merges file %s is damaged: %w; move it away (mv %s %s.damaged) once `dmsetup status` shows no snapshot-merge target: "+
			"dmsnap then forgets the instant restores it recorded (a merge still running would never be finished by dmsnap watch), "+
			"and their stores in %s are left for you to remove", name, err, name, name, filepath.Join(stateDir, "merges"))
	}
	abs, err := absStateDir(stateDir)
	if err != nil {
		return nil, fmt.Errorf("merges file %s: %w", name, err)
	}
	var ms []Merge
	if err := decodeStrict(b, &ms); err != nil {
		return nil, damaged(err)
	}
	if err := checkMerges(ms, abs); err != nil {
		return nil, damaged(err)
	}
	return ms, nil
}

func checkMerges(ms []Merge, stateDir string) error {
	devices, cows := map[string]int{}, map[string]int{}
	for i, mg := range ms {
		bad := func(format string, args ...any) error {
			return fmt.Errorf("record %d (device %q): %s", i, mg.Device, fmt.Sprintf(format, args...))
		}
		if err := names.Validate(mg.Device); err != nil {
			return bad("%v", err)
		}
		if j, ok := devices[mg.Device]; ok {
			return bad("the device has a merge in record %d already", j)
		}
		devices[mg.Device] = i
		if err := ValidateSessionID(mg.Session); err != nil {
			return bad("%v", err)
		}
		if mg.Recording < 1 {
			return bad("recording session %d is not a session number", mg.Recording)
		}
		switch mg.Phase {
		case MergeStarting, MergeRunning:
		default:
			return bad("phase %q is neither %q nor %q", mg.Phase, MergeStarting, MergeRunning)
		}
		if err := checkStatePath(mg.COW, stateDir, "merges"); err != nil {
			return bad("store: %v", err)
		}
		if j, ok := cows[mg.COW]; ok {
			return bad("store %s is record %d's too", mg.COW, j)
		}
		cows[mg.COW] = i
	}
	return nil
}

// SaveMerges replaces the merges file atomically (no file when ms is
// empty). It refuses records that LoadMerges would refuse.
func SaveMerges(stateDir string, ms []Merge) error {
	path := filepath.Join(stateDir, MergesFile)
	if len(ms) == 0 {
		return atomicfile.Remove(path)
	}
	abs, err := absStateDir(stateDir)
	if err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	if err := checkMerges(ms, abs); err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	b, err := json.MarshalIndent(ms, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, append(b, '\n'), 0o644)
}

// FindMerge returns the running merge of device name, or nil.
func FindMerge(ms []Merge, name string) *Merge {
	for i := range ms {
		if ms[i].Device == name {
			return &ms[i]
		}
	}
	return nil
}

// MergeProgress is how far the kernel is with a merge (its snapshot-merge
// status, in sectors).
type MergeProgress struct {
	Merging   bool // the origin is loaded as snapshot-merge
	Failed    bool // the kernel stopped the merge ("Merge failed", or the store is invalid)
	Allocated uint64
	Metadata  uint64
	Total     uint64
}

// Done reports that every chunk has been merged: only metadata is left.
func (p MergeProgress) Done() bool { return p.Merging && !p.Failed && p.Allocated == p.Metadata }

// Remaining is the sectors still to merge.
func (p MergeProgress) Remaining() uint64 {
	if p.Allocated < p.Metadata {
		return 0
	}
	return p.Allocated - p.Metadata
}

// MergeKernel is the kernel side of finishing merges (dm.Stack behind an
// adapter; a fake in tests).
type MergeKernel interface {
	// MergeStatus reports the merge of the stack of name.
	MergeStatus(ctx context.Context, name string) (MergeProgress, error)
	// EndMerge puts the snapshot-origin table back in place of a finished
	// merge (its store's loop device goes with the old table).
	EndMerge(ctx context.Context, name string) error
	// RemoveCOW detaches the store's loop device if one is left and
	// removes the file. A file already gone is success.
	RemoveCOW(ctx context.Context, file string) error
	// ResumeMerge loads the origin as snapshot-merge again over the store
	// in file, when the store still holds chunks to merge (the stack was
	// rebuilt without it: a reboot mid-merge); false when it holds none.
	ResumeMerge(ctx context.Context, name, file string, chunkSectors uint32) (bool, error)
}

// MergeOutcome is what FinishMerges saw or did for one merge.
type MergeOutcome struct {
	Merge    Merge
	Progress MergeProgress
	Finished bool // the stack is normal again, the record and store gone
	// Undo is the session to restore to undo the restore, once the
	// recording session was closed here ("" while it stays open: it then
	// closes at the next unmount).
	Undo    string
	Problem string // a failed merge: it needs a human
}

// FinishMerges is the watcher's step for instant restores: for every
// recorded merge it asks the kernel how far it is; a finished one gets its
// snapshot-origin table back and its store removed, and the session that
// recorded it is closed when the origin is not in use (so it has an ID one
// can restore to undo the restore; a mounted origin's session closes at the
// unmount as usual). It takes the lock.
func (m *Manager) FinishMerges(ctx context.Context, k MergeKernel) ([]MergeOutcome, error) {
	ms, err := LoadMerges(m.StateDir)
	if err != nil || len(ms) == 0 {
		return nil, err
	}
	var out []MergeOutcome
	err = m.withLock(ctx, func(reg *Registry) error {
		ms, err := LoadMerges(m.StateDir) // again, under the lock
		if err != nil {
			return err
		}
		var keep []Merge
		var errs []error
		for _, mg := range ms {
			o, err := m.finishMerge(ctx, reg, k, mg)
			if err != nil {
				errs = append(errs, fmt.Errorf("merge of %s: %w", mg.Device, err))
			}
			if !o.Finished {
				keep = append(keep, mg)
			}
			out = append(out, o)
		}
		if len(keep) != len(ms) {
			if err := SaveMerges(m.StateDir, keep); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
	return out, err
}

func (m *Manager) finishMerge(ctx context.Context, reg *Registry, k MergeKernel, mg Merge) (MergeOutcome, error) {
	o := MergeOutcome{Merge: mg}
	log := m.log().With("device", mg.Device, "session", mg.Session)
	p, err := k.MergeStatus(ctx, mg.Device)
	if err != nil {
		return o, err
	}
	o.Progress = p
	// ran: the merge did run (now or before a crash or a reboot), so the
	// session armed for it recorded what it overwrote.
	ran := p.Merging
	switch {
	case p.Failed:
		o.Problem = "the kernel stopped the merge (Merge failed): the device shows the restored state but its store is still needed; see the kernel log"
		log.Error("merge failed", "cow", mg.COW)
		return o, nil
	case p.Merging && !p.Done():
		log.Info("merging", "remaining_sectors", p.Remaining())
		return o, nil
	case p.Merging:
		if err := k.EndMerge(ctx, mg.Device); err != nil {
			return o, err
		}
		Crashpoint(CrashpointMergeEnded)
		log.Info("merge done: snapshot-origin is back")
	case mg.Phase == MergeRunning || (mg.Phase == MergeStarting && fileExists(mg.COW)):
		ran = true
		// The stack was rebuilt as snapshot-origin while the merge ran (a
		// reboot): what is not merged yet is still in the store. The
		// merge goes on from there, but never under a mounted file
		// system, which would see its blocks change.
		//
		// A record still "starting" whose store is there may have run too:
		// a power cut between the kernel's taking the merge table and the
		// record's saying so leaves a half-merged device. The store is
		// whole before the table is loaded (written and synced first), so
		// going on with it is right either way: the restore asked for runs
		// to its end, and the session armed for it records what it
		// overwrites.
		d := reg.Device(mg.Device)
		if d == nil {
			log.Warn("merge of a device no longer activated: removing its store", "cow", mg.COW)
			break
		}
		stacks, err := m.Kernel.Stacks(ctx)
		if err != nil {
			return o, err
		}
		i := slices.IndexFunc(stacks, func(s StackInfo) bool { return s.Name == d.Name })
		if i < 0 || !stacks[i].Complete() {
			return o, nil // the stack comes back first
		}
		table, err := m.mounts()
		if err != nil {
			return o, err
		}
		if len(MountsByDev(table, nil)[d.Origin]) > 0 {
			o.Problem = "the stack was rebuilt in the middle of an instant restore (a reboot?) and the device is mounted: it shows a half-merged state; unmount it, and the watcher resumes the merge"
			log.Error("merge interrupted and the device is in use", "cow", mg.COW)
			return o, nil
		}
		resumed, err := k.ResumeMerge(ctx, d.Name, mg.COW, d.ChunkSectors())
		if err != nil {
			return o, err
		}
		if resumed {
			log.Warn("the merge was interrupted (the stack was rebuilt without it): resumed it")
			o.Progress.Merging = true
			return o, nil
		}
		log.Info("merge finished before the stack was rebuilt: removing its store", "cow", mg.COW)
	default:
		log.Warn("a recorded merge that never started (the restore was interrupted): removing its store; run the restore again", "cow", mg.COW)
	}
	if err := k.RemoveCOW(ctx, mg.COW); err != nil {
		return o, err
	}
	Crashpoint(CrashpointMergeRemoved)
	o.Finished = true

	d := reg.Device(mg.Device)
	if d == nil {
		return o, nil
	}
	cur := d.Current()
	if cur == nil || cur.N != mg.Recording || cur.State != SessionArmed || !ran {
		return o, nil
	}
	if d.Reverts() {
		// The watcher closes it, holding the device, once it can prove
		// nothing was mounted since (advanceRevertBase).
		return o, nil
	}
	stacks, err := m.Kernel.Stacks(ctx)
	if err != nil {
		return o, err
	}
	i := slices.IndexFunc(stacks, func(s StackInfo) bool { return s.Name == d.Name })
	if i < 0 || stacks[i].OriginOpen > 0 {
		return o, nil
	}
	dir := cur.Dir
	cur.State = SessionClosing
	if err := reg.Save(m.StateDir); err != nil {
		return o, err
	}
	if _, err := m.reconcile(ctx, reg, scope{only: []string{d.Name}}); err != nil {
		return o, fmt.Errorf("closing session %d, which recorded the merge: %w", mg.Recording, err)
	}
	o.Undo = filepath.Base(dir)
	log.Info("closed the session that recorded the merge; restore it to undo the restore", "undo_session", o.Undo)

	return o, nil
}
