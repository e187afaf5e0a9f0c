package session

import (
	"context"
	"fmt"
	"io"
	"os"

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
func (SystemProber) Identify(_ context.Context, path string) (Identity, error) {
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
