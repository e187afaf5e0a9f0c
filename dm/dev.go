package dm

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Dev is a device number. Tables name devices by number ("major:minor"), never
// by path: a path can be renamed or replaced between the check and the load,
// a number names exactly the device that was checked.
type Dev struct {
	Major, Minor uint32
}

// DevFromNumber splits a kernel dev_t (as in stat's st_rdev or DM's dev field).
func DevFromNumber(n uint64) Dev {
	return Dev{Major: unix.Major(n), Minor: unix.Minor(n)}
}

// Number returns the kernel dev_t.
func (d Dev) Number() uint64 { return unix.Mkdev(d.Major, d.Minor) }

// IsZero reports whether d is the zero device (no device).
func (d Dev) IsZero() bool { return d == Dev{} }

// String returns "major:minor", the form device-mapper tables use.
func (d Dev) String() string { return fmt.Sprintf("%d:%d", d.Major, d.Minor) }

// ParseDev parses "major:minor".
func ParseDev(s string) (Dev, error) {
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
