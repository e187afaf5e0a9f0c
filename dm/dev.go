package dm

import "github.com/dmsnap/dmsnap/internal/devnum"

// Dev is a device number (internal/devnum): tables name devices by number
// ("major:minor"), never by path, since a path can be renamed or replaced
// between the check and the load.
type Dev = devnum.Dev

// DevFromNumber splits a kernel dev_t (as in stat's st_rdev or DM's dev field).
func DevFromNumber(n uint64) Dev { return devnum.FromNumber(n) }

// ParseDev parses "major:minor".
func ParseDev(s string) (Dev, error) { return devnum.Parse(s) }
