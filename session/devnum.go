package session

import (
	"fmt"
	"strings"

	"github.com/dmsnap/dmsnap/internal/mountinfo"
	"golang.org/x/sys/unix"
)

// DevNum is a block device number (mountinfo.Dev, whose methods give
// IsZero, String and its text form "major:minor"). dmsnap compares devices
// by number, never by path: /dev/sdb1, /dev/disk/by-uuid/… and
// /dev/mapper/… are symlinks or aliases, the number names the device
// itself. (dm.Dev and snapstore.DevNum are the same two numbers; adapters
// convert field by field.)
type DevNum = mountinfo.Dev

// ParseDevNum parses "major:minor" (decimal, as in mountinfo and
// device-mapper tables).
func ParseDevNum(s string) (DevNum, error) { return mountinfo.ParseDev(s) }

// DevNumFromRdev splits a kernel dev_t (stat's st_rdev or st_dev).
func DevNumFromRdev(rdev uint64) DevNum {
	return DevNum{Major: unix.Major(rdev), Minor: unix.Minor(rdev)}
}

// BlockDevNum returns the device number of the block device at path,
// following symlinks (/dev/disk/by-uuid/…, /dev/mapper/…). Anything but a
// block device is an error.
func BlockDevNum(path string) (DevNum, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return DevNum{}, fmt.Errorf("%s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return DevNum{}, fmt.Errorf("%s is not a block device", path)
	}
	return DevNumFromRdev(st.Rdev), nil
}

// Identity tells one block device from another across reboots, where its
// number may change: its size and, when it holds a filesystem, that
// filesystem's type and UUID.
type Identity struct {
	Dev    DevNum `json:"dev"`               // major:minor when last seen
	Size   int64  `json:"size"`              // bytes
	FSType string `json:"fs_type,omitempty"` // "ext4", "xfs", "btrfs", ... when recognised
	FSUUID string `json:"fs_uuid,omitempty"` // filesystem UUID when known
}

// Matches reports whether other (a device found now) is the device that id
// describes: same size, and same filesystem UUID when id has one. The device
// number is not compared: it may change across reboots and hot-plugs.
func (id Identity) Matches(other Identity) error {
	if id.Size != other.Size {
		return fmt.Errorf("size is %d bytes, was %d when activated: %w", other.Size, id.Size, ErrIdentityMismatch)
	}
	if id.FSUUID != "" && !strings.EqualFold(id.FSUUID, other.FSUUID) {
		found := other.FSUUID
		if found == "" {
			found = "none"
		}
		return fmt.Errorf("filesystem UUID is %s, was %s when activated: %w", found, id.FSUUID, ErrIdentityMismatch)
	}
	return nil
}
