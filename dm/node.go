package dm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Device nodes. With udev running, /dev/mapper/NAME and /dev/loopN appear by
// themselves; in a minimal system (initramfs, the test guest, containers)
// devtmpfs gives /dev/dm-N and usually /dev/loopN but never /dev/mapper/NAME.
// dmsnap then makes the node itself, from the device number, as libdevmapper
// does when it is built without udev support.

const (
	devDir    = "/dev"
	mapperDir = "/dev/mapper"
	sysDir    = "/sys"
)

// MapperPath returns the /dev/mapper path of a device-mapper device.
func MapperPath(name string) string { return filepath.Join(mapperDir, name) }

// ensureNode makes path a device node of the given type (unix.S_IFBLK or
// unix.S_IFCHR) and number. An existing node of that type and number is left
// alone (it may be udev's symlink to ../dm-N). When replace is set, anything
// else at path is removed first: /dev/mapper/NAME belongs to the device of
// that name, and a node left from an earlier device with another number
// would lead writes elsewhere. Without replace a mismatch is an error.
func ensureNode(path string, typ uint32, dev Dev, replace bool) error {
	var st unix.Stat_t
	err := unix.Stat(path, &st)
	switch {
	case err == nil:
		if st.Mode&unix.S_IFMT == typ && DevFromNumber(st.Rdev) == dev {
			return nil
		}
		if !replace {
			return fmt.Errorf("%s exists but is not device %s", path, dev)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	case errors.Is(err, unix.ENOENT):
		// A dangling symlink stats as missing; clear it so mknod can work.
		if fi, lerr := os.Lstat(path); lerr == nil && fi.Mode()&fs.ModeSymlink != 0 {
			if err := os.Remove(path); err != nil {
				return err
			}
		}
	default:
		return &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := unix.Mknod(path, typ|0o600, int(dev.Number())); err != nil && !errors.Is(err, unix.EEXIST) {
		return &os.PathError{Op: "mknod", Path: path, Err: err}
	}
	return nil
}

// removeNode removes a /dev/mapper node (ours or udev's symlink) once its
// device is gone. A missing node is fine.
func removeNode(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("%s is a directory, not a device node", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// readSysDev reads a sysfs "dev" attribute ("major:minor\n").
func readSysDev(path string) (Dev, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Dev{}, err
	}
	return ParseDev(strings.TrimSpace(string(b)))
}
