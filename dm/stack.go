package dm

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/dmsnap/dmsnap/internal/names"
)

// Prefix starts the name of every device-mapper device dmsnap creates.
const Prefix = "dmsnap-"

// ValidateName checks a stack name by dmsnap's one naming rule
// (internal/names, which package session applies too): [A-Za-z0-9_.-], at
// most 100 bytes, not "." or "..", and not ending in "-real" or
// "-snap<digits>".
func ValidateName(name string) error { return names.Validate(name) }

// Stack is the device-mapper stack of one activated device
// (docs/architecture.md, "What dmsnap builds"), for Name "sdb1" over
// Device /dev/sdb1:
//
//	dmsnap-sdb1        snapshot-origin  dmsnap-sdb1-real       (users mount this)
//	dmsnap-sdb1-real   linear           /dev/sdb1              (holds the raw device)
//	dmsnap-sdb1-snapN  snapshot         dmsnap-sdb1-real <cow> P <chunk>
//	dmsnap-sdb1-cowN   linear           the session's cow.img (cow.go)
//
// A Stack is a description; its methods act on the kernel through DM (the
// real kernel when nil). Every method that changes more than one device
// undoes what it did when a later step fails.
type Stack struct {
	Name   string // stack name, see ValidateName
	Device string // raw block device path; needed by Build only
	DM     Kernel // nil means System{}
}

func (s Stack) dm() Kernel {
	if s.DM == nil {
		return System{}
	}
	return s.DM
}

// OriginName is the snapshot-origin device users mount: dmsnap-NAME.
func (s Stack) OriginName() string { return Prefix + s.Name }

// RealName is the linear device holding the raw device: dmsnap-NAME-real.
func (s Stack) RealName() string { return Prefix + s.Name + "-real" }

// SnapshotName is the snapshot device of session n: dmsnap-NAME-snapN.
func (s Stack) SnapshotName(n int) string { return s.snapPrefix() + strconv.Itoa(n) }

func (s Stack) snapPrefix() string { return Prefix + s.Name + "-snap" }

// OriginPath is /dev/mapper/dmsnap-NAME.
func (s Stack) OriginPath() string { return MapperPath(s.OriginName()) }

// RealPath is /dev/mapper/dmsnap-NAME-real.
func (s Stack) RealPath() string { return MapperPath(s.RealName()) }

// SnapshotPath is /dev/mapper/dmsnap-NAME-snapN.
func (s Stack) SnapshotPath(n int) string { return MapperPath(s.SnapshotName(n)) }

// UUIDPrefix starts the device-mapper UUID of every device dmsnap makes:
// DMSNAP-<name>-<part>, part being origin, real, snap<N>, cow<N> or, for a
// view, at<secs> (dm names: dmsnap-<name>[-<part>]). Stacks are recognised
// by UUID, not by name, so that another dmsnap-* device is never taken for
// part of one.
const UUIDPrefix = "DMSNAP-"

func (s Stack) uuid(part string) string { return UUIDPrefix + s.Name + "-" + part }

// ParseUUID splits a UUID made by Stack into the stack's name and the part
// (ok false: not one of dmsnap's).
func ParseUUID(uuid string) (name, part string, ok bool) {
	rest, ok := strings.CutPrefix(uuid, UUIDPrefix)
	if !ok {
		return "", "", false
	}
	i := strings.LastIndexByte(rest, '-')
	if i <= 0 {
		return "", "", false
	}
	return rest[:i], rest[i+1:], true
}

func (s Stack) check(op string) error {
	if err := ValidateName(s.Name); err != nil {
		return &Error{Op: op, Device: s.Name, Err: err, Hint: "choose another name with --name"}
	}
	return nil
}

// undo runs the undo steps of a failed operation in order and returns the
// original error, with any undo failure joined to it (it then needs a
// human: the message says which device was left behind).
func undo(err error, steps ...func() error) error {
	var errs []error
	for _, step := range steps {
		if uerr := step(); uerr != nil {
			errs = append(errs, uerr)
		}
	}
	if len(errs) == 0 {
		return err
	}
	return errors.Join(err, fmt.Errorf("undoing it also failed, left behind: %w", errors.Join(errs...)))
}

