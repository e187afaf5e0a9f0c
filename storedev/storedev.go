// Package storedev makes and brings back dmsnap-managed stores: a
// partition (or a whole disk) wrapped in a device-mapper linear device
// that carries the store's filesystem, so that a session's COW can name
// the partition below it at the right offsets and skip the loop device a
// store on a plain partition needs (dm/below.go; docs/architecture.md,
// "Managed stores").
//
// The device starts with a 512-byte header (header.go) in a first MiB the
// filesystem does not use; the filesystem (ext4 or xfs) lives on
// dmsnap_store-<uuid> (linear, DataOffset onwards). The state directory's
// stores.json lists the stores made on this host, so that store up, run
// by udev when the device appears, knows where to mount each.
//
// The package acts on the system through Host (System is the real one):
// host tests run it against a fake over a plain file.
package storedev

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/devid"
	"github.com/dmsnap/dmsnap/internal/devnum"
)

// MinDataBytes is the smallest filesystem store create makes (mkfs.xfs
// wants more: it says so itself).
const MinDataBytes = 64 << 20

// tailWipe is how much of the device's end create zeroes: md 0.90/1.0
// superblocks and a GPT backup live there, and would outlive mkfs.
const tailWipe = 128 << 10

// Device is a block device as Host.Inspect sees it.
type Device struct {
	Path   string
	Dev    devnum.Dev
	Size   int64 // bytes
	Stable *devid.ID
}

// DeviceFile is an open device: its header is read and written through it.
type DeviceFile interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
	Close() error
}

// Host is what store create and up do to the system.
type Host interface {
	// Inspect returns the block device at path (an error for anything
	// else).
	Inspect(path string) (Device, error)
	// Busy says who uses the device at path ("" when nobody does).
	Busy(path string) (string, error)
	// Open opens the device at path, for writing when write is set.
	Open(path string, write bool) (DeviceFile, error)
	// Wrapped returns the linear device of the store with UUID uuid (its
	// /dev/mapper path and the device it maps), ok false when it is not
	// there.
	Wrapped(uuid string) (path string, below devnum.Dev, ok bool, err error)
	// Wrap makes the linear device of the store with header h over dev and
	// returns its path.
	Wrap(h Header, dev devnum.Dev) (string, error)
	// Unwrap removes the linear device of the store with UUID uuid (gone
	// is success).
	Unwrap(uuid string) error
	// Mkfs makes a filesystem of type fs on the device at path.
	Mkfs(ctx context.Context, fs, path string) error
	// Mount mounts the device at path on dir.
	Mount(path, dir, fs string) error
	// MountedAt returns the device mounted on dir itself (ok false: dir is
	// not a mount point).
	MountedAt(dir string) (dev devnum.Dev, ok bool, err error)
	// Find returns the paths at which the device numbered dev may be
	// found now ("" when none).
	Find(dev devnum.Dev) string
}

// CreateRequest is what store create is asked for.
type CreateRequest struct {
	Device string // the partition or disk to take over
	Path   string // the store directory to mount it on
	FS     string // ext4 or xfs
	// Force: make the store although the device holds something Signature
	// recognises (destroying it).
	Force bool
	Now   time.Time
	// Step, when set, is told each step as it starts (for a line of
	// progress: mkfs of a large device takes a while).
	Step func(what string)
}

func (r CreateRequest) step(format string, a ...any) {
	if r.Step != nil {
		r.Step(fmt.Sprintf(format, a...))
	}
}

// Error is a refusal or failure of a store operation; Busy marks a device
// in use (the CLI's exit 4).
type Error struct {
	Op, Device string
	Err        error
	Hint       string
	Busy       bool
}

