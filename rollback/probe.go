package rollback

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/fsprobe"
	"github.com/dmsnap/dmsnap/restore"
)

// probe is restore.Device over a block device (or an image file):
// writePath is checked for use, idPath probed for identity. It gives
// Preflight the size only and keeps the filesystem UUID for a warning.
type probe struct {
	path   string
	idPath string
	size   uint64
	uuid   string
	// busyWarns: a dry run reports a busy device as a warning, since it
	// writes nothing.
	busyWarns bool
	warns     []string
	// held: the caller holds path exclusively (DeviceOptions.Hold): it is
	// not mounted, and cannot be until the restore lets it go. Others may
	// have it open without O_EXCL (a reader); an instant restore does not
	// mind them, as it does not mind a mount while it merges.
	held bool
}

func newProbe(writePath, idPath string) *probe {
	return &probe{path: writePath, idPath: idPath}
}

func (d *probe) Path() string { return d.path }

// Busy implements restore.Device: mounted (per the mount table), or held
// exclusively, or opened by anyone when it is a device-mapper device.
func (d *probe) Busy() (string, error) {
	if d.held {
		return "", nil
	}
	reason, err := dm.Busy(d.path)
	if err == nil && reason != "" && d.busyWarns {
		d.warns = append(d.warns, (&restore.BusyError{Device: d.path, Reason: reason}).Error())
		return "", nil
	}
	return reason, err
}

// Identity implements restore.Device.
func (d *probe) Identity() (restore.Identity, error) {
	f, err := os.Open(d.idPath)
	if err != nil {
		return restore.Identity{}, err
	}
	defer f.Close()
	size, err := dm.Size(f)
	if err != nil {
		return restore.Identity{}, err
	}
	_, uuid, err := fsprobe.Probe(f)
	if err != nil {
		return restore.Identity{}, err
	}
	d.size, d.uuid = uint64(size), uuid
	return restore.Identity{Size: uint64(size)}, nil
}

// openExclusive opens the device for writing with O_EXCL, so nobody can
// mount it while the restore runs. A busy device is *restore.BusyError.
func openExclusive(path string) (*os.File, error) {
	flags := os.O_RDWR
	if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeDevice != 0 {
		flags |= unix.O_EXCL
	}
	f, err := os.OpenFile(path, flags, 0)
	if errors.Is(err, unix.EBUSY) {
		return nil, &restore.BusyError{Device: path, Reason: "opened exclusively by someone else (a mount?)"}
	}
	return f, err
}
