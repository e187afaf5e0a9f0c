package snapstore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dmsnap/dmsnap/internal/atomicfile"
)

// Pruning removes a device's oldest sessions (FORMAT.md, "pruned.log").
//
// Only the oldest go: a restore to a session needs every session from it to
// the newest, so a session may be removed only when every older one is
// removed too. A session not finished, still held by a registry (armed,
// open, being converted) or damaged is never removed, and the first of
// them, in the order the sessions were taken, ends the run: removing a
// newer one would break that session's chain once it is finished.
//
// Removal is durable and crash-safe: the directory is first renamed into
// the store's PruneDir (atomic, and no longer listed as a session), the
// removal is noted in PrunedLog, and only then is the directory deleted. A
// crash in between leaves a directory in PruneDir, which FinishPrunes
// notes and deletes.

// PrunedLog is the file in a store that lists the sessions prune removed,
// one "ID<TAB>RFC 3339 time" line each, so that a restore to one of them is
// refused with the reason instead of "no such session". It is not a
// session directory, so listings skip it.
const PrunedLog = "pruned.log"

// PruneDir is the directory in a store that holds sessions being removed.
const PruneDir = ".pruning"

// PruneRequest is what `dmsnap sessions prune` asks for: Keep restore
// points, or sessions older than OlderThan (exactly one of them).
type PruneRequest struct {
	Name string // device name (the <name> of <name>_<seconds>)
	// Keep is how many of the newest restore points (RestorePoints) to
	// keep; -1 when not asked. Sessions that cannot be restored to are not
	// counted: an invalid session does not keep anything older alive.
	Keep int
	// OlderThan removes sessions that started more than this long before
	// Now (0 when not asked).
	OlderThan time.Duration
	Now       time.Time
	// Held are the session directories a registry still holds (live,
	// being closed): never removed.
	Held map[string]bool
}

// PrunePlan is what a prune removes, oldest first, and what it keeps.
type PrunePlan struct {
	Remove []SessionInfo
	// Short says why fewer sessions are removed than asked ("" when not).
	Short string
	// Points and PointsAfter are the device's restore points before and
	// after the removals; Oldest is the oldest restore point left ("" when
	// none).
	Points, PointsAfter int
	Oldest              string
}

// PlanPrune decides which of a store's sessions (ListSessions) a prune of
// req.Name removes. It changes nothing.
func PlanPrune(infos []SessionInfo, req PruneRequest) PrunePlan {
	all, points := chainOf(infos, req.Name)
	plan := PrunePlan{Points: CountRestorable(points)}

	// want: how many of the oldest sessions the request would remove.
	want := 0
	switch {
	case req.Keep >= 0:
		kept := 0
		want = -1
		for i := len(all) - 1; i >= 0; i-- {
			if points[i].OK {
				kept++
			}
			if kept == req.Keep {
				want = i // everything before the Keep-th newest restore point
				break
			}
		}
		if req.Keep == 0 {
			want = len(all)
		}
		if want < 0 {
			want = 0
			plan.Short = fmt.Sprintf("%s has %d restore point(s), not more than the %d to keep: nothing removed", req.Name, plan.Points, req.Keep)
		}
	default:
		for _, info := range all {
			if req.Now.Sub(info.Time) <= req.OlderThan {
				break
			}
			want++
		}
	}
	for i, info := range all[:want] {
		if why := keptBecause(info, req.Held); why != "" {
			plan.Short = fmt.Sprintf("session %s is %s and is kept, so every newer session is kept too: removing one would break the chain of pre-images a restore to %s needs",
				info.ID, why, info.ID)
			break
		}
		plan.Remove = append(plan.Remove, all[i])
	}
	rest := all[len(plan.Remove):]
	after := RestorePoints(rest)
	plan.PointsAfter = CountRestorable(after)
	if i := OldestRestorable(after); i >= 0 {
		plan.Oldest = rest[i].ID
	}
	return plan
}

// chainOf returns the sessions of device name among infos in the order
// they were taken, with their restore points.
func chainOf(infos []SessionInfo, name string) ([]SessionInfo, []RestorePoint) {
	var all []SessionInfo
	for _, info := range infos {
		if info.Name == name {
			all = append(all, info)
		}
	}
	slices.SortStableFunc(all, Order)
	return all, RestorePoints(all)
}

