package session

import (
	"io"

	"github.com/dmsnap/dmsnap/internal/mountinfo"
)

// MountInfo is one line of /proc/<pid>/mountinfo: the parser package's
// mountinfo.Mount (fields ID, ParentID, Dev, Root, MountPoint, Options,
// Optional, FSType, Source, SuperOptions; paths decoded), named here so the
// session API speaks of one type.
type MountInfo = mountinfo.Mount

// ParseMountInfo parses a mountinfo table (internal/mountinfo, the parser
// package dm uses too). A malformed line is an error naming its line
// number; nothing is returned then, since a watcher acting on half a table
// would see every mount after the bad line as unmounted.
func ParseMountInfo(r io.Reader) ([]MountInfo, error) { return mountinfo.Parse(r) }

// ResolveSourceDevs replaces the device number of mounts whose filesystem
// reports an anonymous one (major 0: btrfs gives every mount such a number,
// not its block device's) with the number of the block device named as the
// mount's source, when the source is one and the filesystem is btrfs
// (mountinfo.SourceIsDevice: the source of a tmpfs, FUSE or overlay mount is
// any string its mounter chose, and names no device). Without it a btrfs
// mount of an origin is not recognised as one, and its session never opens
// or closes. blockDev is BlockDevNum in production.
func ResolveSourceDevs(ms []MountInfo, blockDev func(path string) (DevNum, error)) []MountInfo {
	return mountinfo.ResolveSourceDevs(ms, blockDev)
}
