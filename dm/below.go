package dm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/internal/directio"
	"github.com/dmsnap/dmsnap/internal/filemap"
)

// The devices below the store. When the store's filesystem sits on a
// device-mapper device made only of linear targets (an LVM logical volume,
// a store made by `dmsnap store create`), the fast segments of a COW device
// name the devices under it, at the offsets its table gives, instead of a
// loop device over the store's device. Device-mapper opens each device of a
// table exclusively with one holder for all of its tables, so a device the
// store's table holds can be named by a COW table too; the mounted store
// device itself cannot (the mount holds it). This is how an LVM snapshot's
// COW volume is reached: a linear target straight onto the physical volume,
// with no loop device and none of the flushes a loop device turns into
// fsyncs of the mounted store's device.
//
// Only linear targets are walked through, and only one level: a table of
// crypt, raid, thin or cache targets changes the bytes or their place on
// every write, so a store on one goes through the loop device. A device
// named below may itself be device-mapper (dm-crypt under a linear LV):
// writing to it is writing to the store's device at that offset.
//
// The store device's table is read again whenever the COW table is made:
// at every attach and every grow (MapFile). A table that moved (pvmove,
// lvconvert) makes a grow copy what the COW device wrote at the old places
// to the new ones before the new table goes live (GrowCOW).

// Below is the table of the device-mapper device a filesystem sits on,
// when that table is linear targets only.
type Below struct {
	Name  string // the store device's device-mapper name
	Table []Linear
}

// belowAlign is the alignment a place below must have: that of the COW's
// segments (cowAlign).
const belowAlign = cowAlign

// readBelow reads the table of block device dev when it is a device-mapper
// device whose targets are all linear. Otherwise it returns nil and why
// not, for COW.Slow-like reports.
func readBelow(sys string, m Mapper, dev Dev) (*Below, string) {
	name, err := dmName(sys, dev)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Sprintf("the store's device %s is not a device-mapper device", dev)
	}
	if err != nil {
		return nil, err.Error()
	}
	tbl, err := m.Table(name)
	if err != nil {
		return nil, err.Error()
	}
	return belowOf(name, tbl)
}

// dmName is the device-mapper name of block device dev, from sysfs; an
// error wrapping fs.ErrNotExist when dev is not device-mapper.
func dmName(sys string, dev Dev) (string, error) {
	b, err := os.ReadFile(filepath.Join(sys, "dev", "block", dev.String(), "dm", "name"))
	return strings.TrimSpace(string(b)), err
}

// belowOf makes a Below of a table read from device name, or says why it
// cannot be one.
func belowOf(name string, tbl []TargetSpec) (*Below, string) {
	if len(tbl) == 0 {
		return nil, fmt.Sprintf("the store's device %s has no table", name)
	}
	out := &Below{Name: name}
	var at uint64
	for _, spec := range tbl {
		if spec.Type != "linear" {
			return nil, fmt.Sprintf("the store's device %s has a %s target (only linear ones are mapped through)", name, spec.Type)
		}
		t, err := ParseTarget(spec)
		if err != nil {
			return nil, err.Error()
		}
		l := t.(Linear)
		if l.Start != at {
			return nil, fmt.Sprintf("the store's device %s has a gap in its table at sector %d", name, at)
		}
		at += l.Length
		out.Table = append(out.Table, l)
	}
	return out, ""
}

// fastSeg is a fast segment of a COW table: Length bytes of the file from
// byte Logical, at byte Offset of Device.
type fastSeg struct {
	Logical, Length uint64
	Device          Dev
	Offset          uint64
}