func (e *Error) Error() string {
	s := fmt.Sprintf("store %s %s: %v", e.Op, e.Device, e.Err)
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes a Busy error dm.ErrBusy.
func (e *Error) Is(target error) bool { return e.Busy && target == dm.ErrBusy }

// Create makes a managed store on req.Device and mounts it on req.Path,
// and records it in rs (which the caller saves). It refuses, changing
// nothing, a device that is in use, too small, or holds anything
// Signature knows (unless req.Force), a path that is a mount point or a
// directory that is not empty, a path or device already a managed store.
// A failure after the header is written takes the header and the linear
// device away again.
func Create(ctx context.Context, h Host, rs *Records, req CreateRequest) (Record, error) {
	fail := func(err error, hint string) (Record, error) {
		return Record{}, &Error{Op: "create", Device: req.Device, Err: err, Hint: hint}
	}
	if !knownFS(req.FS) {
		return fail(fmt.Errorf("filesystem %q is not one of %v", req.FS, FSTypes), "")
	}
	if !filepath.IsAbs(req.Path) {
		return fail(fmt.Errorf("store path %q is not absolute", req.Path), "")
	}
	path := filepath.Clean(req.Path)
	if r := rs.ByPath(path); r != nil {
		return fail(fmt.Errorf("%s is already a managed store (on %s)", path, r.Device), "dmsnap store list shows it")
	}
	if err := emptyDir(h, path); err != nil {
		return fail(err, "choose another --store, or empty it first")
	}
	d, err := h.Inspect(req.Device)
	if err != nil {
		return fail(err, "")
	}
	if who, err := h.Busy(req.Device); err != nil {
		return fail(err, "")
	} else if who != "" {
		return Record{}, &Error{Op: "create", Device: req.Device, Err: fmt.Errorf("%s is in use: %s", req.Device, who), Busy: true}
	}
	if d.Size < DataOffset+MinDataBytes+tailWipe {
		return fail(fmt.Errorf("%s holds %d bytes; a store needs at least %d", req.Device, d.Size, DataOffset+MinDataBytes+tailWipe), "")
	}
	f, err := h.Open(req.Device, true)
	if err != nil {
		return fail(err, "")
	}
	defer f.Close()
	if sig, err := Signature(f, d.Size); err != nil {
		return fail(err, "")
	} else if sig != "" && !req.Force {
		return fail(fmt.Errorf("%s holds %s", req.Device, sig), "nothing was written; --force destroys it and makes the store")
	}
	hd := Header{DataOffset: DataOffset, DataLength: uint64(d.Size-DataOffset) &^ 4095, FS: req.FS, Created: req.Now.Unix()}
	if _, err := rand.Read(hd.UUID[:]); err != nil {
		return fail(err, "")
	}
	req.step("writing the store header on %s", req.Device)
	if err := writeHeader(f, hd, d.Size); err != nil {
		return fail(err, "")
	}
	rec := Record{Path: path, UUID: hd.UUIDString(), FS: req.FS, Device: req.Device, Dev: d.Dev, Stable: d.Stable, Created: hd.Created}
	wrapped, err := h.Wrap(hd, d.Dev)
	if err == nil {
		req.step("making the %s filesystem on %s (%d MiB)", req.FS, wrapped, hd.DataLength>>20)
		if err = h.Mkfs(ctx, req.FS, wrapped); err == nil {
			req.step("mounting %s on %s", wrapped, path)
			err = mountOn(h, wrapped, path, req.FS)
		}
	}
	if err != nil {
		err = errors.Join(err, h.Unwrap(hd.UUIDString()), clearHeader(f))
		return fail(err, "the device's first MiB is zeros again")
	}
	rs.Stores = append(rs.Stores, rec)
	return rec, nil
}

// emptyDir refuses a path that is a mount point, or a directory with
// anything in it (a mount would hide it), or something else than a
// directory. A missing path is fine: Create makes it.
func emptyDir(h Host, path string) error {
	if _, ok, err := h.MountedAt(path); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("something is mounted on %s", path)
	}
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", path)
	}
	ents, err := os.ReadDir(path)
	if err != nil {
		return err
	}
	if len(ents) > 0 {
		return fmt.Errorf("%s is not empty (%d entries): the store's mount would hide them", path, len(ents))
	}
	return nil
}

// writeHeader zeroes the device's first DataOffset bytes and its last
// tailWipe, then writes hd, and syncs.
func writeHeader(f DeviceFile, hd Header, size int64) error {
	b, err := hd.Marshal()
	if err != nil {
		return err
	}
	zero := make([]byte, DataOffset)
	if _, err := f.WriteAt(zero[:tailWipe], size-tailWipe); err != nil {
		return fmt.Errorf("wipe the device's end: %w", err)
	}
	copy(zero, b)
	if _, err := f.WriteAt(zero, 0); err != nil {
		return fmt.Errorf("write the store header: %w", err)
	}
	return f.Sync()
}

