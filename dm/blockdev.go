package dm

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/internal/mountinfo"
)

// BlockDevice is a block device as dmsnap checked it.
type BlockDevice struct {
	Path    string
	Dev     Dev
	Sectors uint64 // size in 512-byte sectors
}

// COWHeaderBytes is how much of a new COW device ZeroCOWHeader clears. The
// kernel takes a store whose first four bytes are zero as new and writes a
// fresh header; anything left from an earlier store ("SnAp" and its
// exceptions) would be loaded as if it belonged to the new snapshot.
const COWHeaderBytes = 4096

// Inspect stats path (following symlinks) and returns its device number and
// size. Anything but a block device is ErrNotBlockDevice.
func Inspect(path string) (BlockDevice, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return BlockDevice{}, newError("inspect", path, err, "check the device path")
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return BlockDevice{}, &Error{Op: "inspect", Device: path, Kind: ErrNotBlockDevice,
			Err: fmt.Errorf("%s is not a block device", path), Hint: defaultHint("", ErrNotBlockDevice, 0)}
	}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return BlockDevice{}, newError("inspect", path, err, "")
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return BlockDevice{}, newError("inspect", path, err, "")
	}
	return BlockDevice{Path: path, Dev: DevFromNumber(st.Rdev), Sectors: uint64(size) / SectorSize}, nil
}

// CheckUnused inspects path and makes sure nobody uses it: not mounted
// (per /proc/self/mountinfo), and not held by anyone who opened it
// exclusively (a mount in another namespace, swap, md, device-mapper,
// another dmsnap stack). It proves the second by opening it with O_EXCL.
// Either failure is ErrBusy and says who holds it.
func CheckUnused(path string) (BlockDevice, error) {
	bd, err := Inspect(path)
	if err != nil {
		return BlockDevice{}, err
	}
	if mounts, err := mountsOfDevice("/proc/self/mountinfo", bd.Dev); err != nil {
		return BlockDevice{}, newError("read mount table", "/proc/self/mountinfo", err, "")
	} else if len(mounts) > 0 {
		return BlockDevice{}, mountedError(path, mounts)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			who := append(holders(sysDir, bd.Dev), busyPartitions(sysDir, "/proc/self/mountinfo", bd.Dev)...)
			return BlockDevice{}, heldError(path, bd.Dev, who)
		}
		return BlockDevice{}, newError("open exclusively", path, err, "")
	}
	f.Close()
	return bd, nil
}

func mountedError(path string, mounts []MountEntry) *Error {
	points := make([]string, len(mounts))
	for i, m := range mounts {
		points[i] = m.MountPoint
	}
	return &Error{
		Op: "check", Device: path, Kind: ErrBusy,
		Err:  fmt.Errorf("%s is mounted on %s", path, strings.Join(points, ", ")),
		Hint: fmt.Sprintf("unmount it first (umount %s), then try again", points[0]),
	}
}

func heldError(path string, dev Dev, by []string) *Error {
	who := "it is held open exclusively (a mount in another namespace, swap, md or device-mapper)"
	if len(by) > 0 {
		who = "it is held by " + strings.Join(by, ", ")
	}
	return &Error{
		Op: "check", Device: path, Kind: ErrBusy, Err: fmt.Errorf("%s is in use: %s", path, who),
		Hint: "stop whatever holds it (swapoff, umount, remove the device stacked on it), then try again",
	}
}

// holders names the devices stacked on dev (/sys/dev/block/M:m/holders),
// with their device-mapper names where they have one.
func holders(sys string, dev Dev) []string {
	entries, err := os.ReadDir(filepath.Join(sys, "dev/block", dev.String(), "holders"))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		name := e.Name()
		if b, err := os.ReadFile(filepath.Join(sys, "block", name, "dm/name")); err == nil {
			name = fmt.Sprintf("%s (device-mapper %s)", name, strings.TrimSpace(string(b)))
		}
		out = append(out, name)
	}
	return out
}

// busyPartitions names the partitions of a whole disk dev that are mounted
// or held (/sys/dev/block/M:m/<partition>): a disk is busy while one of its
// partitions is, and the kernel's EBUSY alone does not say which.
func busyPartitions(sys, mountinfo string, dev Dev) []string {
	dir := filepath.Join(sys, "dev/block", dev.String())
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(dir, e.Name(), "partition")); err != nil {
			continue
		}
		pdev, err := readSysDev(filepath.Join(dir, e.Name(), "dev"))
		if err != nil {
			continue
		}
		var why []string
		if ms, err := mountsOfDevice(mountinfo, pdev); err == nil && len(ms) > 0 {
			points := make([]string, len(ms))
			for i, m := range ms {
				points[i] = m.MountPoint
			}
			why = append(why, "mounted on "+strings.Join(points, ", "))
		} else if hs := holders(sys, pdev); len(hs) > 0 {
			why = append(why, "held by "+strings.Join(hs, ", "))
		}
		if len(why) > 0 {
			out = append(out, fmt.Sprintf("its partition /dev/%s (%s)", e.Name(), strings.Join(why, "; ")))
		}
	}
	return out
}