// Build creates dmsnap-NAME-real (linear over Device) and dmsnap-NAME
// (snapshot-origin over -real), both resumed, with no snapshot yet. Device
// must be a block device nobody uses: a mounted device is refused with
// ErrBusy and a message saying where it is mounted.
func (s Stack) Build() error {
	const op = "activate"
	if err := s.check(op); err != nil {
		return err
	}
	m := s.dm()
	bd, err := m.CheckUnused(s.Device)
	if err != nil {
		return err
	}
	if bd.Sectors == 0 {
		return errorf(op, s.Device, nil, "", "%s has size zero", s.Device)
	}
	real, origin := s.RealName(), s.OriginName()
	rm := func(name string) func() error { return func() error { return m.Remove(name) } }

	ri, err := m.Create(real, s.uuid("real"))
	if err != nil {
		return err
	}
	if err := m.Load(real, Linear{Length: bd.Sectors, Device: bd.Dev}); err != nil {
		return undo(err, rm(real))
	}
	if err := m.Resume(real); err != nil {
		return undo(err, rm(real))
	}
	if _, err := m.Create(origin, s.uuid("origin")); err != nil {
		return undo(err, rm(real))
	}
	if err := m.Load(origin, SnapshotOrigin{Length: bd.Sectors, Origin: ri.Dev}); err != nil {
		return undo(err, rm(origin), rm(real))
	}
	if err := m.Resume(origin); err != nil {
		return undo(err, rm(origin), rm(real))
	}
	return nil
}

// live is what the snapshot operations need to know of a built stack.
type live struct {
	real    Dev
	origin  Dev
	sectors uint64
	merging bool // the origin is a snapshot-merge (an instant restore), see merge.go
}

// live reads the stack back from the kernel and checks it is ours: the
// origin is a snapshot-origin over -real, or a snapshot-merge over -real
// (an instant restore running).
func (s Stack) live(op string) (live, error) {
	if err := s.check(op); err != nil {
		return live{}, err
	}
	m := s.dm()
	ri, err := m.Info(s.RealName())
	if err != nil {
		return live{}, err
	}
	oi, err := m.Info(s.OriginName())
	if err != nil {
		return live{}, err
	}
	tbl, err := m.Table(s.OriginName())
	if err != nil {
		return live{}, err
	}
	if len(tbl) != 1 {
		return live{}, errorf(op, s.OriginName(), nil, "", "has %d targets, want one snapshot-origin", len(tbl))
	}
	t, err := ParseTarget(tbl[0])
	if sm, ok := t.(SnapshotMerge); err == nil && ok {
		if sm.Origin != ri.Dev {
			return live{}, errorf(op, s.OriginName(), nil, "", "merges onto %s, not onto %s (%s)", sm.Origin, s.RealName(), ri.Dev)
		}
		return live{real: ri.Dev, origin: oi.Dev, sectors: sm.Length, merging: true}, nil
	}
	so, ok := t.(SnapshotOrigin)
	if err != nil || !ok {
		return live{}, errorf(op, s.OriginName(), nil, "", "is %q, not a snapshot-origin", tbl[0].String())
	}
	if so.Origin != ri.Dev {
		return live{}, errorf(op, s.OriginName(), nil, "", "sits on %s, not on %s (%s)", so.Origin, s.RealName(), ri.Dev)
	}
	return live{real: ri.Dev, origin: oi.Dev, sectors: so.Length}, nil
}

// AddSnapshot arms snapshot n: dmsnap-NAME-snapN over -real with a new,
// empty persistent store on the block device cow (a loop device over the
// session's COW file) and chunks of chunkSectors. It zeroes cow's first 4
// KiB first, so a stale header can never bring old exceptions back.
//
// The order is the kernel's (LVM's): create and load the snapshot, reload
// the origin, suspend the origin, resume the snapshot, resume the origin.
// Copy-on-write starts when the origin resumes; no write can slip between.
func (s Stack) AddSnapshot(n int, cow string, chunkSectors uint32) error {
	return s.add("add snapshot", n, cow, chunkSectors, true, -1)
}

// ReattachSnapshot brings snapshot n back over an existing store on cow (after
// a reboot): the same sequence as AddSnapshot but without zeroing, so the
// kernel loads the exceptions already in the store. The chunk size in the
// store's header wins over chunkSectors.
func (s Stack) ReattachSnapshot(n int, cow string, chunkSectors uint32) error {
	return s.add("reattach snapshot", n, cow, chunkSectors, false, -1)
}

// Rotate arms snapshot n (new store on cow, as AddSnapshot) and removes
// snapshot old, both within one suspension of the origin, so that every
// write lands in exactly one of the two. If old cannot be removed the new
// snapshot is taken out again and the stack is left as it was.
func (s Stack) Rotate(old, n int, cow string, chunkSectors uint32) error {
	if old < 0 || old == n {
		return errorf("rotate snapshot", s.SnapshotName(old), nil, "", "cannot rotate snapshot %d into %d", old, n)
	}
	return s.add("rotate snapshot", n, cow, chunkSectors, true, old)
}

