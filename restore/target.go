package restore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// The destination of `restore --to FILE` (ApplyToImage). The restore reads
// a device, or an image file standing for one, and writes a new image; the
// destination must be none of what it reads, or writing it destroys the
// source while it is being read. CheckImageTarget decides that from
// stat(2) numbers, never from path names, which hard links, symbolic links
// and loop devices defeat; OpenImageTarget then opens what was checked,
// without truncating it, and makes sure it is still that file.
//
// What CheckImageTarget refuses, where the sources are the paths given (the
// device or image restored, the raw device, the sessions' files):
//
//   - a destination that is a source: the same file (st_dev and st_ino:
//     the same path, a hard link, a symbolic link to it), or the same
//     block device (st_rdev: any node of it);
//   - a destination that is the file behind a source loop device, or a
//     loop device over a source file (LOOP_GET_STATUS64's numbers, through
//     TargetProbe.LoopBacking);
//   - a destination on a filesystem whose device is a source device (or a
//     loop device over a source file): writing it would write the source;
//   - without force: an existing file that is not empty, and any block
//     device (writing the image onto a device overwrites what it holds,
//     which is legitimate only when asked for);
//   - anything that is neither a regular file nor a block device.
//
// Loop devices are followed one level; other stacking (device-mapper
// targets, partitions of a whole disk) is not: a block device destination
// needs force, and whoever gives it answers for what lies beneath.

// FileID identifies a file as stat(2) does.
type FileID struct {
	Dev  uint64      // st_dev: the filesystem holding the file
	Ino  uint64      // st_ino
	Rdev uint64      // st_rdev: the device a device node stands for
	Mode fs.FileMode // the type bits (fs.ModeDevice, fs.ModeDir, ...)
	Size int64       // bytes, for a regular file
}

// IsBlock reports whether the file is a block device node.
func (f FileID) IsBlock() bool {
	return f.Mode&fs.ModeDevice != 0 && f.Mode&fs.ModeCharDevice == 0
}

// StatPath stats path, following symbolic links, into a FileID.
func StatPath(path string) (FileID, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return FileID{}, err
	}
	return FileIDOf(fi), nil
}

// FileIDOf is the FileID of what os.Stat or (*os.File).Stat returned.
func FileIDOf(fi fs.FileInfo) FileID {
	id := FileID{Mode: fi.Mode().Type(), Size: fi.Size()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.Dev, id.Ino, id.Rdev = st.Dev, st.Ino, st.Rdev
	}
	return id
}

// TargetProbe is what CheckImageTarget sees of the system; tests give it
// made-up files and loop devices.
type TargetProbe struct {
	// Stat stats a path, following symbolic links (StatPath). A missing
	// path is an error wrapping fs.ErrNotExist.
	Stat func(path string) (FileID, error)
	// LoopBacking returns st_dev and st_ino of the file behind block
	// device rdev, ok = false when it is no loop device or is bound to no
	// file (dm.LoopBacking). nil: no loop device is followed.
	LoopBacking func(rdev uint64) (dev, ino uint64, ok bool, err error)
}

// Sentinels of *TargetError.
var (
	// ErrTargetIsSource: the destination is, or writes, something the
	// restore reads.
	ErrTargetIsSource = errors.New("destination is what the restore reads")
	// ErrTargetInUse: the destination holds data (a file that is not
	// empty, a block device) and overwriting it was not asked for.
	ErrTargetInUse = errors.New("destination holds data")
	// ErrTargetKind: the destination is neither a regular file nor a
	// block device.
	ErrTargetKind = errors.New("destination is not a file or block device")
	// ErrTargetChanged: the destination is not what CheckImageTarget
	// checked any more (it was replaced, or created, meanwhile).
	ErrTargetChanged = errors.New("destination changed since it was checked")
)

// TargetError is a destination CheckImageTarget or OpenImageTarget
// refused. Nothing was written.
type TargetError struct {
	Path string // the destination as given
	Kind error  // one of the sentinels above
	Msg  string // why, naming the source it conflicts with
}

func (e *TargetError) Error() string {
	return fmt.Sprintf("--to %s: %s; nothing was written", e.Path, e.Msg)
}

func (e *TargetError) Unwrap() error { return e.Kind }

// ImageTarget is a destination CheckImageTarget accepted.
type ImageTarget struct {
	Path string
	// Exists: the destination existed and is opened in place; otherwise
	// OpenImageTarget creates it, exclusively.
	Exists bool
	// ID is the destination as checked (when Exists).
	ID FileID

	force bool // a file that is not empty may be overwritten
}

// keys of what the restore reads.
type fileKey struct{ dev, ino uint64 }

type sourceSet struct {
	files   map[fileKey]string // file identities, to the source path
	devices map[uint64]string  // block devices (st_rdev), to the source path
}