// keptBecause says why a session may not be removed ("" when it may): a
// finished session no one is working on may.
func keptBecause(info SessionInfo, held map[string]bool) string {
	switch {
	case held[filepath.Clean(info.Dir)]:
		return "live (armed, open or being converted)"
	case info.Pinned:
		return "pinned (`dmsnap sessions label --unpin " + info.ID + "` lets it go)"
	case info.Status == StatusDamaged:
		return "damaged (`dmsnap sessions verify` says where)"
	case info.Status == StatusUnreadable:
		return fmt.Sprintf("unreadable (%v)", info.Err)
	case info.Meta == nil:
		return "not finished (no meta.json)"
	case info.Status != StatusComplete && info.Status != StatusInvalid && info.Status != StatusUnverified:
		return string(info.Status)
	}
	return ""
}

// PruneSession removes a session directory of store durably: renamed into
// PruneDir, noted in PrunedLog at at, then deleted. after, when set, is
// called after each step ("moved", "logged", "removed"): the crash tests
// kill the process there.
func PruneSession(store string, info SessionInfo, at time.Time, after func(step string)) error {
	if after == nil {
		after = func(string) {}
	}
	if filepath.Dir(filepath.Clean(info.Dir)) != filepath.Clean(store) || info.ID != filepath.Base(info.Dir) {
		return fmt.Errorf("prune %s: not a session directory of %s", info.Dir, store)
	}
	trash := filepath.Join(store, PruneDir)
	if err := os.Mkdir(trash, dirPerm); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("prune %s: %w", info.ID, err)
	}
	if err := os.Rename(info.Dir, filepath.Join(trash, info.ID)); err != nil {
		return fmt.Errorf("prune %s: %w", info.ID, err)
	}
	if err := syncDir(store); err != nil {
		return fmt.Errorf("prune %s: %w", info.ID, err)
	}
	if err := syncDir(trash); err != nil {
		return fmt.Errorf("prune %s: %w", info.ID, err)
	}
	after("moved")
	if err := notePruned(store, info.ID, at); err != nil {
		return fmt.Errorf("prune %s: moved to %s, but noting it in %s failed (the next prune notes it): %w", info.ID, trash, PrunedLog, err)
	}
	after("logged")
	if err := os.RemoveAll(filepath.Join(trash, info.ID)); err != nil {
		return fmt.Errorf("prune %s: noted, but removing %s failed (the next prune removes it): %w", info.ID, filepath.Join(trash, info.ID), err)
	}
	if err := syncDir(trash); err != nil {
		return err
	}
	after("removed")
	return nil
}

// FinishPrunes completes removals a crash interrupted: every directory left
// in the store's PruneDir is noted in PrunedLog (if it is not already) and
// deleted. It returns their IDs.
func FinishPrunes(store string, at time.Time) ([]string, error) {
	trash := filepath.Join(store, PruneDir)
	ents, err := os.ReadDir(trash)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	logged := map[string]bool{}
	for _, p := range readPruned(store) {
		logged[p.ID] = true
	}
	var done []string
	for _, e := range ents {
		if !logged[e.Name()] {
			if err := notePruned(store, e.Name(), at); err != nil {
				return done, err
			}
		}
		if err := os.RemoveAll(filepath.Join(trash, e.Name())); err != nil {
			return done, err
		}
		done = append(done, e.Name())
	}
	if len(done) > 0 {
		return done, syncDir(trash)
	}
	return done, nil
}

func notePruned(store, id string, at time.Time) error {
	return atomicfile.Append(filepath.Join(store, PrunedLog), fmt.Appendf(nil, "%s\t%s\n", id, at.UTC().Format(time.RFC3339)), filePerm)
}

// Pruned is one line of PrunedLog.
type Pruned struct {
	ID string
	At string // RFC 3339, as written
}

func readPruned(store string) []Pruned {
	b, err := os.ReadFile(filepath.Join(store, PrunedLog))
	if err != nil {
		return nil
	}
	var out []Pruned
	for _, line := range strings.Split(string(b), "\n") {
		id, at, ok := strings.Cut(line, "\t")
		if ok && id != "" {
			out = append(out, Pruned{ID: id, At: at})
		}
	}
	return out
}

// WasPruned reports whether prune removed session id from store, and when.
func WasPruned(store, id string) (Pruned, bool) {
	for _, p := range readPruned(store) {
		if p.ID == id {
			return p, true
		}
	}
	if _, err := os.Stat(filepath.Join(store, PruneDir, id)); err == nil {
		return Pruned{ID: id, At: "being removed"}, true
	}
	return Pruned{}, false
}
