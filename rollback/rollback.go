package rollback

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/trustdir"
	"github.com/dmsnap/dmsnap/restore"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

// Config is what every operation of the package needs from its caller.
type Config struct {
	State string // the state directory: registry, views, merges
	// Store is the store named by the caller; an activated device's own
	// recorded store wins over it.
	Store string
	// Manager builds the session manager: one constructor, so that every
	// operation waits for the state lock as the caller's other commands do.
	Manager func() *session.Manager
	// Progress reports long reads and writes (nil: none).
	Progress restore.Progress
	// Warn gets what goes wrong without stopping the operation (nil: dropped).
	Warn func(string)
	// OriginPath is the device an activated device is restored through,
	// dmsnap-NAME (nil: dm.Stack's). Host tests give the device file of
	// sessiontest.System.ModelData, which stands for the origin there.
	OriginPath func(name string) string
	// Kernel is device-mapper for views and instant restores (nil: DM).
	Kernel Kernel
}

func (c Config) kernel() Kernel {
	if c.Kernel != nil {
		return c.Kernel
	}
	return DM{}
}

func (c Config) originPath(name string) string {
	if c.OriginPath != nil {
		return c.OriginPath(name)
	}
	return dm.Stack{Name: name}.OriginPath()
}

func (c Config) progress() restore.Progress {
	if c.Progress == nil {
		return restore.Quiet{}
	}
	return c.Progress
}

func (c Config) warn(format string, a ...any) {
	if c.Warn != nil {
		c.Warn(fmt.Sprintf(format, a...))
	}
}

// AmbiguousStoreError: no device was named and the store holds sessions of
// more than one; the caller must name one (a usage error).
type AmbiguousStoreError struct {
	Store string
	Names []string
}

func (e *AmbiguousStoreError) Error() string {
	return fmt.Sprintf("the store %s holds sessions of %s: name the device to restore", e.Store, strings.Join(e.Names, ", "))
}

// ErrPrunedTarget: a restore target that prune removed. Its pre-images,
// and with them the chain of pre-images back to it, are gone.
var ErrPrunedTarget = errors.New("the chain of pre-images back to it is broken")

// Restorer is a device resolved for restoring: its session name, its path,
// its registry entry when activated, and the store its sessions live in.
// Close it when done: it keeps the sessions of a plan open.
type Restorer struct {
	cfg Config

	Name   string          // session name: the <name> of <name>_<secs>
	Device string          // raw device (or image file) path
	Active *session.Device // registry entry when the device is activated
	Store  string          // where the device's sessions live (its real path)

	opened []*snapstore.Session
	// verified: sessions whose files snapstore.Verify checked in this run.
	verified map[string]bool
	// points: whether each session of the device can be restored to
	// (Sessions); all: every session of the device, in order.
	points map[string]snapstore.RestorePoint
	all    []snapstore.SessionInfo
}

// Open finds the device to restore from arg (a name, a device path, an
// image file, or "" for the only device of the store or the one session id
// names), the registry and the store, and checks the device's store: a
// store others could write to may hold planted sessions, never to be
// written onto a device. From then on Store is the store's real path
// (trustdir.ResolveStore), so that a symlink swapped after the check cannot
// redirect the restore.
func Open(cfg Config, arg, id string) (*Restorer, error) {
	return OpenAs(cfg, arg, "", id)
}

// OpenAs is Open with the device's dmsnap name given: for a device or
// image that is not activated, whose sessions carry another name than its
// file's (a loop device's image: loop0_...). Without it, a session ID
// names the device itself.
func OpenAs(cfg Config, arg, name, id string) (*Restorer, error) {
	r := &Restorer{cfg: cfg}
	if err := r.find(arg, name, id); err != nil {
		return nil, err
	}
	var err error
	if r.Store, err = trustdir.ResolveStore(r.Store); err != nil {
		return nil, err
	}
	return r, nil
}

// Close closes the sessions the last plan opened.
func (r *Restorer) Close() {
	for _, s := range r.opened {
		s.Close()
	}
	r.opened = nil
}

