package session

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/internal/devid"
	"github.com/dmsnap/dmsnap/internal/fsprobe"
)

// SystemProber identifies the block devices of the running system: stat for
// the number, the device's size, and its filesystem's type and UUID read
// from the superblock (fsprobe.Probe). It needs no udev and no blkid.
type SystemProber struct{}

var _ Prober = SystemProber{}

// Identify implements Prober.
//
// A regular file is an image (Identity.Image): its identity is what a loop
// device over it shows (the file's device and inode, by its absolute path),
// with no device number.
func (SystemProber) Identify(_ context.Context, path string) (Identity, error) {
	if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() {
		return identifyImage(path)
	}
	dev, err := BlockDevNum(path)
	if err != nil {
		return Identity{}, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Identity{}, fmt.Errorf("identify %s: %w", path, err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return Identity{}, fmt.Errorf("identify %s: size: %w", path, err)
	}
	id := Identity{Dev: dev, Size: size}
	id.FSType, id.FSUUID, err = fsprobe.Probe(io.NewSectionReader(f, 0, size))
	if err != nil {
		return Identity{}, fmt.Errorf("identify %s: %w", path, err)
	}
	stable, err := devid.Read(dev.Major, dev.Minor)
	if err != nil {
		return Identity{}, fmt.Errorf("identify %s: %w", path, err)
	}
	id.Stable = &stable
	return id, nil
}

func identifyImage(path string) (Identity, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return Identity{}, fmt.Errorf("identify %s: %w", path, err)
	}
	f, err := os.OpenFile(abs, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Identity{}, fmt.Errorf("identify %s: %w", path, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Identity{}, fmt.Errorf("identify %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return Identity{}, fmt.Errorf("identify %s: not a regular file", path)
	}
	id := Identity{Size: st.Size, Image: true, Stable: &devid.ID{Kind: devid.KindLoop, LoopFile: abs, LoopFileDev: st.Dev, LoopFileInode: st.Ino}}
	id.FSType, id.FSUUID, err = fsprobe.Probe(io.NewSectionReader(f, 0, st.Size))
	if err != nil {
		return Identity{}, fmt.Errorf("identify %s: %w", path, err)
	}
	return id, nil
}
