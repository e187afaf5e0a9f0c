package session

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/dmsnap/dmsnap/internal/hostfiles"
	"github.com/dmsnap/dmsnap/storedev"
)

// ManagedStores are the managed stores (package storedev) of a state
// directory: stores.json read and written under a lock of its own
// (storedev.LockFile, not the state directory's: `store up` runs while an
// attach holds that one and waits for the store), and their udev rule
// kept in step with it.
type ManagedStores struct {
	StateDir string
	Host     storedev.Host // storedev.System{} on the running system
	// LockWait is how long to wait for the stores' lock (0:
	// DefaultLockWait; NoLockWait: not at all).
	LockWait time.Duration
	// Rule, when set, is the udev rule file kept in step
	// (hostfiles.StoreUdevRules with Gen).
	Rule string
	Gen  hostfiles.Options
	// Warn, when set, is told what went wrong that the command can go on
	// without (a rule not written, a store that did not come up).
	Warn func(msg string)
}

func (s *ManagedStores) warn(format string, a ...any) {
	if s.Warn != nil {
		s.Warn(fmt.Sprintf(format, a...))
	}
}

// locked runs f with stores.json read under the stores' lock; when f says
// it changed the records, they are saved and the rule rewritten.
func (s *ManagedStores) locked(ctx context.Context, f func(rs *storedev.Records) (changed bool, err error)) error {
	l, err := AcquireLockFile(ctx, filepath.Join(s.StateDir, storedev.LockFile), s.LockWait)
	if err != nil {
		return err
	}
	defer l.Release()
	rs, err := storedev.LoadRecords(s.StateDir)
	if err != nil {
		return err
	}
	changed, err := f(rs)
	if !changed {
		return err
	}
	if serr := rs.Save(s.StateDir); serr != nil {
		if err == nil {
			err = serr
		}
		return err
	}
	s.syncRule(rs)
	return err
}

// syncRule rewrites the stores' udev rule; a failure is a warning: the
// stores work now, only the next boot needs it.
func (s *ManagedStores) syncRule(rs *storedev.Records) {
	if s.Rule == "" {
		return
	}
	gen := HostFileOptions(s.Gen)
	text, err := hostfiles.StoreUdevRules(filepath.Join(gen.StateDir, storedev.RecordsFile), rs.UdevDevices(), gen)
	if err == nil {
		if have, rerr := os.ReadFile(s.Rule); rerr == nil && string(have) == text {
			return
		}
		err = hostfiles.WriteRule(s.Rule, text)
	}
	if err != nil {
		s.warn("the managed stores' udev rule was not updated (they are not brought back at boot by themselves): %v", err)
	}
}

// Create makes a managed store (storedev.Create) and records it. req.Path
// is made absolute.
func (s *ManagedStores) Create(ctx context.Context, req storedev.CreateRequest) (storedev.Record, error) {
	abs, err := filepath.Abs(req.Path)
	if err != nil {
		return storedev.Record{}, err
	}
	req.Path = abs
	var rec storedev.Record
	err = s.locked(ctx, func(rs *storedev.Records) (bool, error) {
		if rec, err = storedev.Create(ctx, s.Host, rs, req); err != nil {
			return false, err
		}
		return true, nil
	})
	if err != nil && rec.UUID != "" {
		return rec, fmt.Errorf("made the store on %s and mounted it on %s, but could not record it (store up will not know it): %w", req.Device, req.Path, err)
	}
	return rec, err
}

// Up brings back the managed store on device (storedev.Up), recording a
// changed device number.
func (s *ManagedStores) Up(ctx context.Context, device string) (storedev.Record, error) {
	var rec storedev.Record
	err := s.locked(ctx, func(rs *storedev.Records) (bool, error) {
		var changed bool
		var err error
		rec, changed, err = storedev.Up(s.Host, rs, device)
		return changed && err == nil, err
	})
	return rec, err
}

// StoreState is a managed store and whether it is mounted now.
type StoreState struct {
	storedev.Record
	Mounted bool
}

// List returns the managed stores recorded, each with whether it is
// mounted (read without the lock: a listing).
func (s *ManagedStores) List() ([]StoreState, error) {
	rs, err := storedev.LoadRecords(s.StateDir)
	if err != nil {
		return nil, err
	}
	var out []StoreState
	for _, r := range rs.Stores {
		_, mounted, _ := s.Host.MountedAt(r.Path)
		out = append(out, StoreState{Record: r, Mounted: mounted})
	}
	return out, nil
}

// RequireUp refuses a store path that is a managed store not mounted now:
// its directory is then an empty one on the file system below, and
// sessions armed there would be hidden by the store's next mount.
func (s *ManagedStores) RequireUp(store string) error {
	rs, err := storedev.LoadRecords(s.StateDir)
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(store)
	if err != nil {
		return err
	}
	r := rs.ByPath(abs)
	if r == nil {
		return nil
	}
	if _, mounted, err := s.Host.MountedAt(r.Path); err != nil || mounted {
		return err
	}
	return fmt.Errorf("%s is a managed store that is not mounted: `dmsnap store up %s` brings it back", r.Path, r.Device)
}

// EnsureUsed brings up the managed stores that registered devices use and
// that are not mounted, retrying each every second for up to wait: attach
// runs at boot when a device appears, maybe before its store's device
// has. What cannot be brought up is a warning; attach then says what is
// missing itself.
func (s *ManagedStores) EnsureUsed(ctx context.Context, wait time.Duration) {
	rs, err := storedev.LoadRecords(s.StateDir)
	if err != nil || len(rs.Stores) == 0 {
		return
	}
	reg, err := LoadRegistry(s.StateDir)
	if err != nil {
		return
	}
	used := reg.Stores()
	deadline := time.Now().Add(wait)
	for _, r := range rs.Stores {
		if !slices.Contains(used, r.Path) {
			continue
		}
		ok, err := s.ensure(ctx, r)
		for !ok && err == nil && time.Now().Before(deadline) {
			select {
			case <-ctx.Done():
				err = ctx.Err()
			case <-time.After(time.Second):
				ok, err = s.ensure(ctx, r)
			}
		}
		if !ok {
			s.warn("managed store %s is not mounted (its device %s was not found): %v", r.Path, r.Device, err)
		}
	}
}

// ensure is one try of storedev.Ensure under the stores' lock.
func (s *ManagedStores) ensure(ctx context.Context, r storedev.Record) (ok bool, err error) {
	err = s.locked(ctx, func(rs *storedev.Records) (bool, error) {
		ok, err = storedev.Ensure(s.Host, rs, r)
		return ok && err == nil, err
	})
	return ok, err
}