func (r *Restorer) find(arg, name, id string) error {
	reg, err := session.LoadRegistry(r.cfg.State)
	if err != nil {
		return err
	}
	r.Store = r.cfg.Store
	idName := ""
	if id != "" && id != "latest" {
		idName, _ = snapstore.SessionName(id)
	}
	if arg == "" && name != "" {
		arg = name
	}
	if d := reg.Device(idName); arg == "" && d != nil {
		// The session's ID names an activated device, whose sessions
		// are in the store it was activated with.
		arg = d.Name
	}
	if arg == "" && id != "" && id != "latest" {
		// The session names the device: read it only from a checked store.
		if r.Store, err = trustdir.ResolveStore(r.Store); err != nil {
			return err
		}
		info := snapstore.Inspect(filepath.Join(r.Store, id))
		if info.Name == "" {
			return fmt.Errorf("no session %s in %s (see dmsnap sessions list)", id, r.Store)
		}
		arg = info.Name
	}
	if arg != "" {
		d, err := reg.Lookup(arg)
		if fi, serr := os.Stat(arg); err != nil && serr == nil && fi.Mode().IsRegular() {
			// An image file of the device: never activated.
			err = session.ErrNotActivated
		}
		switch {
		case err == nil && name != "" && name != d.Name:
			return fmt.Errorf("%s is activated as %s, not %s", arg, d.Name, name)
		case err == nil:
			r.Active, r.Name, r.Device = d, d.Name, d.Path
			if d.Store != "" {
				r.Store = d.Store
			}
			return nil
		case !errors.Is(err, session.ErrNotActivated):
			return err
		case strings.Contains(arg, "/"):
			// Its sessions' name: given, or the one the session ID
			// carries, or its file's.
			r.Device, r.Name = arg, cmp.Or(name, idName, snapstore.SanitizeName(arg))
			return nil
		}
		r.Name = arg
	} else {
		if r.Store, err = trustdir.ResolveStore(r.Store); err != nil {
			return err
		}
		names, err := storeNames(r.Store)
		if err != nil {
			return err
		}
		switch len(names) {
		case 0:
			return fmt.Errorf("no sessions in %s: nothing to restore", r.Store)
		case 1:
			r.Name = names[0]
		default:
			return &AmbiguousStoreError{Store: r.Store, Names: names}
		}
		if d := reg.Device(r.Name); d != nil {
			r.Active, r.Device = d, d.Path
			return nil
		}
	}
	// Not activated, given by name: the device the newest session recorded,
	// read only from a checked store.
	if r.Store, err = trustdir.ResolveStore(r.Store); err != nil {
		return err
	}
	sessions, err := r.Sessions()
	if err != nil {
		return err
	}
	for i := len(sessions) - 1; i >= 0; i-- {
		if m := sessions[i].Meta; m != nil && m.Device != "" {
			r.Device = m.Device
			return nil
		}
	}
	return fmt.Errorf("%s is not activated and no session of it in %s records its device: give the device path", r.Name, r.Store)
}

func storeNames(store string) ([]string, error) {
	list, err := snapstore.ListSessions(store)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, s := range list {
		if len(names) == 0 || names[len(names)-1] != s.Name {
			names = append(names, s.Name)
		}
	}
	return names, nil
}

// Sessions lists the device's sessions that can be restored to, oldest
// first, without those the registry still holds (the live session of an
// activated device, still recording, and any a crash left closing).
func (r *Restorer) Sessions() ([]snapstore.SessionInfo, error) {
	list, err := snapstore.ListSessions(r.Store)
	if err != nil {
		return nil, err
	}
	// The rotation before the restore writes finishes the held sessions,
	// and the chain is listed again after it.
	held := map[string]bool{}
	if r.Active != nil {
		for _, s := range r.Active.Sessions {
			if s.Dir != "" {
				held[filepath.Base(s.Dir)] = true
			}
		}
	}
	var all, out []snapstore.SessionInfo
	for _, s := range list {
		if s.Name == r.Name {
			all = append(all, s)
		}
	}
	// In the order they were taken, by sequence number: the clock may
	// have stepped back between two of them.
	slices.SortStableFunc(all, snapstore.Order)
	// Restore points are judged over every session, the held ones too: a
	// session the kernel invalidated breaks the chain before it is
	// converted.
	r.all = all
	r.points = map[string]snapstore.RestorePoint{}
	for i, p := range snapstore.RestorePoints(all) {
		r.points[all[i].ID] = p
		if !held[all[i].ID] {
			out = append(out, all[i])
		}
	}
	return out, nil
}

// Find returns the index in sessions (Sessions) of session id, or of the
// newest for "latest"; an unknown session is an error that says whether
// prune removed it.
func (r *Restorer) Find(sessions []snapstore.SessionInfo, id string) (int, error) {
	if id == "latest" {
		return len(sessions) - 1, nil
	}
	for i, s := range sessions {
		if s.ID == id {
			return i, nil
		}
	}
	if err := PrunedTarget(r.Store, id, r.Name, sessions); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no closed session %s of %s in %s (see dmsnap sessions list %s)", id, r.Name, r.Store, r.Name)
}

