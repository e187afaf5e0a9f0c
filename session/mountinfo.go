package session

import (
	"io"

	"github.com/dmsnap/dmsnap/internal/mountinfo"
)

// MountInfo is one line of /proc/<pid>/mountinfo (proc(5)):
//
//	36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//	(1)(2) (3)   (4)   (5)          (6)      (7)   (8) (9)    (10)         (11)
//
// Paths (root, mount point, source) and the filesystem type are written by
// the kernel with space, tab, newline and backslash as octal escapes
// (\040, \011, \012, \134); MountInfo holds them decoded.
type MountInfo struct {
	ID           int      // (1) unique mount ID
	ParentID     int      // (2)
	Dev          DevNum   // (3) st_dev of the filesystem: the block device for a block-backed one
	Root         string   // (4) the subtree mounted ("/" unless a bind mount of a subdirectory)
	MountPoint   string   // (5)
	Options      string   // (6) per-mount options
	Optional     []string // (7) "shared:N", "master:N", ... (zero or more)
	FSType       string   // (9) "ext4", "fuse.sshfs", ...
	Source       string   // (10) "/dev/mapper/dmsnap-sdb1", "tmpfs", "none", ...
	SuperOptions string   // (11) per-superblock options
}

// ParseMountInfo parses a mountinfo table (internal/mountinfo, the parser
// package dm uses too). A malformed line is an error naming its line
// number; nothing is returned then, since a watcher acting on half a table
// would see every mount after the bad line as unmounted.
func ParseMountInfo(r io.Reader) ([]MountInfo, error) {
	ms, err := mountinfo.Parse(r)
	if err != nil {
		return nil, err
	}
	out := make([]MountInfo, len(ms))
	for i, m := range ms {
		out[i] = MountInfo{
			ID: m.ID, ParentID: m.ParentID, Dev: DevNum(m.Dev), Root: m.Root, MountPoint: m.MountPoint,
			Options: m.Options, Optional: m.Optional, FSType: m.FSType, Source: m.Source, SuperOptions: m.SuperOptions,
		}
	}
	return out, nil
}

func (m MountInfo) generic() mountinfo.Mount {
	return mountinfo.Mount{
		ID: m.ID, ParentID: m.ParentID, Dev: mountinfo.Dev(m.Dev), Root: m.Root, MountPoint: m.MountPoint,
		Options: m.Options, Optional: m.Optional, FSType: m.FSType, Source: m.Source, SuperOptions: m.SuperOptions,
	}
}

// Line renders m as the kernel writes it in mountinfo (without the newline).
func (m MountInfo) Line() string { return m.generic().Line() }

// ResolveSourceDevs replaces the device number of mounts whose filesystem
// reports an anonymous one (major 0: btrfs gives every mount such a number,
// not its block device's) with the number of the block device named as the
// mount's source, when the source is one. Without it a btrfs mount of an
// origin is not recognised as one, and its session never opens or closes.
// blockDev is BlockDevNum in production.
func ResolveSourceDevs(ms []MountInfo, blockDev func(path string) (DevNum, error)) []MountInfo {
	for i := range ms {
		one := []mountinfo.Mount{{Dev: mountinfo.Dev(ms[i].Dev), Source: ms[i].Source}}
		mountinfo.ResolveSourceDevs(one, func(p string) (mountinfo.Dev, error) {
			n, err := blockDev(p)
			return mountinfo.Dev(n), err
		})
		ms[i].Dev = DevNum(one[0].Dev)
	}
	return ms
}