func clearHeader(f DeviceFile) error {
	if _, err := f.WriteAt(make([]byte, HeaderSize), 0); err != nil {
		return fmt.Errorf("clear the store header: %w", err)
	}
	return f.Sync()
}

func mountOn(h Host, dev, dir, fs string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return h.Mount(dev, dir, fs)
}

// ReadHeader reads the header of the device at path.
func ReadHeader(h Host, path string) (Header, error) {
	f, err := h.Open(path, false)
	if err != nil {
		return Header{}, err
	}
	defer f.Close()
	b := make([]byte, HeaderSize)
	if _, err := f.ReadAt(b, 0); err != nil {
		return Header{}, fmt.Errorf("read %s: %w", path, err)
	}
	return ParseHeader(b)
}

// Up brings the managed store on the device at path back: its linear
// device, then its mount, each only when missing. It refuses a device
// without a store header, a store not listed in rs (made on another host,
// or removed), a device smaller than its header says, and a store path
// where something else is mounted. It returns the store's record, with
// the device's path and number as seen now (changed reports whether they
// differ from what rs had: the caller then saves rs).
func Up(h Host, rs *Records, path string) (rec Record, changed bool, err error) {
	fail := func(err error, hint string) (Record, bool, error) {
		return Record{}, false, &Error{Op: "up", Device: path, Err: err, Hint: hint}
	}
	d, err := h.Inspect(path)
	if err != nil {
		return fail(err, "")
	}
	hd, err := ReadHeader(h, path)
	if errors.Is(err, ErrNoHeader) {
		return fail(fmt.Errorf("%s is not a dmsnap store", path), "")
	} else if err != nil {
		return fail(err, "")
	}
	r := rs.ByUUID(hd.UUIDString())
	if r == nil {
		return fail(fmt.Errorf("store %s on %s is not one this host made (not in %s)", hd.UUIDString(), path, RecordsFile), "")
	}
	if end := hd.DataOffset + hd.DataLength; uint64(d.Size) < end {
		return fail(fmt.Errorf("%s holds %d bytes, its store header says %d", path, d.Size, end), "")
	}
	wrapped, below, ok, err := h.Wrapped(r.UUID)
	if err != nil {
		return fail(err, "")
	}
	if ok && below != d.Dev {
		return fail(fmt.Errorf("the store's device-mapper device %s maps %s, not %s (%s)", r.MapperName(), below, path, d.Dev), "two devices carry the same store; remove the other")
	}
	if !ok {
		if who, err := h.Busy(path); err != nil {
			return fail(err, "")
		} else if who != "" {
			return Record{}, false, &Error{Op: "up", Device: path, Err: fmt.Errorf("%s is in use: %s", path, who), Busy: true}
		}
		if wrapped, err = h.Wrap(hd, d.Dev); err != nil {
			return fail(err, "")
		}
	}
	wd, err := h.Inspect(wrapped)
	if err != nil {
		return fail(err, "")
	}
	switch m, mounted, err := h.MountedAt(r.Path); {
	case err != nil:
		return fail(err, "")
	case mounted && m != wd.Dev:
		return fail(fmt.Errorf("%s is mounted from another device (%s), not the store's %s (%s)", r.Path, m, wrapped, wd.Dev), "unmount it, then run store up again")
	case !mounted:
		if err := mountOn(h, wrapped, r.Path, r.FS); err != nil {
			return fail(err, "")
		}
	}
	changed = r.Device != path || r.Dev != d.Dev
	r.Device, r.Dev = path, d.Dev
	return *r, changed, nil
}

// Ensure brings up the store of r when it is not mounted, finding its
// device by the number and the path last seen (each checked by its
// header), and reports whether the store is mounted now. One try: a
// caller that waits for the device retries (under its lock each time).
func Ensure(h Host, rs *Records, r Record) (bool, error) {
	if _, ok, err := h.MountedAt(r.Path); err != nil || ok {
		return ok, err
	}
	var last error
	for _, p := range []string{h.Find(r.Dev), r.Device} {
		if p == "" {
			continue
		}
		if hd, err := ReadHeader(h, p); err != nil || hd.UUIDString() != r.UUID {
			continue
		}
		if _, _, err := Up(h, rs, p); err != nil {
			last = err
			continue
		}
		return true, nil
	}
	return false, last
}
