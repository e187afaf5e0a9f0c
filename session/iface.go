package session

import (
	"context"
	"time"
)

// Kernel is the device-mapper side of the session life cycle, at the level
// of the dmsnap stack (docs/architecture.md, "What dmsnap builds"). Package dm provides the real
// one (dm.Stack and loop devices behind a thin adapter); sessiontest.Kernel
// is an in-memory fake with the same rules.
//
// Every method is idempotent where the kernel allows it (removing what is
// gone succeeds), so a reconcile can repeat a step a crash interrupted.
// Errors about a busy device wrap ErrBusy or dm.ErrBusy.
type Kernel interface {
	// Stacks lists every dmsnap stack present, complete or half-built:
	// which of dmsnap-NAME and dmsnap-NAME-real exist, and every
	// dmsnap-NAME-snapN with its status.
	Stacks(ctx context.Context) ([]StackInfo, error)
	// StackUp builds dmsnap-NAME-real (linear over the raw device at
	// devicePath) and dmsnap-NAME (snapshot-origin over -real). It refuses a
	// mounted or open device.
	StackUp(ctx context.Context, name, devicePath string) error
	// AttachSnapshot puts cowFile on a loop device (auto-clear, so it goes
	// away with the snapshot) and stacks dmsnap-NAME-snapN over -real with
	// it, the origin suspended only for the table change. It never zeroes
	// the COW: a new session's cow.img is all zeros by construction (the
	// Store makes it), and an existing one — after a reboot — must bring its
	// exceptions back.
	AttachSnapshot(ctx context.Context, name string, n int, cowFile string, chunkSectors uint32) error
	// RemoveSnapshot removes dmsnap-NAME-snapN (and so its loop device),
	// the origin suspended for the change. A snapshot already gone is
	// success.
	RemoveSnapshot(ctx context.Context, name string, n int) error
	// StackDown removes the whole stack (origin, snapshots, -real), whatever
	// of it exists. It refuses, changing nothing, while any of it is open.
	StackDown(ctx context.Context, name string) error
	// FileUsers lists what in the kernel holds or writes the file at path
	// (a session's COW file): loop devices bound to it, tables that map its
	// blocks. Empty when nothing does, or when the file does not exist.
	FileUsers(ctx context.Context, path string) ([]string, error)
	// Repair finishes what a crash in the middle of a stack operation left
	// (StackInfo.NeedsRepair): resumes a device left suspended — all I/O to
	// it blocks until then —, settles inactive tables, removes snapshot
	// devices that never got a table. Live snapshots are left alone.
	Repair(ctx context.Context, name string) error
}

// StackInfo is one dmsnap stack as the kernel shows it.
type StackInfo struct {
	Name       string
	HasOrigin  bool   // dmsnap-NAME exists with a snapshot-origin table
	HasReal    bool   // dmsnap-NAME-real exists with a linear table
	OriginDev  DevNum // dmsnap-NAME's number, when HasOrigin
	RawDev     DevNum // the device -real maps, when HasReal
	OriginOpen int    // openers of dmsnap-NAME (mounts, open descriptors)
	// NeedsRepair: a device of the stack is suspended, holds an inactive
	// table, or is a snapshot device without a table — a crash interrupted
	// an operation (see Kernel.Repair).
	NeedsRepair bool
	Snapshots   []SnapshotInfo // snapshot devices with a snapshot table, by number
}

// Complete reports whether the origin and -real are both there.
func (s StackInfo) Complete() bool { return s.HasOrigin && s.HasReal }

// Snapshot returns snapshot n, if the kernel has it.
func (s StackInfo) Snapshot(n int) (SnapshotInfo, bool) {
	for _, sn := range s.Snapshots {
		if sn.N == n {
			return sn, true
		}
	}
	return SnapshotInfo{}, false
}

// SnapshotState is what a snapshot target reports (dm.SnapshotState).
type SnapshotState string

const (
	SnapshotActive   SnapshotState = "active"
	SnapshotInvalid  SnapshotState = "invalid"  // dropped by the kernel: COW full or I/O error
	SnapshotOverflow SnapshotState = "overflow" // only with the "PO" store, which dmsnap does not use
	SnapshotUnknown  SnapshotState = "unknown"
)

// SectorSize is the unit of SnapshotInfo's counts (the kernel's sector).
const SectorSize = 512

