package session

import (
	"errors"
	"fmt"
	"strings"

	"github.com/dmsnap/dmsnap/internal/devid"
	"github.com/dmsnap/dmsnap/internal/devnum"
	"golang.org/x/sys/unix"
)

// DevNum is a block device number (internal/devnum's Dev, the one type
// dm.Dev, snapstore.DevNum and mountinfo.Dev are too: IsZero, String and
// its text form "major:minor"). dmsnap compares devices
// by number, never by path: /dev/sdb1, /dev/disk/by-uuid/… and
// /dev/mapper/… are symlinks or aliases, the number names the device
// itself.
type DevNum = devnum.Dev

// ParseDevNum parses "major:minor" (decimal, as in mountinfo and
// device-mapper tables).
func ParseDevNum(s string) (DevNum, error) { return devnum.Parse(s) }

// DevNumFromRdev splits a kernel dev_t (stat's st_rdev or st_dev).
func DevNumFromRdev(rdev uint64) DevNum {
	return devnum.FromNumber(rdev)
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
// number may change: what names the device itself (Stable: a disk's WWN or
// serial, a partition's PARTUUID and place on its disk, a loop device's
// backing file), its size and, when it holds a filesystem, that
// filesystem's type and UUID. A size and a filesystem UUID alone are not
// enough: a dd copy or an LVM snapshot of the device has both.
type Identity struct {
	Dev    DevNum    `json:"dev"`               // major:minor when last seen
	Size   int64     `json:"size"`              // bytes
	FSType string    `json:"fs_type,omitempty"` // "ext4", "xfs", "btrfs", ... when recognised
	FSUUID string    `json:"fs_uuid,omitempty"` // filesystem UUID when known
	Stable *devid.ID `json:"stable,omitempty"`  // nil: recorded by a dmsnap that did not keep it
	// Image: the device is a regular file (an image), stacked over a loop
	// device dmsnap binds to it (Images). Stable is then what that loop
	// device shows (the file's device and inode), Dev the loop device's
	// number while bound (zero when read from the file itself).
	Image bool `json:"image,omitempty"`
}

// Matches reports whether other (a device found now) is the device that id
// describes: the same stable identity (devid.ID.Match), the same size, and
// the same filesystem UUID when id has one. The device number is not
// compared: it may change across reboots and hot-plugs. An id without a
// stable identity matches nothing (ErrNoIdentity): only a person can say
// that the device found is the right one (`attach --force-identity`).
func (id Identity) Matches(other Identity) error {
	if id.Stable == nil {
		return fmt.Errorf("it was activated by a dmsnap that did not record what identifies a device beyond its size: %w (%w)", ErrNoIdentity, ErrIdentityMismatch)
	}
	var found devid.ID
	if other.Stable != nil {
		found = *other.Stable
	}
	if err := id.Stable.Match(found); err != nil {
		kind := ErrIdentityMismatch
		if errors.Is(err, devid.ErrNoIdentity) {
			kind = ErrNoIdentity
		}
		return fmt.Errorf("%w (%w)", err, kind)
	}
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

// Describe names the device for messages: its stable identity, size and
// filesystem.
func (id Identity) Describe() string {
	s := "no recorded identity"
	if id.Stable != nil {
		s = id.Stable.String()
	}
	s += fmt.Sprintf(", %d bytes", id.Size)
	if id.FSUUID != "" {
		s += ", " + id.FSType + " filesystem " + id.FSUUID
	}
	return s
}
