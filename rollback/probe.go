package rollback

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/restore"
	"github.com/dmsnap/dmsnap/session"
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
}

func newProbe(writePath, idPath string) *probe {
	return &probe{path: writePath, idPath: idPath}
}

func (d *probe) Path() string { return d.path }

// Busy implements restore.Device: mounted (per the mount table), or held
// exclusively, or opened by anyone when it is a device-mapper device.
func (d *probe) Busy() (string, error) {
	reason, err := d.busy()
	if err == nil && reason != "" && d.busyWarns {
		d.warns = append(d.warns, (&restore.BusyError{Device: d.path, Reason: reason}).Error())
		return "", nil
	}
	return reason, err
}

func (d *probe) busy() (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(d.path, &st); err != nil {
		return "", err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", nil
	}
	num := session.DevNumFromRdev(st.Rdev)
	if f, err := os.Open(session.SelfMountInfo); err == nil {
		table, perr := session.ParseMountInfo(f)
		f.Close()
		if perr == nil {
			for _, m := range session.ResolveSourceDevs(table, session.BlockDevNum) {
				if m.Dev == num {
					return "mounted on " + m.MountPoint, nil
				}
			}
		}
	}
	if name, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/dm/name", num.Major, num.Minor)); err == nil {
		if info, err := dm.Info(strings.TrimSpace(string(name))); err == nil && info.OpenCount > 0 {
			return fmt.Sprintf("open %d time(s)", info.OpenCount), nil
		}
	}
	f, err := os.OpenFile(d.path, os.O_RDWR|unix.O_EXCL, 0)
	if errors.Is(err, unix.EBUSY) {
		return "held open exclusively by another process or device", nil
	}
	if err != nil {
		return "", err
	}
	f.Close()
	return "", nil
}

// Identity implements restore.Device.
func (d *probe) Identity() (restore.Identity, error) {
	f, err := os.Open(d.idPath)
	if err != nil {
		return restore.Identity{}, err
	}
	defer f.Close()
	size, err := deviceSize(f)
	if err != nil {
		return restore.Identity{}, err
	}
	_, uuid, err := session.ProbeFilesystem(f)
	if err != nil {
		return restore.Identity{}, err
	}
	d.size, d.uuid = uint64(size), uuid
	return restore.Identity{Size: uint64(size)}, nil
}

// deviceSize is the size of a block device or a file.
func deviceSize(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if fi.Mode()&os.ModeDevice == 0 {
		return fi.Size(), nil
	}
	n, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		return 0, fmt.Errorf("BLKGETSIZE64: %w", err)
	}
	return int64(n), nil
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
