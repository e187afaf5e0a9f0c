package dm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/internal/devnum"
	"github.com/dmsnap/dmsnap/internal/filemap"
)

// MapFile finds where the bytes of the file at path lie on its
// filesystem's block device and pins the file so that they stay there
// (internal/filemap): it checks that the filesystem allows writing them
// through the device (filemap.Probe), sets the immutable flag, drops the
// file's page cache and reads its extents. A file that cannot be mapped is
// an error that says why (filemap.ErrUnsupported); it is left unpinned.
// It also reads the table of the filesystem's device when that is
// device-mapper (FileMap.Below), at the time of the call.
func MapFile(path string) (FileMap, error) {
	const op = "map file"
	f, err := os.Open(path)
	if err != nil {
		return FileMap{}, newError(op, path, err, "")
	}
	defer f.Close()
	d, err := filemap.Probe(f)
	if err != nil {
		return FileMap{}, &Error{Op: op, Device: path, Err: err}
	}
	dev := Dev{Major: d.Major, Minor: d.Minor}
	node, err := blockNode(sysDir, devDir, dev)
	if err != nil {
		return FileMap{}, &Error{Op: op, Device: path, Err: err}
	}
	if err := filemap.Pin(f, true); err != nil {
		return FileMap{}, &Error{Op: op, Device: path, Err: err}
	}
	exts, err := pinnedExtents(f)
	if err != nil {
		if uerr := filemap.Pin(f, false); uerr != nil {
			err = fmt.Errorf("%w (and unpinning it failed: %v)", err, uerr)
		}
		return FileMap{}, &Error{Op: op, Device: path, Err: err}
	}
	fm := FileMap{Device: node, Dev: dev, Extents: exts}
	fm.Below, fm.NotBelow = readBelow(sysDir, System{}, dev)
	return fm, nil
}

// PinFile sets the immutable flag of the file at path again, as MapFile
// does, after GrowCOW cleared it to write zeros into the file.
func PinFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return newError("pin file", path, err, "")
	}
	defer f.Close()
	if err := filemap.Pin(f, true); err != nil {
		return &Error{Op: "pin file", Device: path, Err: err}
	}
	return nil
}

func pinnedExtents(f *os.File) ([]filemap.Extent, error) {
	if err := filemap.DropCache(f); err != nil {
		return nil, err
	}
	return filemap.Extents(f)
}

// WhyUnmapped says why no part of the COW file at path can be mapped
// straight to its store's block device (Stack.AttachCOW), as far as can be
// seen without pinning it: the store's filesystem cannot be mapped
// (filemap.Probe: tmpfs, btrfs, ...), or the kernel refuses to open its
// mounted device for writing (mountedWriteRefused). "" when neither holds:
// then nothing of the file was written ahead to map (activate --prealloc
// 0), or the COW was made before the store allowed it.
func WhyUnmapped(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	d, err := filemap.Probe(f)
	if err != nil {
		return err.Error()
	}
	node, err := blockNode(sysDir, devDir, Dev{Major: d.Major, Minor: d.Minor})
	if err != nil {
		return err.Error()
	}
	// Opening a block device for writing writes nothing; it is what the
	// loop device over it needs (AttachLoop with BlockDevice).
	w, err := openBacking(node, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if werr := mountedWriteRefused("open store device", node, err); werr != nil {
			return werr.Error()
		}
		return newError("open store device", node, err, "").Error()
	}
	w.Close()
	return ""
}

// mountedWriteRefused turns EBUSY from a write open of block device node,
// which a filesystem has mounted, into the error that says why: from Linux
// 6.8, a kernel built without CONFIG_BLK_DEV_WRITE_MOUNTED or booted with
// bdev_allow_write_mounted=0 refuses to open a mounted device for writing,
// so the COW cannot be mapped straight to the store's device and goes
// through its filesystem. nil for any other error.
func mountedWriteRefused(op, node string, err error) *Error {
	if !errors.Is(err, unix.EBUSY) {
		return nil
	}
	return &Error{Op: op, Device: node,
		Err:  fmt.Errorf("the kernel refuses to open it for writing while it is mounted (Linux 6.8 and later with bdev_allow_write_mounted=0): %w", err),
		Hint: "boot with bdev_allow_write_mounted=1 to let the COW go straight to the store's device; the store's filesystem carries it meanwhile"}
}

// blockNode returns the /dev node of block device dev: the name the kernel
// gives it (DEVNAME in its uevent), made from the number when devtmpfs has
// not made it.
func blockNode(sys, dev string, d Dev) (string, error) {
	name, err := devnum.DevName(filepath.Join(sys, "dev", "block", d.String()))
	if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
		return "", fmt.Errorf("device %s is not a block device the kernel lists: %w", d, err)
	} else if err != nil {
		return "", err
	}
	path := filepath.Join(dev, name)
	if err := ensureNode(path, unix.S_IFBLK, d, false); err != nil {
		return "", err
	}
	return path, nil
}
