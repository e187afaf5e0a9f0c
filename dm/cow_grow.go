package dm

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/dmsnap/dmsnap/internal/filemap"
)

// Growing the fast part of a COW while its snapshot is live. AttachCOW maps
// what of cow.img is written at the time (the zeros the Store wrote ahead
// of a new session); a session that outgrows it would send the rest of its
// pre-images through the store's filesystem. GrowCOW writes more of the
// file ahead and maps it, without a moment in which the kernel could write
// where the zeros go:
//
//  1. The COW device is suspended: the exception store's writes that were
//     in flight complete, and every later one waits, unmapped, until the
//     resume.
//  2. The snapshot's status then gives the store's allocation frontier
//     (the persistent store allocates chunks in file order and reports
//     next_free × chunk as allocated): no byte at or past it has ever been
//     written. Allocation goes on while the COW device is suspended, but
//     the writes to what it allocates wait for the resume.
//  3. The caller writes zeros over [from, to), all at or past the
//     frontier, with the file unpinned for it.
//  4. The file is pinned again, MapFile gives its extents and the store
//     device's table; the new table maps every plain extent straight (to
//     the devices below the store's, or through a new loop device over the
//     store's device, its window spanning them all) and the rest to the
//     same loop device over cow.tail as before. If the store's device was
//     remapped since (pvmove), what the old table wrote below it is copied
//     to the new places first.
//  5. The resume swaps the tables: the waiting writes go out through the new
//     one. Both tables put every byte of the COW at the same byte of
//     cow.img, so nothing written before reads differently after.
//
// While the COW device is suspended, first writes to the origin wait for
// the snapshot's copies; the pause is the time to write to - from bytes.

// GrowFill writes zeros over [from, to) of the COW file (both multiples of
// cowAlign), makes them durable and returns the end of what it wrote (from
// when nothing: the store is short of space, say).
type GrowFill func(from, to uint64) (uint64, error)

// growAlign aligns the regions GrowCOW fills.
const growAlign = 1 << 20

// FastEnd is the end of the COW's last fast segment (0 when none is).
func (c COW) FastEnd() uint64 { return c.fastEnd }

// GrowCOW maps up to want more bytes of session n's COW file straight to
// the store's device (see above): the region from the end of the fast
// segments, or from the exception store's frontier where that is further,
// is written through fill and mapped. It returns the COW as it is after,
// and the region filled (empty when there was no room: the file's end is
// near, or fill wrote nothing). A COW of which nothing is mapped straight
// (a store that cannot be) is ErrUnsupported-like: an error saying so.
// Whatever fails, the COW device is resumed with a table that maps every
// byte where it was.
func (s Stack) GrowCOW(n int, cowFile string, want uint64, fill GrowFill) (after COW, from, to uint64, err error) {
	const op = "grow COW"
	if err := s.check(op); err != nil {
		return COW{}, 0, 0, err
	}
	m := s.dm()
	name := s.COWName(n)
	cur, tail, lins, err := s.cowTable(n)
	if err != nil {
		return COW{}, 0, 0, err
	}
	if cur.FastBytes == 0 {
		return cur, 0, 0, errorf(op, name, nil, "", "nothing of %s is mapped straight to the store's device", name)
	}
	if err := m.Suspend(name); err != nil {
		return cur, 0, 0, err
	}
	resumed := false
	defer func() {
		if resumed {
			return
		}
		if rerr := m.Resume(name); rerr != nil {
			err = errors.Join(err, fmt.Errorf("%s is left suspended (I/O to the snapshot waits): %w", name, rerr))
		}
	}()
	st, err := s.SnapshotStatus(n)
	if err != nil {
		return cur, 0, 0, err
	}
	if !st.Valid() {
		return cur, 0, 0, errorf(op, s.SnapshotName(n), nil, "", "snapshot %d is %s", n, st.State)
	}
	from, to = growRegion(cur.Bytes, cur.fastEnd, st.Allocated*SectorSize, want)
	if to <= from {
		return cur, 0, 0, nil
	}
	// The immutable flag must go for fill to write: the COW device is
	// suspended, so the kernel writes nothing meanwhile, and the file is
	// pinned again at once.
	if err := m.UnpinFile(cowFile); err != nil {
		return cur, 0, 0, err
	}
	end, ferr := fill(from, to)
	// Pinned again whatever fill did: the mapped segments need it.
	if err := m.PinFile(cowFile); err != nil {
		return cur, 0, 0, errors.Join(ferr, fmt.Errorf("%s is mapped but could not be pinned again: %w", cowFile, err))
	}
	if ferr != nil {
		return cur, 0, 0, ferr
	}
	if end <= from {
		return cur, 0, 0, nil
	}
	fm, err := m.MapFile(cowFile)
	if err != nil {
		// MapFile unpins a file it fails on.
		if perr := m.PinFile(cowFile); perr != nil {
			err = errors.Join(err, fmt.Errorf("%s is mapped but could not be pinned again: %w", cowFile, perr))
		}
		return cur, 0, 0, err
	}
	to = min(end, to)
	// Only what was mapped and what was just filled may be mapped now: any
	// other run of cow.img that reads as written (an extent the filesystem
	// no longer shares, say) may be stale, its bytes having gone to the
	// tail meanwhile.
	allowed := append(fastRanges(lins, tail), filemap.Range{Off: int64(from), End: int64(to)})
	slices.SortFunc(allowed, func(a, b filemap.Range) int { return cmp.Compare(a.Off, b.Off) })
	fast := clipExtents(fastExtents(cur.Bytes, fm.Extents, cowAlign), allowed)
	segs, loop, err := placeFast(m, fm, fast)
	if err != nil {
		return cur, 0, 0, err
	}
	if loop != nil {
		defer loop.Close()
	}
	if segsCovered(segs, 0, to) < cur.FastBytes {
		// The file's blocks moved or went (it was pinned all along): keep
		// the table that is there.
		return cur, 0, 0, errorf(op, cowFile, nil, "", "%s maps fewer of its first %d bytes than %s does", cowFile, to, name)
	}
	// The store's device may have been moved since the table was made
	// (pvmove, lvconvert): what the COW device wrote below it is carried
	// to where the new table puts it, while nothing writes (suspended).
	if moves := movedParts(lins, tail, viaLoopOf(m), fm.Below, segs, spanBase(fast)); len(moves) > 0 {
		if err := copyMoves(moves); err != nil {
			return cur, 0, 0, errorf(op, name, err, "", "the store's device was remapped under the COW (pvmove?), and carrying the COW's blocks to their new place failed")
		}
	}
	table, fastBytes := planCOW(cur.Bytes, segs, tail)
	targets := make([]Target, len(table))
	for i, t := range table {
		targets[i] = t
	}
	if err := m.Load(name, targets...); err != nil {
		return cur, 0, 0, err
	}
	if err := m.Resume(name); err != nil {
		return cur, 0, 0, undo(err, func() error { return m.ClearTable(name) })
	}
	resumed = true
	after = COW{Name: name, Dev: cur.Dev, Bytes: cur.Bytes, FastBytes: fastBytes, Segments: len(table),
		Route: tablePath(table, tail, viaLoopOf(m)), fastEnd: tableFastEnd(table, tail)}
	return after, from, to, nil
}