// place returns where bytes [off, off+n) of the store's device lie below
// it, as fast segments for file bytes from logical on: one per linear
// target they cross. ok is false when any part lies outside the table or
// at a place not aligned to belowAlign.
func (b Below) place(logical, off, n uint64) (segs []fastSeg, ok bool) {
	for n > 0 {
		found := false
		for _, l := range b.Table {
			lo, hi := l.Start*SectorSize, (l.Start+l.Length)*SectorSize
			if off < lo || off >= hi {
				continue
			}
			k := min(n, hi-off)
			at := l.Offset*SectorSize + (off - lo)
			if at%belowAlign != 0 || k%belowAlign != 0 {
				return nil, false
			}
			s := fastSeg{Logical: logical, Length: k, Device: l.Device, Offset: at}
			if j := len(segs); j > 0 && segs[j-1].Device == s.Device && segs[j-1].Offset+segs[j-1].Length == s.Offset {
				segs[j-1].Length += k
			} else {
				segs = append(segs, s)
			}
			logical, off, n, found = logical+k, off+k, n-k, true
			break
		}
		if !found {
			return nil, false
		}
	}
	return segs, true
}

// placeBelow places the fast extents (sorted, on the store's device) below
// it, neighbours merged; false when any cannot be.
func (b Below) placeBelow(fast []filemap.Extent) ([]fastSeg, bool) {
	var out []fastSeg
	for _, e := range fast {
		segs, ok := b.place(e.Logical, e.Physical, e.Length)
		if !ok {
			return nil, false
		}
		for _, s := range segs {
			if j := len(out); j > 0 && out[j-1].Device == s.Device && out[j-1].Logical+out[j-1].Length == s.Logical && out[j-1].Offset+out[j-1].Length == s.Offset {
				out[j-1].Length += s.Length
				continue
			}
			out = append(out, s)
		}
	}
	return out, true
}

// loopSegs places the fast extents on a loop device over the store's
// device whose window starts at byte base.
func loopSegs(fast []filemap.Extent, loop Dev, base uint64) []fastSeg {
	out := make([]fastSeg, len(fast))
	for i, e := range fast {
		out[i] = fastSeg{Logical: e.Logical, Length: e.Length, Device: loop, Offset: e.Physical - base}
	}
	return out
}

// capSegs keeps the first maxFastExtents segments.
func capSegs(segs []fastSeg) []fastSeg {
	if len(segs) > maxFastExtents {
		return segs[:maxFastExtents]
	}
	return segs
}

// segRanges returns the file ranges the segments map.
func segRanges(segs []fastSeg) []filemap.Range {
	out := make([]filemap.Range, len(segs))
	for i, s := range segs {
		out[i] = filemap.Range{Off: int64(s.Logical), End: int64(s.Logical + s.Length)}
	}
	return out
}

// segsCovered returns how many bytes of [lo, hi) of the file the segments
// map.
func segsCovered(segs []fastSeg, lo, hi uint64) uint64 {
	var n uint64
	for _, s := range segs {
		a, b := max(s.Logical, lo), min(s.Logical+s.Length, hi)
		if b > a {
			n += b - a
		}
	}
	return n
}

// COW paths: how the fast segments of a COW device reach the store's
// blocks (COW.Route).
const (
	PathBelow = "below" // straight to the devices under the store's linear device-mapper device
	PathLoop  = "loop"  // through a direct-I/O loop device over the store's device
	PathFile  = "file"  // nothing mapped: everything through the store's filesystem
)

// tablePath says how a COW table's fast segments (those not on tail)
// reach the store: PathLoop when they name a loop device over the store's
// device (viaLoop), PathBelow when they name other devices, PathFile when
// there are none.
func tablePath(lins []Linear, tail Dev, viaLoop func(Dev) bool) string {
	path := PathFile
	for _, l := range lins {
		if l.Device == tail {
			continue
		}
		if viaLoop(l.Device) {
			return PathLoop
		}
		path = PathBelow
	}
	return path
}

// LoopOverDevice reports whether d is a loop device bound to a block
// device (the loop path of a COW's fast segments), not to a file: a
// physical volume may itself be a loop device over an image file.
func LoopOverDevice(d Dev) bool { return loopOverDevice(sysDir, d) }