// PrunedTarget explains why a restore to id, a session of device name that
// is not among sessions (the device's sessions in store, oldest first), is
// refused when prune removed it; nil when the store's pruned.log does not
// list it (the caller says the session is unknown).
func PrunedTarget(store, id, name string, sessions []snapstore.SessionInfo) error {
	p, ok := snapstore.WasPruned(store, id)
	if !ok {
		return nil
	}
	return fmt.Errorf("session %s of %s was pruned (%s) with the pre-images it held, so %w: %s",
		id, name, p.At, ErrPrunedTarget, OldestRestorable(name, sessions))
}

// OldestRestorable names the furthest back a device can be restored, as
// advice for a refused restore.
func OldestRestorable(name string, sessions []snapstore.SessionInfo) string {
	pts := snapstore.RestorePoints(sessions)
	if i := snapstore.OldestRestorable(pts); i >= 0 {
		return fmt.Sprintf("the oldest state that can be restored is the one before %s (dmsnap restore %s --session %s)", sessions[i].ID, name, sessions[i].ID)
	}
	return fmt.Sprintf("no session of %s can be restored to now (dmsnap sessions list %s says why)", name, name)
}

// RefuseUnfinished fails when the registry holds a session of the device
// that has ended but is not converted yet (a command was interrupted while
// closing it): its pre-images are not in the store. Only a restore of the
// device closes the armed session and finishes those a crash left closing;
// without their pre-images a plan or an image would be wrong without a word.
func (r *Restorer) RefuseUnfinished() error {
	if r.Active == nil {
		return nil
	}
	for _, s := range r.Active.Sessions {
		if s.State.Ending() {
			return fmt.Errorf("session %d of %s is still being closed (an interrupted command left it): its pre-images are not in the store yet; run dmsnap attach %s (or start dmsnap watch) to finish it, then retry",
				s.N, r.Name, r.Name)
		}
	}
	return nil
}

// CheckTarget refuses a target the device cannot be put back to: a broken
// chain (an invalid or damaged session on the way), or sessions that a
// restore no session recorded (not activated, --no-undo) left behind.
func (r *Restorer) CheckTarget(sessions []snapstore.SessionInfo, target int) error {
	id := sessions[target].ID
	if p, ok := r.points[id]; ok && !p.OK {
		return fmt.Errorf("%s cannot be restored to its state before session %s: %s; nothing was written; %s",
			r.Name, id, p.Sentence(id), OldestRestorable(r.Name, sessions))
	}
	restores, err := snapstore.RestoresOf(r.Store, r.Name)
	if err != nil {
		return fmt.Errorf("read %s in %s: %w", snapstore.RestoresLog, r.Store, err)
	}
	if err := snapstore.CheckRestored(r.all, id, restores); err != nil {
		return fmt.Errorf("%s cannot be restored to its state before session %s: %w; nothing was written", r.Name, id, err)
	}
	return nil
}

// noteRestore records, in the store, a restore that no session recorded,
// so that a later restore to a session it left behind is refused
// (snapstore.CheckRestored).
func (r *Restorer) noteRestore(chain []snapstore.SessionInfo, how string) error {
	return snapstore.NoteRestore(r.Store, r.Name, chain[0].ID, chain[len(chain)-1].ID, how, time.Now())
}

func (r *Restorer) reload() error {
	reg, err := session.LoadRegistry(r.cfg.State)
	if err != nil {
		return err
	}
	d := reg.Device(r.Name)
	if d == nil {
		return fmt.Errorf("%s left the registry during the restore: %w", r.Name, session.ErrNotActivated)
	}
	r.Active = d
	return nil
}

func (r *Restorer) current() (*session.Session, error) {
	if err := r.reload(); err != nil {
		return nil, err
	}
	return r.Active.Current(), nil
}

func indexOf(sessions []snapstore.SessionInfo, id string) int {
	for i, s := range sessions {
		if s.ID == id {
			return i
		}
	}
	return -1
}

// IDs lists the sessions' IDs.
func IDs(sessions []snapstore.SessionInfo) []string {
	out := make([]string, len(sessions))
	for i, s := range sessions {
		out[i] = s.ID
	}
	return out
}