// growRegion is the region GrowCOW fills in a COW of size bytes whose fast
// segments end at fastEnd and whose store has allocated the bytes before
// allocated: from the later of the two, up to want bytes, before the file's
// last cowAlign bytes (which stay on the loop device over the file), both
// ends on growAlign. Empty (to <= from) when there is no room.
func growRegion(size, fastEnd, allocated, want uint64) (from, to uint64) {
	from = (max(fastEnd, allocated) + growAlign - 1) / growAlign * growAlign
	if size < cowAlign {
		return from, 0
	}
	to = min(from+want, size-cowAlign) / growAlign * growAlign
	if to < from {
		to = from
	}
	return from, to
}

// fastRanges returns the file ranges a COW table maps fast (on a device
// other than tail's).
func fastRanges(lins []Linear, tail Dev) []filemap.Range {
	var out []filemap.Range
	for _, l := range lins {
		if l.Device != tail {
			out = append(out, filemap.Range{Off: int64(l.Start * SectorSize), End: int64((l.Start + l.Length) * SectorSize)})
		}
	}
	return out
}

// clipExtents returns the parts of exts (sorted) inside the ranges of
// allowed (sorted), each part keeping its place on the device.
func clipExtents(exts []filemap.Extent, allowed []filemap.Range) []filemap.Extent {
	var out []filemap.Extent
	for _, e := range exts {
		for _, r := range allowed {
			lo, hi := max(e.Logical, uint64(r.Off)), min(e.End(), uint64(r.End))
			if lo >= hi {
				continue
			}
			x := filemap.Extent{Logical: lo, Physical: e.Physical + (lo - e.Logical), Length: hi - lo, Flags: e.Flags}
			if k := len(out); k > 0 && out[k-1].End() == x.Logical && out[k-1].Physical+out[k-1].Length == x.Physical {
				out[k-1].Length += x.Length
				continue
			}
			out = append(out, x)
		}
	}
	return out
}

// cowTable reads session n's COW device like COWInfo, and also returns the
// device of its tail segments (the loop device over cow.tail, or over
// cow.img when nothing is mapped) and the table.
func (s Stack) cowTable(n int) (COW, Dev, []Linear, error) {
	const op = "COW info"
	if err := s.check(op); err != nil {
		return COW{}, Dev{}, nil, err
	}
	m := s.dm()
	name := s.COWName(n)
	info, err := m.Info(name)
	if err != nil {
		return COW{}, Dev{}, nil, err
	}
	tbl, err := m.Table(name)
	if err != nil {
		return COW{}, Dev{}, nil, err
	}
	cow := COW{Name: name, Dev: info.Dev}
	var lins []Linear
	for _, spec := range tbl {
		t, err := ParseTarget(spec)
		l, ok := t.(Linear)
		if err != nil || !ok {
			return COW{}, Dev{}, nil, errorf(op, name, nil, "", "target %q is not linear", spec.String())
		}
		lins = append(lins, l)
	}
	if len(lins) == 0 {
		return COW{}, Dev{}, nil, errorf(op, name, nil, "", "%s has no table", name)
	}
	tail := lins[len(lins)-1].Device
	cow.Bytes, cow.FastBytes = tableBytes(lins)
	cow.Segments = len(lins)
	cow.fastEnd = tableFastEnd(lins, tail)
	cow.Route = tablePath(lins, tail, viaLoopOf(m))
	return cow, tail, lins, nil
}

// tableFastEnd is the end of the last segment of a COW table not on tail.
func tableFastEnd(lins []Linear, tail Dev) uint64 {
	var end uint64
	for _, l := range lins {
		if l.Device != tail {
			end = (l.Start + l.Length) * SectorSize
		}
	}
	return end
}
