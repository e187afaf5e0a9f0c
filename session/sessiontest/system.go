package sessiontest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/dmsnap/dmsnap/session"
)

// Crash is the panic value of an injected crash.
type Crash struct{ Call string }

func (c Crash) Error() string { return "injected crash at " + c.Call }

// ErrBusy is what the fakes return for a mounted or open device.
var ErrBusy = session.ErrBusy

// System is one fake world: a kernel, a store, a prober and a mount table.
type System struct {
	mu sync.Mutex

	Kernel *Kernel
	Store  *Store
	Prober *Prober
	Images *Images

	// Calls logs every mutating call, in order: "StackUp sdb1",
	// "AttachSnapshot sdb1 2", "Convert /tmp/…/sdb1_1700000000", ...
	Calls []string
	// Violations records broken invariants the fakes watch (a snapshot
	// removed leaving a complete stack with none, a COW converted while
	// attached, ...). Tests assert it stays empty.
	Violations []string

	mounts []session.MountInfo
	nextID int

	failing map[string]error // call-name prefixes that fail (FailCalls)
	data    *dataModel       // ModelData

	calls       int // mutating calls so far
	crashBefore int // crash before the effect of this call (1-based; 0: never)
	crashAfter  int // crash after the effect of this call
}

// NewSystem returns an empty world.
func NewSystem() *System {
	s := &System{nextID: 100}
	s.Kernel = &Kernel{sys: s, stacks: map[string]*stack{}, nextMinor: 0}
	s.Store = &Store{sys: s}
	s.Prober = &Prober{sys: s, devices: map[string]session.Identity{}}
	s.Images = &Images{sys: s}
	return s
}

// CrashBefore makes the n-th mutating call from now panic with Crash before
// it has any effect; CrashAfter makes it panic after its effect. 0 disarms.
func (s *System) CrashBefore(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.crashBefore, s.crashAfter = s.at(n), 0
}

// CrashAfter: see CrashBefore.
func (s *System) CrashAfter(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.crashBefore, s.crashAfter = 0, s.at(n)
}

func (s *System) at(n int) int {
	if n <= 0 {
		return 0
	}
	return s.calls + n
}

// FailCalls makes every mutating call whose name starts with prefix fail
// with err, without effect, until cleared with a nil err.
func (s *System) FailCalls(prefix string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failing == nil {
		s.failing = map[string]error{}
	}
	if err == nil {
		delete(s.failing, prefix)
	} else {
		s.failing[prefix] = err
	}
}

// MutatingCalls returns how many mutating calls were made so far.
func (s *System) MutatingCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// Reboot forgets everything the kernel held (stacks, snapshots, mounts),
// as a reboot does; the store's files stay.
func (s *System) Reboot() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Kernel.stacks = map[string]*stack{}
	s.mounts = nil
	for _, l := range s.Images.loops {
		delete(s.Prober.devices, l.path)
	}
	s.Images.loops = nil
}

// call logs a mutating call, applies effect and handles injected crashes.
// It must be called without s.mu held; effect runs with s.mu held.
func (s *System) call(name string, effect func() error) error {
	s.mu.Lock()
	s.calls++
	n := s.calls
	s.Calls = append(s.Calls, name)
	if s.crashBefore == n {
		s.crashBefore = 0
		s.mu.Unlock()
		panic(Crash{Call: name})
	}
	var err error
	for prefix, ferr := range s.failing {
		if strings.HasPrefix(name, prefix) {
			err = ferr
		}
	}
	if err == nil {
		err = effect()
	}
	if s.crashAfter == n {
		s.crashAfter = 0
		s.mu.Unlock()
		panic(Crash{Call: name})
	}
	s.mu.Unlock()
	return err
}

func (s *System) violate(format string, args ...any) {
	s.Violations = append(s.Violations, fmt.Sprintf(format, args...))
}

// CallsMatching returns the logged calls that start with prefix.
func (s *System) CallsMatching(prefix string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, c := range s.Calls {
		if strings.HasPrefix(c, prefix) {
			out = append(out, c)
		}
	}
	return out
}

// ResetCalls clears the call log.
func (s *System) ResetCalls() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Calls = nil
}

// Mount adds a mount of dev at point (fsType "ext4" when empty) and
// returns its mount ID.
func (s *System) Mount(dev session.DevNum, point, fsType string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fsType == "" {
		fsType = "ext4"
	}
	s.nextID++
	s.mounts = append(s.mounts, session.MountInfo{
		ID: s.nextID, ParentID: 1, Dev: dev, Root: "/", MountPoint: point, Options: "rw,relatime",
		FSType: fsType, Source: "/dev/fake", SuperOptions: "rw",
	})
	return s.nextID
}

// Unmount removes every mount of dev.
func (s *System) Unmount(dev session.DevNum) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.mounts[:0]
	for _, m := range s.mounts {
		if m.Dev != dev {
			out = append(out, m)
		}
	}
	s.mounts = out
}

// ReadMounts is the mount table, for Manager.ReadMounts.
func (s *System) ReadMounts() ([]session.MountInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]session.MountInfo(nil), s.mounts...), nil
}

func (s *System) mountedLocked(dev session.DevNum) bool {
	for _, m := range s.mounts {
		if m.Dev == dev {
			return true
		}
	}
	return false
}

// Manager returns a Manager wired to this world, with stateDir and a
// default store.
func (s *System) Manager(stateDir, store string) *session.Manager {
	return &session.Manager{
		StateDir:   stateDir,
		Kernel:     s.Kernel,
		Store:      s.Store,
		Prober:     s.Prober,
		Images:     s.Images,
		ReadMounts: s.ReadMounts,
		Stores:     []string{store},
	}
}

// Prober is the fake device prober: a table of paths.
type Prober struct {
	sys     *System
	devices map[string]session.Identity
}

// Add makes a block device appear at path.
func (p *Prober) Add(path string, id session.Identity) {
	p.sys.mu.Lock()
	defer p.sys.mu.Unlock()
	p.devices[path] = id
}

// Remove makes the device at path disappear.
func (p *Prober) Remove(path string) {
	p.sys.mu.Lock()
	defer p.sys.mu.Unlock()
	delete(p.devices, path)
}

// Identify implements session.Prober.
func (p *Prober) Identify(_ context.Context, path string) (session.Identity, error) {
	p.sys.mu.Lock()
	defer p.sys.mu.Unlock()
	id, ok := p.devices[path]
	if !ok {
		return session.Identity{}, fmt.Errorf("%s: %w", path, os.ErrNotExist)
	}
	return id, nil
}

var errExists = errors.New("exists")