// ZeroCOWHeader clears the first COWHeaderBytes of a block device that is
// to become a new COW store, and syncs. It opens the device exclusively so
// that it can never clobber a store a live snapshot holds.
func ZeroCOWHeader(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		e := newError("zero COW header", path, err, "")
		if errors.Is(err, unix.EBUSY) {
			e.Hint = "the COW device is held by another device (a live snapshot?): use a new COW device"
		}
		return e
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, COWHeaderBytes), 0); err != nil {
		return newError("zero COW header", path, err, "")
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return newError("zero COW header", path, err, "")
	}
	return f.Close()
}

// MountEntry is one line of /proc/self/mountinfo, reduced to what dmsnap
// needs.
type MountEntry struct {
	Dev        Dev    // st_dev of the mounted file system
	Root       string // the subtree of the file system that is mounted
	MountPoint string
	FSType     string
	Source     string // e.g. /dev/sdb1
}

// ParseMountInfo parses the mountinfo format of proc(5) with
// internal/mountinfo, the parser the session watcher uses too. It names the
// line of any malformed entry.
func ParseMountInfo(r io.Reader) ([]MountEntry, error) {
	ms, err := mountinfo.Parse(r)
	if err != nil {
		return nil, err
	}
	out := make([]MountEntry, len(ms))
	for i, m := range ms {
		out[i] = MountEntry{Dev: Dev(m.Dev), Root: m.Root, MountPoint: m.MountPoint, FSType: m.FSType, Source: m.Source}
	}
	return out, nil
}

// MountsOf returns the entries that mount dev: by the file system's device
// number, or, for btrfs (which reports an anonymous device number in
// mountinfo), by a source path that is that block device. sourceDev resolves a
// source path to its device number; nil means stat(2).
func MountsOf(entries []MountEntry, dev Dev, sourceDev func(string) (Dev, bool)) []MountEntry {
	if sourceDev == nil {
		sourceDev = statRdev
	}
	var out []MountEntry
	for _, e := range entries {
		if e.Dev == dev {
			out = append(out, e)
			continue
		}
		// The rule the session watcher follows (mountinfo.ResolveSourceDevs),
		// widened to any source path: a btrfs mount whose source is the
		// device mounts it, whatever number it reports. Only btrfs: the
		// source of a tmpfs, FUSE or overlay mount is any string its
		// mounter chose (mountinfo.SourceIsDevice).
		if mountinfo.SourceIsDevice(e.FSType) && strings.HasPrefix(e.Source, "/") {
			if d, ok := sourceDev(e.Source); ok && d == dev {
				out = append(out, e)
			}
		}
	}
	return out
}

func statRdev(path string) (Dev, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return Dev{}, false
	}
	return DevFromNumber(st.Rdev), true
}

func mountsOfDevice(mountinfo string, dev Dev) ([]MountEntry, error) {
	f, err := os.Open(mountinfo)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s is missing: is /proc mounted?", mountinfo)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	entries, err := ParseMountInfo(f)
	if err != nil {
		return nil, err
	}
	return MountsOf(entries, dev, nil), nil
}

// Size is the size in bytes of the block device or regular file f is open
// on.
func Size(f *os.File) (int64, error) {
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

// Busy says why the block device at path cannot be written over now, ""
// when nothing uses it: mounted (per /proc/self/mountinfo; btrfs by its
// source, MountsOf), open at all when it is a device-mapper device (its
// open count: dm devices are not always opened exclusively), or held open
// exclusively by anyone (an O_EXCL open fails). An image file is busy
// while a loop device is bound to it; anything else is never busy. CheckUnused is the stricter check of a device
// dmsnap is to take over, with who holds it.
func Busy(path string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFREG {
		// An image file: a loop device over it writes it (a mount -o
		// loop, losetup, an activated image's stack).
		loops, err := findLoops(sysDir, path)
		if err != nil || len(loops) == 0 {
			return "", err
		}
		return fmt.Sprintf("on loop device %s (a mount -o loop, losetup, or dmsnap's own stack of it)", loops[0].Path), nil
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", nil
	}
	dev := DevFromNumber(st.Rdev)
	if ms, err := mountsOfDevice("/proc/self/mountinfo", dev); err == nil && len(ms) > 0 {
		return "mounted on " + ms[0].MountPoint, nil
	}
	if name, err := dmName(sysDir, dev); err == nil {
		if info, err := Info(name); err == nil && info.OpenCount > 0 {
			return fmt.Sprintf("open %d time(s)", info.OpenCount), nil
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EBUSY) {
		return "held open exclusively by another process or device", nil
	}
	if err != nil {
		return "", err
	}
	f.Close()
	return "", nil
}