func (s Stack) add(op string, n int, cow string, chunk uint32, fresh bool, old int) error {
	if n < 0 {
		return errorf(op, s.Name, nil, "", "negative snapshot number %d", n)
	}
	if err := ValidateChunkSectors(chunk); err != nil {
		return &Error{Op: op, Device: s.SnapshotName(n), Err: err, Hint: "use a chunk size such as 4KiB (8 sectors)"}
	}
	l, err := s.live(op)
	if err != nil {
		return err
	}
	m := s.dm()
	name, origin := s.SnapshotName(n), s.OriginName()
	if old >= 0 {
		oi, err := m.Info(s.SnapshotName(old))
		if err != nil {
			return err
		}
		if oi.OpenCount > 0 {
			return &Error{Op: op, Device: oi.Name, Kind: ErrBusy,
				Err:  fmt.Errorf("%s is open (%d openers)", oi.Name, oi.OpenCount),
				Hint: "close or unmount the snapshot view, then retry"}
		}
	}
	cd, err := m.Inspect(cow)
	if err != nil {
		return err
	}
	if cd.Dev == l.real || cd.Dev == l.origin {
		return errorf(op, cow, nil, "give the loop device of the session's COW file",
			"COW device %s is the stack's own device %s", cow, cd.Dev)
	}
	if fresh {
		if err := m.ZeroCOWHeader(cow); err != nil {
			return err
		}
	}
	snap := Snapshot{Length: l.sectors, Origin: l.real, COW: cd.Dev, ChunkSectors: chunk}
	rm := func(name string) func() error { return func() error { return m.Remove(name) } }
	resumeOrigin := func() error { return resumeOrStuck(m, origin) }

	if _, err := m.Create(name, s.uuid("snap"+strconv.Itoa(n))); err != nil {
		return err
	}
	if err := m.Load(name, snap); err != nil {
		return undo(err, rm(name))
	}
	// Reloading the origin's (unchanged) table is what LVM does; the origin
	// recomputes its split boundary from its snapshots' chunk sizes when it
	// resumes. A merging origin keeps its table: a reloaded snapshot-merge
	// would be a second merging snapshot, and it splits I/O by its own
	// chunk size anyway.
	if !l.merging {
		if err := m.Load(origin, SnapshotOrigin{Length: l.sectors, Origin: l.real}); err != nil {
			return undo(err, rm(name))
		}
	}
	if err := m.Suspend(origin); err != nil {
		return undo(err, func() error { return m.ClearTable(origin) }, rm(name))
	}
	// From here the origin is suspended: every undo path must resume it.
	if err := m.Resume(name); err != nil {
		return undo(err, rm(name), resumeOrigin)
	}
	if old >= 0 {
		if err := m.Remove(s.SnapshotName(old)); err != nil {
			return undo(err, rm(name), resumeOrigin)
		}
	}
	if err := resumeOrStuck(m, origin); err != nil {
		return err
	}
	if old >= 0 {
		return s.RemoveCOW(old)
	}
	return nil
}

// resumeOrStuck resumes a suspended origin, trying twice: a suspended origin
// blocks every I/O to it, so giving up here has to say so loudly.
func resumeOrStuck(m Mapper, origin string) error {
	err := m.Resume(origin)
	if err == nil {
		return nil
	}
	if m.Resume(origin) == nil {
		return nil
	}
	e := newError("resume", origin, err, "")
	e.Hint = fmt.Sprintf("%s is left suspended and all I/O to it blocks: resume it (dmsetup resume %s) or deactivate the device", MapperPath(origin), origin)
	return e
}

// RemoveSnapshot removes snapshot n with the origin suspended, then its
// COW device (AttachCOW). An open snapshot (a mounted view) is ErrBusy and
// nothing changes. A snapshot already gone is ErrNotFound, its COW device
// removed all the same.
func (s Stack) RemoveSnapshot(n int) error {
	const op = "remove snapshot"
	if err := s.check(op); err != nil {
		return err
	}
	m := s.dm()
	name, origin := s.SnapshotName(n), s.OriginName()
	si, err := m.Info(name)
	if errors.Is(err, ErrNotFound) {
		if cerr := s.RemoveCOW(n); cerr != nil {
			return cerr
		}
		return err
	}
	if err != nil {
		return err
	}
	if si.OpenCount > 0 {
		return &Error{Op: op, Device: name, Kind: ErrBusy,
			Err:  fmt.Errorf("%s is open (%d openers)", name, si.OpenCount),
			Hint: "close or unmount the snapshot view, then retry"}
	}
	if _, err := m.Info(origin); errors.Is(err, ErrNotFound) {
		// No origin (a half-torn-down stack): nothing to suspend.
		if err := m.Remove(name); err != nil {
			return err
		}
		return s.RemoveCOW(n)
	} else if err != nil {
		return err
	}
	if err := m.Suspend(origin); err != nil {
		return err
	}
	if err := m.Remove(name); err != nil {
		return undo(err, func() error { return resumeOrStuck(m, origin) })
	}
	if err := resumeOrStuck(m, origin); err != nil {
		return err
	}
	return s.RemoveCOW(n)
}