func loopOverDevice(sys string, d Dev) bool {
	if d.Major != loopMajor {
		return false
	}
	b, err := os.ReadFile(filepath.Join(sys, "dev", "block", d.String(), "loop", "backing_file"))
	if err != nil {
		return false
	}
	var st unix.Stat_t
	return unix.Stat(strings.TrimSpace(string(b)), &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK
}

// loopKnower is the optional method of a Kernel that tells loop devices
// over block devices (System, and the fakes): LoopOverDevice.
type loopKnower interface{ LoopOverDevice(d Dev) bool }

// viaLoopOf returns m's LoopOverDevice, or the sysfs one when m has none.
func viaLoopOf(m Kernel) func(Dev) bool {
	if k, ok := m.(loopKnower); ok {
		return k.LoopOverDevice
	}
	return LoopOverDevice
}

// spanBase is the first device byte of the extents: where placeFast's loop
// device window starts.
func spanBase(exts []filemap.Extent) uint64 {
	base, _ := span(exts)
	return base
}

// move is a copy of n bytes from byte fromOff of device from to byte toOff
// of device to.
type move struct {
	From, To       Dev
	FromOff, ToOff uint64
	N              uint64
}

// movedParts compares a COW table that is live (old, with its tail
// device) with the fast segments of the table that replaces it, placed
// while the store's device has table below (nil: not linear now) and, on
// the loop path, through a loop window starting at byte base of the store's
// device. It returns the copies that carry what the old table wrote below
// the store's device to where the new one puts those bytes, for every part
// of the file whose place changed: the store's device was remapped between
// the two (pvmove, lvconvert). A part the old table wrote through a loop
// device over the store's device went through the store's own table, so it
// is where the store's device says it is, and never needs a copy.
func movedParts(old []Linear, tail Dev, viaLoop func(Dev) bool, below *Below, news []fastSeg, base uint64) []move {
	var out []move
	for _, o := range old {
		if o.Device == tail || viaLoop(o.Device) {
			continue
		}
		olo, ohi := o.Start*SectorSize, (o.Start+o.Length)*SectorSize
		for _, n := range news {
			lo, hi := max(olo, n.Logical), min(ohi, n.Logical+n.Length)
			if lo >= hi {
				continue
			}
			from := o.Offset*SectorSize + (lo - olo)
			to := n.Offset + (lo - n.Logical)
			if !viaLoop(n.Device) {
				if n.Device != o.Device || to != from {
					out = append(out, move{From: o.Device, To: n.Device, FromOff: from, ToOff: to, N: hi - lo})
				}
				continue
			}
			// On the loop path: compare with where the store's table puts
			// those bytes now, piece by piece.
			var now []fastSeg
			ok := below != nil
			if ok {
				now, ok = below.place(lo, base+to, hi-lo)
			}
			if !ok {
				out = append(out, move{From: o.Device, To: n.Device, FromOff: from, ToOff: to, N: hi - lo})
				continue
			}
			for _, p := range now {
				d := p.Logical - lo
				if p.Device != o.Device || p.Offset != from+d {
					out = append(out, move{From: o.Device, To: n.Device, FromOff: from + d, ToOff: to + d, N: p.Length})
				}
			}
		}
	}
	return out
}

// copyMoves does the copies, around the page cache, and makes them
// durable.
func copyMoves(moves []move) error {
	open := func(d Dev, flag int) (*os.File, error) {
		node, err := blockNode(sysDir, devDir, d)
		if err != nil {
			return nil, err
		}
		return os.OpenFile(node, flag|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	}
	buf := directio.AlignedBuf(1 << 20)
	for _, mv := range moves {
		dst, err := open(mv.To, os.O_RDWR)
		if err != nil {
			return err
		}
		src, err := open(mv.From, os.O_RDONLY)
		if err != nil {
			dst.Close()
			return err
		}
		err = copyRange(dst, src, mv, buf)
		if serr := dst.Sync(); err == nil {
			err = serr
		}
		src.Close()
		if cerr := dst.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// copyRange copies one move through buf.
func copyRange(dst, src *os.File, mv move, buf []byte) error {
	for done := uint64(0); done < mv.N; {
		k := min(uint64(len(buf)), mv.N-done)
		if _, err := src.ReadAt(buf[:k], int64(mv.FromOff+done)); err != nil {
			return err
		}
		if _, err := dst.WriteAt(buf[:k], int64(mv.ToOff+done)); err != nil {
			return err
		}
		done += k
	}
	return nil
}
