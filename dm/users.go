package dm

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/internal/filemap"
)

// FileUsers lists what in the kernel holds or writes the file at path:
// every loop device bound to it, and every device-mapper device whose
// table maps, through a loop device over the block device of the file's
// filesystem or straight onto the devices below it (below.go), bytes the
// file's extents lie on (a session's COW device, AttachCOW). Empty when
// nothing does.
//
// It is the check that comes before anything touches a session's COW file
// from user space (conversion, discard): a COW the kernel may still write
// must never be renamed, punched, unpinned or truncated, whatever the
// registry says (it may be missing, damaged, or another state directory's).
func FileUsers(path string) ([]string, error) {
	return fileUsers(sysDir, System{}, path, fileExtents)
}

func fileExtents(f *os.File) ([]filemap.Extent, error) { return filemap.Extents(f) }

func fileUsers(sys string, m Mapper, path string, extents func(*os.File) ([]filemap.Extent, error)) ([]string, error) {
	const op = "file users"
	f, err := os.Open(path)
	if err != nil {
		return nil, newError(op, path, err, "")
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, newError(op, path, err, "")
	}
	loops, err := boundLoops(sys)
	if err != nil {
		return nil, newError(op, path, err, "")
	}
	var users []string
	over := map[Dev]*Loop{} // loop devices over the file's filesystem's device
	for _, l := range loops {
		var bs unix.Stat_t
		if unix.Stat(l.Backing, &bs) != nil {
			continue // e.g. "/path (deleted)": not this file, which exists
		}
		switch {
		case bs.Dev == st.Dev && bs.Ino == st.Ino && bs.Mode&unix.S_IFMT == unix.S_IFREG:
			users = append(users, fmt.Sprintf("%s is bound to it", l.Path))
		case bs.Mode&unix.S_IFMT == unix.S_IFBLK && bs.Rdev == st.Dev:
			over[l.Dev] = l
		}
	}
	// A store on linear device-mapper: COW tables name the devices under
	// it (below.go).
	below, _ := readBelow(sys, m, DevFromNumber(st.Dev))
	if len(over) == 0 && below == nil {
		return users, nil
	}
	exts, err := extents(f)
	if errors.Is(err, filemap.ErrUnsupported) || errors.Is(err, unix.EOPNOTSUPP) {
		return users, nil // no extents to map (tmpfs, ...), so none mapped
	}
	if err != nil {
		return nil, newError(op, path, err, "")
	}
	var places []fastSeg
	if below != nil {
		for _, e := range exts {
			lo := e.Physical / belowAlign * belowAlign
			hi := (e.Physical + e.Length + belowAlign - 1) / belowAlign * belowAlign
			p, _ := below.place(e.Logical, lo, hi-lo)
			places = append(places, p...)
		}
	}
	items, err := m.List()
	if err != nil {
		return nil, err
	}
	for _, it := range items {
		if below != nil && it.Name == below.Name {
			continue // the store's own device maps all of it
		}
		tbl, err := m.Table(it.Name)
		if errors.Is(err, ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		if l, ok := mapsExtents(tbl, over, exts); ok {
			users = append(users, fmt.Sprintf("%s maps its blocks through %s", MapperPath(it.Name), l.Path))
		} else if d, ok := mapsPlaces(tbl, places); ok {
			users = append(users, fmt.Sprintf("%s maps its blocks on %s, below the store's device %s", MapperPath(it.Name), d, MapperPath(below.Name)))
		}
	}
	return users, nil
}

// mapsExtents reports whether a table has a linear target onto one of the
// loop devices over whose bytes (at the loop's offset) overlap an extent.
func mapsExtents(tbl []TargetSpec, over map[Dev]*Loop, exts []filemap.Extent) (*Loop, bool) {
	for _, lin := range linearTargets(tbl) {
		l, ok := over[lin.Device]
		if !ok {
			continue
		}
		lo := l.Offset + lin.Offset*SectorSize
		hi := lo + lin.Length*SectorSize
		for _, e := range exts {
			if e.Physical < hi && lo < e.Physical+e.Length {
				return l, true
			}
		}
	}
	return nil, false
}

// mapsPlaces reports whether a table has a linear target onto bytes of
// places (on the devices below a store's device), and names the device.
func mapsPlaces(tbl []TargetSpec, places []fastSeg) (Dev, bool) {
	for _, lin := range linearTargets(tbl) {
		lo, hi := lin.Offset*SectorSize, (lin.Offset+lin.Length)*SectorSize
		for _, p := range places {
			if p.Device == lin.Device && p.Offset < hi && lo < p.Offset+p.Length {
				return lin.Device, true
			}
		}
	}
	return Dev{}, false
}

// linearTargets returns the linear targets of a table.
func linearTargets(tbl []TargetSpec) []Linear {
	var out []Linear
	for _, spec := range tbl {
		if t, err := ParseTarget(spec); err == nil {
			if lin, ok := t.(Linear); ok {
				out = append(out, lin)
			}
		}
	}
	return out
}

// readSysUint reads a decimal number from a sysfs file.
func readSysUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}
