// Package devnum is the one device-number type of dmsnap: dm.Dev,
// session.DevNum and mountinfo.Dev are this type. Device-mapper tables name
// devices by number ("major:minor"), never by path: a path can be renamed or
// replaced between the check and the load, a number names exactly the
// device that was checked. DevName reads the kernel's name of a device
// from sysfs, for the node that goes with a number or a sysfs path.
package devnum

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Dev is a device number, major:minor. It is written as text
// ("major:minor") in JSON.
type Dev struct {
	Major, Minor uint32
}

// FromNumber splits a kernel dev_t (as in stat's st_rdev or
// device-mapper's dev field).
func FromNumber(n uint64) Dev {
	return Dev{Major: unix.Major(n), Minor: unix.Minor(n)}
}

// Number returns the kernel dev_t.
func (d Dev) Number() uint64 { return unix.Mkdev(d.Major, d.Minor) }

// IsZero reports whether d is the zero device (no device).
func (d Dev) IsZero() bool { return d == Dev{} }

// String returns "major:minor", the form of mountinfo and device-mapper
// tables.
func (d Dev) String() string { return fmt.Sprintf("%d:%d", d.Major, d.Minor) }

// MarshalText writes "major:minor".
func (d Dev) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText reads "major:minor".
func (d *Dev) UnmarshalText(b []byte) error {
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// Parse parses "major:minor", in decimal.
func Parse(s string) (Dev, error) {
	maj, min, ok := strings.Cut(s, ":")
	if !ok {
		return Dev{}, fmt.Errorf("device number %q: want major:minor", s)
	}
	ma, err := strconv.ParseUint(maj, 10, 32)
	if err != nil {
		return Dev{}, fmt.Errorf("device number %q: bad major: %w", s, err)
	}
	mi, err := strconv.ParseUint(min, 10, 32)
	if err != nil {
		return Dev{}, fmt.Errorf("device number %q: bad minor: %w", s, err)
	}
	return Dev{Major: uint32(ma), Minor: uint32(mi)}, nil
}

// DevName returns the name the kernel gives the device whose directory in
// sysfs is dir (/sys/dev/block/8:17, /sys/devices/.../sdb1): DEVNAME in its
// uevent file, the node's path below /dev. An unreadable uevent file is
// returned as the *fs.PathError it is; a file that names no node (not a
// device, or a name that would leave /dev) is another error.
func DevName(dir string) (string, error) {
	uevent := filepath.Join(dir, "uevent")
	b, err := os.ReadFile(uevent)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if name, ok := strings.CutPrefix(line, "DEVNAME="); ok {
			if name == "" || strings.Contains(name, "..") {
				break
			}
			return name, nil
		}
	}
	return "", fmt.Errorf("%s names no device node", uevent)
}
