// Package dmtest provides Fake, an in-memory dm.Kernel for tests that need
// no root and no device-mapper: the stack logic in package dm and the
// session logic above it are tested against it on any machine, and against
// the real kernel in the VM.
//
// Fake keeps the kernel's rules that matter to callers: device names are
// unique; a table load validates its targets and names only existing
// devices; Resume makes the inactive table live; a device used by another
// device's table, or open, cannot be removed (EBUSY); a block device that is
// mounted or held by a table is busy for CheckUnused and ZeroCOWHeader; a
// detached loop device still used by a table lingers until the table goes.
// Snapshot status follows the persistent store: "2c/T 2c" when resumed,
// with T the COW device's size. It does not model I/O.
package dmtest

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/filemap"
	"golang.org/x/sys/unix"
)

const dmMajor = 253

// Fake is an in-memory dm.Kernel. The zero value is not usable; call New.
type Fake struct {
	mu        sync.Mutex
	devices   map[string]*device
	blocks    map[string]*block // by path
	loops     map[int]*loop
	nextMinor uint32
	failures  []failure
	log       []string
	fileMap   func(string) (dm.FileMap, error) // MapFile's answers (SetFileMap)
	pinned    map[string]bool
}

type device struct {
	name, uuid string
	dev        dm.Dev
	live       []dm.TargetSpec
	inactive   []dm.TargetSpec
	suspended  bool
	open       int32
	// snapshot state, meaningful when live is a snapshot target
	allocated uint64
	invalid   bool
}

type block struct {
	path    string
	dev     dm.Dev
	sectors uint64
	mounted string
}

type loop struct {
	n         int
	dev       dm.Dev
	file      string
	autoclear bool
	detached  bool // LOOP_CLR_FD while in use: goes away when released
	held      bool // the Loop returned by AttachLoop is not closed yet
	direct    bool
	sizeLimit uint64
}

type failure struct {
	op, target string
	err        error
}

var _ dm.Kernel = (*Fake)(nil)

// New returns an empty fake kernel.
func New() *Fake {
	return &Fake{
		devices: map[string]*device{},
		blocks:  map[string]*block{},
		loops:   map[int]*loop{},
		pinned:  map[string]bool{},
	}
}

// AddBlockDevice registers a block device at path with the given size and
// returns its number (major 8, minors counting up).
func (f *Fake) AddBlockDevice(path string, sectors uint64) dm.Dev {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := dm.Dev{Major: 8, Minor: uint32(len(f.blocks)) * 16}
	f.blocks[path] = &block{path: path, dev: d, sectors: sectors}
	return d
}

// SetMounted marks a block device (registered or /dev/mapper/NAME) mounted
// on mountPoint, or unmounted when mountPoint is empty. A mapped device's
// open count follows.
func (f *Fake) SetMounted(path, mountPoint string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b, ok := f.blocks[path]; ok {
		b.mounted = mountPoint
		return
	}
	if d, ok := f.devices[strings.TrimPrefix(path, "/dev/mapper/")]; ok {
		if mountPoint != "" {
			d.open++
		} else if d.open > 0 {
			d.open--
		}
	}
}

// SetSnapshotUsage sets the allocated sectors a snapshot reports.
func (f *Fake) SetSnapshotUsage(name string, allocated uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d, ok := f.devices[name]; ok {
		d.allocated = allocated
	}
}

// Invalidate makes a snapshot report "Invalid", as the kernel does when its
// COW overflows.
func (f *Fake) Invalidate(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d, ok := f.devices[name]; ok {
		d.invalid = true
	}
}

// FailNext makes the next call of op ("create", "load", "suspend",
// "resume", "remove", "clear", "zero", "attach", ...) on target fail with
// err. An empty target matches any.
func (f *Fake) FailNext(op, target string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures = append(f.failures, failure{op, target, err})
}