// SnapshotInfo is one live snapshot of a stack.
type SnapshotInfo struct {
	N         int
	Name      string
	Dev       Dev
	OpenCount int32
	Merging   bool     // loaded as snapshot-merge
	Target    Snapshot // origin, COW device and chunk size as loaded
}

// Snapshots lists the stack's live snapshot devices, by number: those named
// dmsnap-NAME-snapN whose table is a snapshot (or snapshot-merge) target.
func (s Stack) Snapshots() ([]SnapshotInfo, error) {
	if err := s.check("list snapshots"); err != nil {
		return nil, err
	}
	m := s.dm()
	devs, err := s.snapshotDevices()
	if err != nil {
		return nil, err
	}
	var out []SnapshotInfo
	for _, d := range devs {
		if !d.LiveTable {
			continue
		}
		tbl, err := m.Table(d.Name)
		if err != nil {
			return nil, err
		}
		if len(tbl) != 1 {
			continue
		}
		t, err := ParseTarget(tbl[0])
		if err != nil {
			return nil, &Error{Op: "list snapshots", Device: d.Name, Err: err}
		}
		n, _ := strconv.Atoi(strings.TrimPrefix(d.Name, s.snapPrefix()))
		info := SnapshotInfo{N: n, Name: d.Name, Dev: d.Dev, OpenCount: d.OpenCount}
		switch t := t.(type) {
		case Snapshot:
			info.Target = t
		case SnapshotMerge:
			info.Target, info.Merging = Snapshot(t), true
		default:
			continue
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].N < out[j].N })
	return out, nil
}

// SnapshotStatus returns snapshot n's status (usage, or Invalid).
func (s Stack) SnapshotStatus(n int) (SnapshotStatus, error) {
	const op = "snapshot status"
	if err := s.check(op); err != nil {
		return SnapshotStatus{}, err
	}
	name := s.SnapshotName(n)
	st, err := s.dm().Status(name)
	if err != nil {
		return SnapshotStatus{}, err
	}
	if len(st) != 1 || (st[0].Type != "snapshot" && st[0].Type != "snapshot-merge") {
		return SnapshotStatus{}, errorf(op, name, nil, "", "is not a snapshot device (%d targets)", len(st))
	}
	ss, err := ParseSnapshotStatus(st[0].Params)
	if err != nil {
		return SnapshotStatus{}, &Error{Op: op, Device: name, Err: err}
	}
	return ss, nil
}

