package session

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/snapstore"
)

// FreeBytes is the space left to an unprivileged writer on the filesystem
// holding dir.
func FreeBytes(dir string) (int64, error) {
	sp, err := StoreSpace(dir)
	return int64(sp.FreeBytes), err
}

// sessionBytes is what removing a session directory frees: the blocks its
// files take.
func SessionBytes(info snapstore.SessionInfo) int64 {
	var n int64
	filepath.WalkDir(info.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			if st, ok := fi.Sys().(interface{ Blocks() int64 }); ok {
				n += st.Blocks() * 512
			} else {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// Retain applies device name's retention policy to its store now, under
// the lock: what snapstore.PlanRetention removes is pruned
// (snapstore.PruneSession), each removal passed to removed. With dry,
// nothing is removed. It returns the plan; a device without a policy has
// an empty one. The watcher calls it after each close and on its beats;
// sessions prune without --keep or --older-than calls it once.
func (m *Manager) Retain(ctx context.Context, name string, dry bool, removed func(info snapstore.SessionInfo, why string)) (snapstore.RetentionPlan, error) {
	lock, err := m.Lock(ctx)
	if err != nil {
		return snapstore.RetentionPlan{}, err
	}
	defer lock.Release()
	reg, err := m.Registry()
	if err != nil {
		return snapstore.RetentionPlan{}, err
	}
	d := reg.Device(name)
	if d == nil || d.Retention == nil {
		return snapstore.RetentionPlan{}, nil
	}
	held := reg.heldDirs()
	now := time.Now()
	if _, err := snapstore.FinishPrunes(d.Store, now); err != nil {
		return snapstore.RetentionPlan{}, err
	}
	infos, err := snapstore.ListSessions(d.Store)
	if err != nil {
		return snapstore.RetentionPlan{}, err
	}
	restores, err := snapstore.RestoresOf(d.Store, d.Name)
	if err != nil {
		return snapstore.RetentionPlan{}, err
	}
	var need int64
	if free, err := FreeBytes(d.Store); err == nil && d.Retention.MinFree > 0 {
		if free < d.Retention.MinFree {
			need = max(d.Retention.MinFree-free-freeing.pending(d.Store, now), 0)
		} else {
			freeing.clear(d.Store)
		}
	}
	plan := snapstore.PlanRetention(infos, snapstore.RetentionRequest{Name: d.Name, Policy: *d.Retention, Now: now, Need: need, Size: SessionBytes, Held: held, Restores: restores, KeepFrom: d.RevertBase})
	if dry {
		return plan, nil
	}
	var freed int64
	for _, info := range plan.Remove {
		size := SessionBytes(info)
		if err := snapstore.PruneSession(d.Store, info, time.Now(), nil); err != nil {
			return plan, fmt.Errorf("remove session %s: %w", info.ID, err)
		}
		freed += size
		if removed != nil {
			removed(info, plan.Why[info.ID])
		}
	}
	if freed > 0 {
		// A filesystem may show freed space only later (btrfs at its
		// next commit, xfs inodes in the background, a file still open
		// elsewhere): until it does, what was removed counts as freed, so
		// the next check a second later does not remove more for the same
		// shortfall.
		syncStore(d.Store)
		freeing.add(d.Store, freed, now)
	}
	return plan, nil
}

// heldDirs are the session directories the registry still owns (live,
// being closed): a prune never removes them.
func (reg *Registry) heldDirs() map[string]bool {
	held := map[string]bool{}
	for _, dev := range reg.Devices {
		for _, s := range dev.Sessions {
			if s.Dir != "" {
				held[filepath.Clean(s.Dir)] = true
			}
		}
	}
	return held
}

// PruneResult is what Prune did: its plan, and the sessions an
// interrupted prune had left half-removed that it finished first.
type PruneResult struct {
	snapstore.PrunePlan
	Finished []string
}

// Prune removes the oldest finished sessions of req.Name from store, under
// the lock: all but the newest req.Keep restore points, or those older
// than req.OlderThan (snapstore.PlanPrune; req.Now and req.Held are
// filled in here). Each removal (snapstore.PruneSession, a crash point at
// each step) is passed to removed. With dry, nothing is removed. An
// interrupted prune in store is finished first.
func (m *Manager) Prune(ctx context.Context, store string, req snapstore.PruneRequest, dry bool, removed func(info snapstore.SessionInfo)) (PruneResult, error) {
	var res PruneResult
	lock, err := m.Lock(ctx)
	if err != nil {
		return res, err
	}
	defer lock.Release()
	reg, err := m.Registry()
	if err != nil {
		return res, err
	}
	req.Now, req.Held = m.now(), reg.heldDirs()
	if res.Finished, err = snapstore.FinishPrunes(store, req.Now); err != nil {
		return res, fmt.Errorf("finishing an interrupted prune in %s: %w", store, err)
	}
	infos, err := snapstore.ListSessions(store)
	if err != nil {
		return res, fmt.Errorf("list the store %s: %w", store, err)
	}
	res.PrunePlan = snapstore.PlanPrune(infos, req)
	if dry {
		return res, nil
	}
	for _, info := range res.Remove {
		if err := snapstore.PruneSession(store, info, time.Now(), func(step string) { Crashpoint(CrashpointPrune + step) }); err != nil {
			return res, fmt.Errorf("remove session %s: %w", info.ID, err)
		}
		if removed != nil {
			removed(info)
		}
	}
	return res, nil
}

// freeingWindow is how long bytes pruned for min-free count as freed while
// the store's free space does not show them yet.
const freeingWindow = time.Minute

// freeingStores remembers, per store, what retention removed lately.
type freeingStores struct {
	mu sync.Mutex
	m  map[string]freeingRecord
}

type freeingRecord struct {
	bytes int64
	until time.Time
}

// freeing is shared by every Manager of the process (the watcher has one;
// a command, which retains once, has no use for it).
var freeing = &freeingStores{m: map[string]freeingRecord{}}

func (f *freeingStores) pending(store string, now time.Time) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.m[store]
	if !ok || now.After(r.until) {
		delete(f.m, store)
		return 0
	}
	return r.bytes
}

func (f *freeingStores) add(store string, n int64, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.m[store]
	if now.After(r.until) {
		r.bytes = 0
	}
	f.m[store] = freeingRecord{bytes: r.bytes + n, until: now.Add(freeingWindow)}
}

func (f *freeingStores) clear(store string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.m, store)
}

// syncStore asks the store's filesystem to commit (syncfs), which makes a
// btrfs give back the extents of removed files.
func syncStore(store string) {
	fd, err := unix.Open(store, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	unix.Syncfs(fd)
	unix.Close(fd)
}