// Log returns the state-changing calls so far, one "op target [detail]"
// string each, for tests of ordering.
func (f *Fake) Log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.log...)
}

// ResetLog forgets the calls logged so far.
func (f *Fake) ResetLog() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = nil
}

// Devices returns the names of all mapped devices, sorted.
func (f *Fake) Devices() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var names []string
	for n := range f.devices {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Suspended reports whether a mapped device is suspended.
func (f *Fake) Suspended(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.devices[name]
	return ok && d.suspended
}

// HasInactive reports whether a mapped device has an inactive table.
func (f *Fake) HasInactive(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.devices[name]
	return ok && d.inactive != nil
}

// LoopCount returns the number of bound loop devices.
func (f *Fake) LoopCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.loops)
}

// failLocked consumes a matching injected failure.
func (f *Fake) failLocked(op, target string) error {
	for i, fl := range f.failures {
		if fl.op == op && (fl.target == "" || fl.target == target) {
			f.failures = append(f.failures[:i], f.failures[i+1:]...)
			return fl.err
		}
	}
	return nil
}

func (f *Fake) logf(format string, args ...any) {
	f.log = append(f.log, fmt.Sprintf(format, args...))
}

func opErr(op, name string, errno error) error {
	return &dm.Error{Op: op, Device: name, Kind: kindOf(errno), Err: errno}
}

func kindOf(err error) error {
	switch {
	case errors.Is(err, unix.EBUSY):
		return dm.ErrBusy
	case errors.Is(err, unix.ENXIO), errors.Is(err, unix.ENOENT):
		return dm.ErrNotFound
	case errors.Is(err, unix.ENOTBLK):
		return dm.ErrNotBlockDevice
	}
	return nil
}

// Create implements dm.Mapper.
func (f *Fake) Create(name, uuid string) (dm.DeviceInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failLocked("create", name); err != nil {
		return dm.DeviceInfo{}, opErr("create", name, err)
	}
	if _, ok := f.devices[name]; ok {
		return dm.DeviceInfo{}, opErr("create", name, unix.EBUSY)
	}
	d := &device{name: name, uuid: uuid, dev: dm.Dev{Major: dmMajor, Minor: f.nextMinor}, suspended: true}
	f.nextMinor++
	f.devices[name] = d
	f.logf("create %s", name)
	return f.infoLocked(d), nil
}

func (f *Fake) infoLocked(d *device) dm.DeviceInfo {
	return dm.DeviceInfo{
		Name: d.name, UUID: d.uuid, Dev: d.dev, OpenCount: d.open,
		TargetCount: uint32(len(d.live)), Suspended: d.suspended,
		LiveTable: d.live != nil, Inactive: d.inactive != nil,
	}
}

// devs returns the devices a table line names.
func devs(s dm.TargetSpec) []dm.Dev {
	t, err := dm.ParseTarget(s)
	if err != nil {
		return nil
	}
	switch t := t.(type) {
	case dm.Linear:
		return []dm.Dev{t.Device}
	case dm.SnapshotOrigin:
		return []dm.Dev{t.Origin}
	case dm.Snapshot:
		return []dm.Dev{t.Origin, t.COW}
	case dm.SnapshotMerge:
		return []dm.Dev{t.Origin, t.COW}
	}
	return nil
}

// existsLocked reports whether some device has number d, and whether it is
// mounted.
func (f *Fake) existsLocked(d dm.Dev) (exists bool, mounted bool) {
	for _, b := range f.blocks {
		if b.dev == d {
			return true, b.mounted != ""
		}
	}
	for _, l := range f.loops {
		if l.dev == d {
			return true, false
		}
	}
	for _, x := range f.devices {
		if x.dev == d {
			return true, false
		}
	}
	return false, false
}