// CheckImageTarget decides whether dest may receive the image of a restore
// that reads sources (see the rules above); force allows overwriting a file
// that is not empty or a block device. Sources that do not exist are
// skipped: there is nothing of them to destroy. It returns what
// OpenImageTarget needs; a refusal is a *TargetError.
func CheckImageTarget(dest string, sources []string, force bool, probe TargetProbe) (ImageTarget, error) {
	refuse := func(kind error, format string, args ...any) (ImageTarget, error) {
		return ImageTarget{}, &TargetError{Path: dest, Kind: kind, Msg: fmt.Sprintf(format, args...)}
	}
	backing := func(rdev uint64) (fileKey, bool, error) {
		if probe.LoopBacking == nil {
			return fileKey{}, false, nil
		}
		d, i, ok, err := probe.LoopBacking(rdev)
		return fileKey{d, i}, ok, err
	}
	set := sourceSet{files: map[fileKey]string{}, devices: map[uint64]string{}}
	for _, src := range sources {
		id, err := probe.Stat(src)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return ImageTarget{}, fmt.Errorf("--to %s: checking it is not %s: %w; nothing was written", dest, src, err)
		}
		set.files[fileKey{id.Dev, id.Ino}] = src
		if id.IsBlock() {
			set.devices[id.Rdev] = src
			k, ok, err := backing(id.Rdev)
			if err != nil {
				return ImageTarget{}, fmt.Errorf("--to %s: finding the file behind %s: %w; nothing was written", dest, src, err)
			}
			if ok {
				set.files[k] = src + "'s backing file"
			}
		}
	}

	t := ImageTarget{Path: dest, force: force}
	id, err := probe.Stat(dest)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// Created where its directory is: on that directory's filesystem.
		dir, derr := probe.Stat(filepath.Dir(dest))
		if derr != nil {
			return ImageTarget{}, fmt.Errorf("--to %s: %w; nothing was written", dest, derr)
		}
		id = FileID{Dev: dir.Dev}
	case err != nil:
		return ImageTarget{}, fmt.Errorf("--to %s: %w; nothing was written", dest, err)
	default:
		t.Exists, t.ID = true, id
		if src, ok := set.files[fileKey{id.Dev, id.Ino}]; ok {
			return refuse(ErrTargetIsSource, "it is %s (the same file: the same path, a hard link or a symbolic link to it), which the restore reads: writing the image there would destroy it; give another file", src)
		}
		switch {
		case id.IsBlock():
			if src, ok := set.devices[id.Rdev]; ok {
				return refuse(ErrTargetIsSource, "it is the block device %s (%d:%d), which the restore reads; give another file", src, unix.Major(id.Rdev), unix.Minor(id.Rdev))
			}
			k, ok, err := backing(id.Rdev)
			if err != nil {
				return ImageTarget{}, fmt.Errorf("--to %s: finding the file behind it: %w; nothing was written", dest, err)
			}
			if src, hit := set.files[k]; ok && hit {
				return refuse(ErrTargetIsSource, "it is a loop device over %s, which the restore reads; give another file", src)
			}
			if !force {
				return refuse(ErrTargetInUse, "it is a block device: writing the image onto it overwrites what it holds; pass --force to do that")
			}
		case id.Mode.IsRegular():
			if id.Size > 0 && !force {
				return refuse(ErrTargetInUse, "the file exists and holds %d bytes; pass --force to overwrite it, or give a new or empty file", id.Size)
			}
		default:
			return refuse(ErrTargetKind, "it is a %s, not a regular file or a block device", kindName(id.Mode))
		}
	}
	// Its filesystem: on a source device, or on a loop device over a
	// source file, writing the image writes the source.
	if !id.IsBlock() {
		if src, ok := set.devices[id.Dev]; ok {
			return refuse(ErrTargetIsSource, "it lives on a filesystem of %s, which the restore reads: writing it would change the source as it is read; write the image to another filesystem", src)
		}
		k, ok, err := backing(id.Dev)
		if err != nil {
			return ImageTarget{}, fmt.Errorf("--to %s: finding the file behind its filesystem's loop device: %w; nothing was written", dest, err)
		}
		if src, hit := set.files[k]; ok && hit {
			return refuse(ErrTargetIsSource, "it lives on a filesystem of a loop device over %s, which the restore reads: writing it would change the source as it is read; write the image to another filesystem", src)
		}
	}
	return t, nil
}

func kindName(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "special file"
}

// OpenImageTarget opens the destination CheckImageTarget accepted, for
// ApplyToImage. It never truncates: ApplyToImage does, once the plan has
// passed its checks. A destination that did not exist is created with
// O_EXCL, so that nothing put there meanwhile (a symbolic link to the
// source, say) is followed; one that existed is opened and must still be
// the file checked (the same st_dev and st_ino), or it is refused. A block
// device is opened exclusively: not while it is mounted.
func OpenImageTarget(t ImageTarget) (*os.File, error) {
	if !t.Exists {
		f, err := os.OpenFile(t.Path, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, fs.ErrExist) {
			return nil, &TargetError{Path: t.Path, Kind: ErrTargetChanged, Msg: "it appeared after it was checked; run the restore again"}
		}
		return f, err
	}
	flags := os.O_RDWR | unix.O_CLOEXEC
	if t.ID.IsBlock() {
		flags |= unix.O_EXCL
	}
	f, err := os.OpenFile(t.Path, flags, 0)
	if errors.Is(err, unix.EBUSY) {
		return nil, &TargetError{Path: t.Path, Kind: ErrTargetInUse, Msg: "the block device is in use (mounted, or held by another device)"}
	}
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	got := FileIDOf(fi)
	if got.Dev != t.ID.Dev || got.Ino != t.ID.Ino || got.Rdev != t.ID.Rdev {
		f.Close()
		return nil, &TargetError{Path: t.Path, Kind: ErrTargetChanged, Msg: "it was replaced after it was checked; run the restore again"}
	}
	if got.Mode.IsRegular() && got.Size > 0 && !t.force {
		f.Close()
		return nil, &TargetError{Path: t.Path, Kind: ErrTargetInUse, Msg: fmt.Sprintf("the file was empty when checked and holds %d bytes now; pass --force to overwrite it", got.Size)}
	}
	return f, nil
}

// Discard undoes OpenImageTarget after a failure that wrote nothing: it
// closes f and, when OpenImageTarget created it, removes it again (only
// if the path still names f), so a refused restore leaves no empty file.
func (t ImageTarget) Discard(f *os.File) error {
	defer f.Close()
	if t.Exists {
		return nil
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if now, err := os.Stat(t.Path); err == nil && os.SameFile(fi, now) {
		return os.Remove(t.Path)
	}
	return nil
}
