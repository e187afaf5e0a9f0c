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
	return FileMap{Device: node, Dev: dev, Extents: exts}, nil
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