// heldLocked reports whether a table other than skip's names d.
func (f *Fake) heldLocked(d dm.Dev, skip string) bool {
	for _, x := range f.devices {
		if x.name == skip {
			continue
		}
		for _, tbl := range [][]dm.TargetSpec{x.live, x.inactive} {
			for _, s := range tbl {
				for _, u := range devs(s) {
					if u == d {
						return true
					}
				}
			}
		}
	}
	return false
}

// Load implements dm.Mapper.
func (f *Fake) Load(name string, targets ...dm.Target) error {
	specs, err := dm.Specs(targets...)
	if err != nil {
		return &dm.Error{Op: "load table", Device: name, Err: err}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failLocked("load", name); err != nil {
		return opErr("load table", name, err)
	}
	d, ok := f.devices[name]
	if !ok {
		return opErr("load table", name, unix.ENXIO)
	}
	for _, s := range specs {
		for _, u := range devs(s) {
			exists, mounted := f.existsLocked(u)
			if !exists || u == d.dev {
				return opErr("load table", name, unix.EINVAL)
			}
			if mounted {
				return opErr("load table", name, unix.EBUSY)
			}
		}
	}
	d.inactive = specs
	f.logf("load %s %s", name, specs[0].Type)
	return nil
}

// ClearTable implements dm.Mapper.
func (f *Fake) ClearTable(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failLocked("clear", name); err != nil {
		return opErr("clear table", name, err)
	}
	d, ok := f.devices[name]
	if !ok {
		return opErr("clear table", name, unix.ENXIO)
	}
	d.inactive = nil
	f.logf("clear %s", name)
	return nil
}

// Suspend implements dm.Mapper.
func (f *Fake) Suspend(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failLocked("suspend", name); err != nil {
		return opErr("suspend", name, err)
	}
	d, ok := f.devices[name]
	if !ok {
		return opErr("suspend", name, unix.ENXIO)
	}
	d.suspended = true
	f.logf("suspend %s", name)
	return nil
}

// Resume implements dm.Mapper.
func (f *Fake) Resume(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failLocked("resume", name); err != nil {
		return opErr("resume", name, err)
	}
	d, ok := f.devices[name]
	if !ok {
		return opErr("resume", name, unix.ENXIO)
	}
	if d.inactive != nil {
		fresh := d.live == nil || d.live[0].Type != d.inactive[0].Type
		d.live, d.inactive = d.inactive, nil
		if fresh && d.live[0].Type == "snapshot" {
			d.allocated = 2 * f.chunkLocked(d)
		}
		f.releaseLoopsLocked() // the old table's
	}
	d.suspended = false
	f.logf("resume %s", name)
	return nil
}

func (f *Fake) chunkLocked(d *device) uint64 {
	t, err := dm.ParseTarget(d.live[0])
	if s, ok := t.(dm.Snapshot); err == nil && ok {
		return uint64(s.ChunkSectors)
	}
	return 0
}

// Remove implements dm.Mapper.
func (f *Fake) Remove(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failLocked("remove", name); err != nil {
		return opErr("remove", name, err)
	}
	d, ok := f.devices[name]
	if !ok {
		return opErr("remove", name, unix.ENXIO)
	}
	if d.open > 0 || f.heldLocked(d.dev, name) {
		return opErr("remove", name, unix.EBUSY)
	}
	delete(f.devices, name)
	f.logf("remove %s", name)
	f.releaseLoopsLocked()
	return nil
}

// releaseLoopsLocked drops auto-clear or detached loops no table uses.
func (f *Fake) releaseLoopsLocked() {
	for n, l := range f.loops {
		if (l.autoclear || l.detached) && !l.held && !f.heldLocked(l.dev, "") {
			delete(f.loops, n)
		}
	}
}

// Info implements dm.Mapper.
func (f *Fake) Info(name string) (dm.DeviceInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.devices[name]
	if !ok {
		return dm.DeviceInfo{}, opErr("info", name, unix.ENXIO)
	}
	info := f.infoLocked(d)
	// Tables that use a device count as its openers, as in the kernel.
	for _, x := range f.devices {
		if x.name != name && f.uses(x, d.dev) {
			info.OpenCount++
		}
	}
	return info, nil
}

func (f *Fake) uses(x *device, d dm.Dev) bool {
	for _, s := range x.live {
		for _, u := range devs(s) {
			if u == d {
				return true
			}
		}
	}
	return false
}

// Status implements dm.Mapper.
func (f *Fake) Status(name string) ([]dm.TargetSpec, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.devices[name]
	if !ok {
		return nil, opErr("status", name, unix.ENXIO)
	}
	var out []dm.TargetSpec
	for _, s := range d.live {
		st := dm.TargetSpec{Start: s.Start, Length: s.Length, Type: s.Type}
		if s.Type == "snapshot" || s.Type == "snapshot-merge" {
			if d.invalid {
				st.Params = "Invalid"
			} else {
				chunk := f.chunkLocked(d)
				st.Params = fmt.Sprintf("%d/%d %d", d.allocated, f.cowSectorsLocked(s), 2*chunk)
			}
		}
		out = append(out, st)
	}
	return out, nil
}

func (f *Fake) cowSectorsLocked(s dm.TargetSpec) uint64 {
	t, err := dm.ParseTarget(s)
	if err != nil {
		return 0
	}
	var cow dm.Dev
	switch t := t.(type) {
	case dm.Snapshot:
		cow = t.COW
	case dm.SnapshotMerge:
		cow = t.COW
	}
	return f.sectorsLocked(cow)
}

// sectorsLocked is the size of device d: a loop device's file (or window),
// a registered block device, a mapped device's table.
func (f *Fake) sectorsLocked(d dm.Dev) uint64 {
	for _, l := range f.loops {
		if l.dev == d {
			if l.sizeLimit > 0 {
				return l.sizeLimit / dm.SectorSize
			}
			if fi, err := os.Stat(l.file); err == nil {
				return uint64(fi.Size()) / dm.SectorSize
			}
			if b, ok := f.blocks[l.file]; ok {
				return b.sectors
			}
		}
	}
	for _, b := range f.blocks {
		if b.dev == d {
			return b.sectors
		}
	}
	for _, x := range f.devices {
		if x.dev == d {
			var n uint64
			for _, s := range x.live {
				n += s.Length
			}
			return n
		}
	}
	return 0
}

// Table implements dm.Mapper.
func (f *Fake) Table(name string) ([]dm.TargetSpec, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.devices[name]
	if !ok {
		return nil, opErr("table", name, unix.ENXIO)
	}
	return append([]dm.TargetSpec(nil), d.live...), nil
}

// List implements dm.Mapper.
func (f *Fake) List() ([]dm.ListItem, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []dm.ListItem
	for _, d := range f.devices {
		out = append(out, dm.ListItem{Name: d.name, Dev: d.dev})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// lookupLocked resolves a path: registered block devices, /dev/loopN and
// /dev/mapper/NAME.
func (f *Fake) lookupLocked(path string) (dm.BlockDevice, bool) {
	if b, ok := f.blocks[path]; ok {
		return dm.BlockDevice{Path: path, Dev: b.dev, Sectors: b.sectors}, true
	}
	for _, l := range f.loops {
		if path == loopPath(l.n) && !l.detached {
			return dm.BlockDevice{Path: path, Dev: l.dev, Sectors: f.sectorsLocked(l.dev)}, true
		}
	}
	if name, ok := strings.CutPrefix(path, "/dev/mapper/"); ok {
		if d, ok := f.devices[name]; ok {
			var sectors uint64
			for _, s := range d.live {
				sectors += s.Length
			}
			return dm.BlockDevice{Path: path, Dev: d.dev, Sectors: sectors}, true
		}
	}
	return dm.BlockDevice{}, false
}

// Inspect implements dm.Mapper.
func (f *Fake) Inspect(path string) (dm.BlockDevice, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	bd, ok := f.lookupLocked(path)
	if !ok {
		if _, err := os.Stat(path); err == nil {
			return dm.BlockDevice{}, opErr("inspect", path, unix.ENOTBLK)
		}
		return dm.BlockDevice{}, opErr("inspect", path, unix.ENOENT)
	}
	return bd, nil
}

// CheckUnused implements dm.Mapper.
func (f *Fake) CheckUnused(path string) (dm.BlockDevice, error) {
	bd, err := f.Inspect(path)
	if err != nil {
		return bd, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if b, ok := f.blocks[path]; ok && b.mounted != "" {
		return dm.BlockDevice{}, &dm.Error{Op: "check", Device: path, Kind: dm.ErrBusy,
			Err: fmt.Errorf("%s is mounted on %s", path, b.mounted)}
	}
	if f.heldLocked(bd.Dev, "") {
		return dm.BlockDevice{}, &dm.Error{Op: "check", Device: path, Kind: dm.ErrBusy,
			Err: fmt.Errorf("%s is in use: it is held by a device-mapper device", path)}
	}
	return bd, nil
}

// ZeroCOWHeader implements dm.Mapper.
func (f *Fake) ZeroCOWHeader(path string) error {
	bd, err := f.Inspect(path)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failLocked("zero", path); err != nil {
		return opErr("zero COW header", path, err)
	}
	if f.heldLocked(bd.Dev, "") {
		return opErr("zero COW header", path, unix.EBUSY)
	}
	f.logf("zero %s", path)
	return nil
}

func loopPath(n int) string { return fmt.Sprintf("/dev/loop%d", n) }

// AttachLoop implements dm.Loops. The file must exist, or be a registered
// block device when opts.BlockDevice is set; its size is the loop device's
// size. Direct I/O takes whenever it is asked for. A pinned file
// (MapFile) cannot be opened for writing: EPERM, as in the kernel.
func (f *Fake) AttachLoop(file string, opts dm.LoopOptions) (*dm.Loop, error) {
	f.mu.Lock()
	_, isBlock := f.blocks[file]
	f.mu.Unlock()
	if _, err := os.Stat(file); err != nil && !(opts.BlockDevice && isBlock) {
		return nil, opErr("attach loop", file, unix.ENOENT)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failLocked("attach", file); err != nil {
		return nil, opErr("attach loop", file, err)
	}
	if f.pinned[file] && !opts.ReadOnly {
		return nil, opErr("attach loop", file, unix.EPERM)
	}
	n := 0
	for f.loops[n] != nil {
		n++
	}
	l := &loop{n: n, dev: dm.Dev{Major: 7, Minor: uint32(n)}, file: file, autoclear: opts.AutoClear, held: true,
		direct: opts.DirectIO, sizeLimit: opts.SizeLimit}
	f.loops[n] = l
	f.logf("attach %s %s", loopPath(n), file)
	dl := dm.Loop{Path: loopPath(n), Number: n, Dev: l.dev, Backing: file, AutoClear: opts.AutoClear, DirectIO: opts.DirectIO}
	return dl.WithRelease(func() error {
		f.mu.Lock()
		defer f.mu.Unlock()
		l.held = false
		f.releaseLoopsLocked()
		return nil
	}), nil
}

// DetachLoop implements dm.Loops.
func (f *Fake) DetachLoop(path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for n, l := range f.loops {
		if loopPath(n) != path || l.detached {
			continue
		}
		f.logf("detach %s", path)
		if l.held || f.heldLocked(l.dev, "") {
			l.detached = true // the kernel defers it to the last close
			return nil
		}
		delete(f.loops, n)
		return nil
	}
	return opErr("detach loop", path, unix.ENXIO)
}

// SetLoopCapacity implements dm.Loops.
func (f *Fake) SetLoopCapacity(path string) (uint64, error) {
	bd, err := f.Inspect(path)
	if err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.logf("grow %s", path)
	return bd.Sectors, nil
}

// FindLoop implements dm.Loops.
func (f *Fake) FindLoop(file string) (*dm.Loop, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ns []int
	for n, l := range f.loops {
		if l.file == file && !l.detached {
			ns = append(ns, n)
		}
	}
	if len(ns) == 0 {
		return nil, &dm.Error{Op: "find loop", Device: file, Kind: dm.ErrNotFound,
			Err: fmt.Errorf("no loop device is bound to %s", file)}
	}
	sort.Ints(ns)
	l := f.loops[ns[0]]
	return &dm.Loop{Path: loopPath(l.n), Number: l.n, Dev: l.dev, Backing: l.file, AutoClear: l.autoclear, DirectIO: l.direct}, nil
}

// SetFileMap makes MapFile answer fn(path) (nil: an error, the default, as
// for a store on tmpfs).
func (f *Fake) SetFileMap(fn func(path string) (dm.FileMap, error)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fileMap = fn
}

// Pinned reports whether MapFile pinned path and nothing unpinned it since.
func (f *Fake) Pinned(path string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pinned[path]
}

// MapFile implements dm.Loops: the answer SetFileMap gave, the file pinned.
func (f *Fake) MapFile(path string) (dm.FileMap, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failLocked("map", path); err != nil {
		return dm.FileMap{}, opErr("map file", path, err)
	}
	if f.fileMap == nil {
		return dm.FileMap{}, &dm.Error{Op: "map file", Device: path, Err: fmt.Errorf("%s: the fake maps no file unless told how: %w", path, filemap.ErrUnsupported)}
	}
	fm, err := f.fileMap(path)
	if err != nil {
		return dm.FileMap{}, err
	}
	f.pinned[path] = true
	f.logf("map %s", path)
	return fm, nil
}

// LoopOverDevice reports whether d is one of the fake's loop devices bound
// to a block device it knows (AddBlockDevice), as dm.LoopOverDevice does.
func (f *Fake) LoopOverDevice(d dm.Dev) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range f.loops {
		if l.dev == d {
			_, ok := f.blocks[l.file]
			return ok
		}
	}
	return false
}

// PinFile implements dm.Loops.
func (f *Fake) PinFile(path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failLocked("pin", path); err != nil {
		return opErr("pin file", path, err)
	}
	f.pinned[path] = true
	f.logf("pin %s", path)
	return nil
}

// UnpinFile implements dm.Loops.
func (f *Fake) UnpinFile(path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pinned[path] {
		f.logf("unpin %s", path)
	}
	delete(f.pinned, path)
	return nil
}

// FileUsers implements dm.Loops: the loop devices bound to path, and the
// devices whose tables use a loop device over the block device that
// SetFileMap says holds path (the fake does not compare extents: any use of
// that loop device counts).
func (f *Fake) FileUsers(path string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var users []string
	var fm dm.FileMap
	mapped := false
	if f.fileMap != nil {
		if m, err := f.fileMap(path); err == nil {
			fm, mapped = m, true
		}
	}
	ns := make([]int, 0, len(f.loops))
	for n := range f.loops {
		ns = append(ns, n)
	}
	sort.Ints(ns)
	names := make([]string, 0, len(f.devices))
	for name := range f.devices {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, n := range ns {
		l := f.loops[n]
		switch {
		case l.detached && !l.held && !f.heldLocked(l.dev, ""):
		case l.file == path:
			users = append(users, fmt.Sprintf("%s is bound to it", loopPath(n)))
		case mapped && l.file == fm.Device:
			for _, name := range names {
				if f.uses(f.devices[name], l.dev) {
					users = append(users, fmt.Sprintf("%s maps its blocks through %s", dm.MapperPath(name), loopPath(n)))
				}
			}
		}
	}
	return users, nil
}