// SnapshotInfo is one dmsnap-NAME-snapN device.
type SnapshotInfo struct {
	N         int
	Dev       DevNum
	State     SnapshotState
	Allocated uint64 // COW sectors in use, metadata included
	Total     uint64 // COW sectors
	Metadata  uint64 // sectors of header and metadata areas
}

// Store is the session-directory side of the life cycle. Package snapstore
// provides the real one (CreateSession, MarkMounted, Convert, …, behind a
// thin adapter); sessiontest.Store is a fake working on a real temporary
// directory.
type Store interface {
	// ArmSession creates a new session directory in store,
	// <store>/<name>_<armed Unix seconds> (the next free second when
	// taken), with its in-progress state (phase armed) and a new cow.img,
	// all zeros and sized to hold every chunk of the device. It returns
	// the directory.
	ArmSession(ctx context.Context, store string, spec ArmSpec) (dir string, err error)
	// COWFile is the path of a session's COW file.
	COWFile(dir string) string
	// MarkMounted records the mount (phase open, time, filesystem type) and
	// renames the directory to <name>_<mount Unix seconds> (the next free
	// second when taken); it returns the new directory. Repeating it on the
	// renamed directory with the same time renames nothing.
	MarkMounted(ctx context.Context, dir string, at time.Time, fsType string) (newDir string, err error)
	// MarkUnmounted records the unmount (phase closing, unless invalid).
	MarkUnmounted(ctx context.Context, dir string, at time.Time) error
	// MarkClosing records a close without an unmount (phase closing,
	// unless invalid): deactivation or rotation of a session never mounted.
	MarkClosing(ctx context.Context, dir string) error
	// MarkInvalid records that the kernel dropped the snapshot.
	MarkInvalid(ctx context.Context, dir string, reason string) error
	// Convert turns a closed session's cow.img into the session layout,
	// meta.json last. Restartable; a converted session is left as it is.
	Convert(ctx context.Context, dir string) error
	// Discard removes the directory of a session whose COW the kernel never
	// used (no cow.img, or its header still all zeros). It refuses one whose
	// COW may hold pre-images.
	Discard(ctx context.Context, dir string) error
	// Pending lists the session directories in store that are not
	// finished (no meta.json). A missing store has none.
	Pending(ctx context.Context, store string) ([]PendingSession, error)
	// LastSequence is the highest sequence number (ArmSpec.Sequence) of a
	// session of name in store, finished or not; 0 when none has one.
	LastSequence(ctx context.Context, store, name string) (int, error)
	// RestorePoints is how many finished sessions of name in store the
	// device can still be restored to (snapstore.RestorePoints).
	RestorePoints(ctx context.Context, store, name string) (int, error)
	// SetMark changes the label and pin of the session in dir (nil fields
	// are left as they are) and returns what is recorded now: in its state
	// while it is unfinished, which conversion carries into its record; in
	// the finished record after (snapstore.SetMark).
	SetMark(ctx context.Context, dir string, m Mark) (Marked, error)
}

// ArmSpec is what the store records for a new session.
type ArmSpec struct {
	Name       string    // dmsnap name, the <name> of <name>_<seconds>
	DevicePath string    // as given at activation (meta.json "device")
	Identity   Identity  // of the raw device
	ChunkSize  uint32    // bytes
	Armed      time.Time // identifies the directory with Name, see PendingSession
	// Sequence orders the sessions of a device whatever the clock says:
	// the session's number, which goes on from the store's last one when a
	// device is activated again.
	Sequence int
	// Prealloc asks for up to that many bytes at the start of cow.img to be
	// written with zeros, so that the kernel finds them allocated and
	// Kernel.AttachSnapshot can map them straight to the store's device
	// (less where the store is short of space or cannot be mapped so).
	Prealloc int64
}

// PendingSession is an unfinished session directory as the store shows it.
// (Name, Armed) identifies it even after a rename.
type PendingSession struct {
	Dir     string
	Name    string
	Armed   time.Time
	Phase   SessionState // SessionArmed, SessionOpen, SessionClosing or SessionInvalid
	COWUsed bool         // the kernel initialised cow.img: it may hold pre-images
	// Users is what in the kernel still holds or writes its COW file
	// (Kernel.FileUsers), for the directories no registered session owns.
	Users []string
}

// Prober identifies block devices.
type Prober interface {
	// Identify returns the identity of the block device at path (following
	// symlinks): number, size, and filesystem type and UUID when it holds a
	// filesystem it recognises. Not a block device is an error.
	Identify(ctx context.Context, path string) (Identity, error)
}