// Active reports whether the stack's origin device exists.
func (s Stack) Active() (bool, error) {
	if err := s.check("status"); err != nil {
		return false, err
	}
	_, err := s.dm().Info(s.OriginName())
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// snapshotDevices lists the names of the stack's snapshot devices: named
// dmsnap-NAME-snapN, and either with no live table yet (a half-made snapshot)
// or with a snapshot or snapshot-merge table.
func (s Stack) snapshotDevices() ([]DeviceInfo, error) {
	devs, err := s.numbered(s.snapPrefix(), func(tbl []TargetSpec) bool {
		return len(tbl) == 1 && (tbl[0].Type == "snapshot" || tbl[0].Type == "snapshot-merge")
	})
	out := make([]DeviceInfo, len(devs))
	for i, d := range devs {
		out[i] = d.info
	}
	return out, err
}

// numberedDevice is a device named <prefix>N.
type numberedDevice struct {
	n    int
	info DeviceInfo
}

// numbered lists the devices named prefix followed by a number (no
// leading zeros), with no live table yet or one that tableOK accepts.
func (s Stack) numbered(prefix string, tableOK func([]TargetSpec) bool) ([]numberedDevice, error) {
	m := s.dm()
	items, err := m.List()
	if err != nil {
		return nil, err
	}
	var out []numberedDevice
	for _, it := range items {
		num, ok := strings.CutPrefix(it.Name, prefix)
		if !ok {
			continue
		}
		n, err := strconv.Atoi(num)
		if err != nil || n < 0 || strconv.Itoa(n) != num {
			continue
		}
		info, err := m.Info(it.Name)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if info.LiveTable {
			tbl, err := m.Table(it.Name)
			if err != nil {
				return nil, err
			}
			if !tableOK(tbl) {
				continue
			}
		}
		out = append(out, numberedDevice{n: n, info: info})
	}
	return out, nil
}

// Repair finishes what a crash in the middle of a stack operation left
// behind, so that the stack is in one of the states its methods produce:
// snapshot devices that never got a live table are removed, inactive tables
// left on -real or the origin are made live (if the device had none) or
// dropped (the reloaded origin table equals the live one), and a suspended
// -real or origin is resumed. COW devices without their snapshot are
// removed; one left suspended by GrowCOW drops the table it had loaded and
// resumes with its old one (if the crash came while the zeros were being
// written, cow.img stays unpinned until the session ends or is attached
// again). Live snapshots are left alone.
func (s Stack) Repair() error {
	if err := s.check("repair"); err != nil {
		return err
	}
	m := s.dm()
	fix := func(name string) error {
		info, err := m.Info(name)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		switch {
		case info.Inactive && !info.LiveTable:
			return m.Resume(name)
		case info.Inactive:
			if err := m.ClearTable(name); err != nil {
				return err
			}
		}
		if info.Suspended && info.LiveTable {
			return resumeOrStuck(m, name)
		}
		return nil
	}
	if err := fix(s.RealName()); err != nil {
		return err
	}
	snaps, err := s.snapshotDevices()
	if err != nil {
		return err
	}
	live := map[int]bool{}
	for _, sn := range snaps {
		if !sn.LiveTable && sn.OpenCount == 0 {
			if err := m.Remove(sn.Name); err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
			continue
		}
		n, _ := strconv.Atoi(strings.TrimPrefix(sn.Name, s.snapPrefix()))
		live[n] = true
	}
	cows, err := s.cowDevices()
	if err != nil {
		return err
	}
	for _, c := range cows {
		if !live[c.n] && c.info.OpenCount == 0 {
			if err := m.Remove(c.info.Name); err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
			continue
		}
		// A crash while GrowCOW had it suspended: the old table resumes.
		if err := fix(c.info.Name); err != nil {
			return err
		}
	}
	return fix(s.OriginName())
}

// cowDevices lists the stack's COW devices: named dmsnap-NAME-cowN, with no
// live table yet or a table of linear targets only.
func (s Stack) cowDevices() ([]numberedDevice, error) {
	return s.numbered(Prefix+s.Name+"-cow", allLinear)
}

func allLinear(tbl []TargetSpec) bool {
	for _, t := range tbl {
		if t.Type != "linear" {
			return false
		}
	}
	return len(tbl) > 0
}

// Teardown removes the whole stack: the origin, every snapshot and COW
// device, -real. It
// refuses with ErrBusy, before removing anything, while the origin or a
// snapshot is open (mounted). Devices already gone are skipped, so it can be
// run again after a partial failure. Loop devices under the snapshots are
// not touched: attached with AutoClear they go away with the snapshots.
func (s Stack) Teardown() error {
	const op = "deactivate"
	if err := s.check(op); err != nil {
		return err
	}
	m := s.dm()
	snaps, err := s.snapshotDevices()
	if err != nil {
		return err
	}
	var names []string
	if oi, err := m.Info(s.OriginName()); err == nil {
		if _, merging, err := s.merging(); err != nil {
			return err
		} else if merging {
			return mergingError(op, s.OriginName())
		}
		if oi.OpenCount > 0 {
			return &Error{Op: op, Device: s.OriginName(), Kind: ErrBusy,
				Err:  fmt.Errorf("%s is open or mounted (%d openers)", s.OriginPath(), oi.OpenCount),
				Hint: "unmount it and stop its users, then retry"}
		}
		names = append(names, s.OriginName())
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	for _, sn := range snaps {
		if sn.OpenCount > 0 {
			return &Error{Op: op, Device: sn.Name, Kind: ErrBusy,
				Err:  fmt.Errorf("%s is open (%d openers)", sn.Path(), sn.OpenCount),
				Hint: "close or unmount the snapshot view, then retry"}
		}
		names = append(names, sn.Name)
	}
	cows, err := s.cowDevices()
	if err != nil {
		return err
	}
	for _, c := range cows {
		names = append(names, c.info.Name)
	}
	names = append(names, s.RealName())
	for _, name := range names {
		if err := m.Remove(name); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	return nil
}
