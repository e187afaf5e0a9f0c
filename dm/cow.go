package dm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/dmsnap/dmsnap/internal/filemap"
)

// The COW device of session n, dmsnap-NAME-cowN, is a linear device the
// size of the session's COW file (cow.img) that the snapshot takes as its
// exception store:
//
//	dmsnap-NAME-snapN  snapshot  dmsnap-NAME-real  dmsnap-NAME-cowN  P <chunk>
//	dmsnap-NAME-cowN   linear    segments of two kinds, in file order:
//	    fast: <loop over the store's block device>  at the segment's device offset
//	    tail: <loop over cow.tail, write-through>  at the segment's own offset
//
// A fast segment is a run of cow.img that is already allocated and written
// (the Store writes zeros over the start of a new cow.img, the watcher more
// as the session grows): the kernel's copies and exception commits go
// straight to the blocks that hold it, as an LVM snapshot's go to its COW
// volume, instead of through the store's filesystem. The bytes land in
// cow.img, at the same offsets.
//
// Mapping a file's blocks under its mounted filesystem is safe only while
// the filesystem neither moves nor frees nor writes nor caches them: so
// internal/filemap checks the filesystem and the extents, cow.img is
// immutable (chattr +i) for as long as any of it is mapped — append-only
// is not enough: xfs dedupes, and ext4's MOVE_EXT moves, the blocks of an
// append-only file — and its page cache is dropped; conversion (snapstore)
// folds the tail back, unpins it and drops the cache again before reading
// it.
//
// An immutable file cannot be written through, so everything of the COW
// that is not mapped (holes past what was written ahead, the file's last
// block) goes to cow.tail, a sparse file beside it of the same size, at
// the same offsets, through a loop device. It takes pre-images only when
// the kernel runs past the mapped part before the watcher maps more (the
// watcher down, or too slow): then no pre-image is lost while the store
// has room. That loop device is write-through, so the flush device-mapper
// sends it with every exception commit completes at once, without reaching
// the file. Whatever of cow.img holds data outside the mapped part when the
// COW device is made (a previous tail folded in, extents the filesystem
// shares) is copied into cow.tail first, so the device shows every byte of
// the COW where it was. The tail is folded into cow.img whenever no COW
// device uses them: at the next attach (a reboot) and at conversion.
//
// A store whose files cannot be mapped (tmpfs, btrfs, ...) has no fast
// segment: the whole COW is the loop device over cow.img (direct I/O where
// the store allows it, write-back), which is never pinned.
//
// Device-mapper cannot claim a mounted filesystem's device itself (the
// mount holds it exclusively), so the fast segments go through a loop
// device over it with direct I/O, its window limited to the span of the
// mapped extents: blkid and udev, which probe every new block device, see
// the start of one of cow.img's extents, never the store's own superblock.

// cowAlign is the alignment of every segment, in the file and on the
// device: the loop devices' logical block size and the page size, so no
// page of the store device's cache is ever shared with filesystem metadata.
const cowAlign = 4096

// maxFastExtents bounds the fast segments of one COW device. Device-mapper
// (6.1) sends every flush to each target of a table, so a COW device of k
// segments turns each exception commit's two flushes into 2k; on a
// fragmented store the file's first extents are kept, where the kernel
// allocates first, and the rest goes through the file.
const maxFastExtents = 64

// COWName is the COW device of session n: dmsnap-NAME-cowN.
func (s Stack) COWName(n int) string { return Prefix + s.Name + "-cow" + strconv.Itoa(n) }

// FileMap is what MapFile found: where a file's bytes lie on the block
// device of its filesystem. The file is pinned (immutable) from then on.
type FileMap struct {
	Device  string // a node of the filesystem's block device
	Dev     Dev
	Extents []filemap.Extent
	// Below is the table of the filesystem's device when it is
	// device-mapper made of linear targets only (below.go): the COW's fast
	// segments then name the devices under it. nil otherwise, and
	// NotBelow says why.
	Below    *Below
	NotBelow string
}

// COW is a session's COW device.
type COW struct {
	Name      string // dmsnap-NAME-cowN
	Dev       Dev
	Bytes     uint64 // size, the COW file's (to the alignment)
	FastBytes uint64 // mapped straight to the store's block device
	Segments  int    // targets of the COW device (each gets every flush)
	// Route is how the fast segments reach the store's blocks: PathBelow,
	// PathLoop, or PathFile when nothing is mapped.
	Route string
	// Slow says why none of the file is mapped straight (AttachCOW only;
	// empty when some is, or when there was nothing written to map).
	Slow string

	fastEnd uint64 // see FastEnd
}

// Path is the COW device's /dev/mapper node.
func (c COW) Path() string { return MapperPath(c.Name) }

// fileLoop are the options of the loop device over cow.img when nothing
// of it is mapped (a store that cannot be). Direct I/O keeps the
// pre-images out of the page cache (written once, read only at
// conversion); it needs the loop device's block size at least the store
// filesystem's, hence 4096 (chunks are 4 KiB or more). Where the store
// cannot do direct I/O (tmpfs before Linux 6.6) the kernel silently keeps
// buffered I/O; `dmsnap status` shows which one took.
//
// It is write-back, as block devices are: each exception commit's flush
// fsyncs cow.img. Write-through (LoopOptions.WriteThrough) would make those
// flushes free but sync every chunk written through the file on its own:
// seen in the guest, 64 MiB of sequential first writes took 39 s instead of
// 2.4-3.2 s. The tail of a mapped COW takes that cost instead: it is
// written only when the mapped part runs out.
var fileLoop = LoopOptions{AutoClear: true, DirectIO: true, BlockSize: cowAlign}

// tailLoop are the options of the loop device over cow.tail: write-through,
// so that device-mapper's flushes, sent to every segment of the COW device
// with each exception commit, cost nothing there (see the top of this file).
var tailLoop = LoopOptions{AutoClear: true, WriteThrough: true, BlockSize: cowAlign}

// AttachCOW makes dmsnap-NAME-cowN over cowFile, with tailFile (cow.tail,
// beside it) for what of it is not mapped (see the comment at the top of
// this file), resumed and ready for a snapshot table, and returns it. The
// loop devices under it are auto-clear: they go when it is removed. A
// leftover dmsnap-NAME-cowN that nothing uses (a crash before its snapshot
// was made) is replaced; one in use is ErrBusy.
//
// A tailFile left by an earlier attach (a reboot) is folded into cowFile
// first. Mapping the file straight to the store's device is an
// optimisation: when anything about it fails, the whole file goes through
// the loop device over cow.img, unpinned, and COW.Slow says why.
func (s Stack) AttachCOW(n int, cowFile, tailFile string) (cow COW, err error) {
	const op = "attach COW"
	if err := s.check(op); err != nil {
		return COW{}, err
	}
	m := s.dm()
	name := s.COWName(n)
	if info, err := m.Info(name); err == nil {
		if info.OpenCount > 0 {
			return COW{}, &Error{Op: op, Device: name, Kind: ErrBusy,
				Err: fmt.Errorf("%s exists and is in use (%d openers)", name, info.OpenCount), Hint: "remove snapshot " + strconv.Itoa(n) + " first"}
		}
		if err := m.Remove(name); err != nil {
			return COW{}, err
		}
	} else if !errors.Is(err, ErrNotFound) {
		return COW{}, err
	}
	fi, err := os.Stat(cowFile)
	if err != nil {
		return COW{}, newError(op, cowFile, err, "")
	}
	size := uint64(fi.Size()) / cowAlign * cowAlign
	if size == 0 {
		return COW{}, errorf(op, cowFile, nil, "", "%s is smaller than %d bytes", cowFile, cowAlign)
	}
	// No COW device uses the files now: cow.img holds the whole COW again
	// once the tail of a previous attach (a reboot) is folded into it.
	if err := m.UnpinFile(cowFile); err != nil {
		return COW{}, err
	}
	if _, err := filemap.FoldInto(cowFile, tailFile); err != nil {
		return COW{}, newError(op, tailFile, err, "folding the tail of the COW back into "+cowFile)
	}

	cow = COW{Name: name, Bytes: size}
	var segs []fastSeg
	fm, merr := m.MapFile(cowFile) // pins it
	if merr != nil {
		cow.Slow = merr.Error()
	} else if fast := fastExtents(size, fm.Extents, cowAlign); len(fast) > 0 {
		var fastLoop *Loop
		if segs, fastLoop, err = placeFast(m, fm, fast); err != nil {
			cow.Slow, segs = err.Error(), nil
		} else if fastLoop != nil {
			defer fastLoop.Close()
		}
	}
	var tail *Loop
	if len(segs) == 0 {
		// Nothing mapped: the file itself, unpinned, carries the COW.
		if err := m.UnpinFile(cowFile); err != nil {
			return COW{}, err
		}
		if tail, err = m.AttachLoop(cowFile, fileLoop); err != nil {
			return COW{}, err
		}
	} else {
		// A COW device that is not made leaves the file as it found it.
		defer func() {
			if err != nil {
				if uerr := m.UnpinFile(cowFile); uerr != nil {
					err = errors.Join(err, uerr)
				}
			}
		}()
		if err := makeTail(cowFile, tailFile, size, segRanges(segs)); err != nil {
			return COW{}, newError(op, tailFile, err, "")
		}
		if tail, err = m.AttachLoop(tailFile, tailLoop); err != nil {
			return COW{}, err
		}
	}
	defer tail.Close()
	table, fastBytes := planCOW(size, segs, tail.Dev)
	cow.FastBytes, cow.Segments, cow.fastEnd = fastBytes, len(table), tableFastEnd(table, tail.Dev)
	cow.Route = tablePath(table, tail.Dev, viaLoopOf(m))
	targets := make([]Target, len(table))
	for i, t := range table {
		targets[i] = t
	}
	info, err := m.Create(name, s.uuid("cow"+strconv.Itoa(n)))
	if err != nil {
		return COW{}, err
	}
	rm := func() error { return m.Remove(name) }
	if err := m.Load(name, targets...); err != nil {
		return COW{}, undo(err, rm)
	}
	if err := m.Resume(name); err != nil {
		return COW{}, undo(err, rm)
	}
	cow.Dev = info.Dev
	return cow, nil
}

// makeTail creates tailFile, sparse and size bytes long, holding whatever
// of cowFile holds data outside the mapped ranges (usually nothing: a
// previous tail was folded into extents that are mapped now), so that the
// COW device shows every byte of the COW where it was.
func makeTail(cowFile, tailFile string, size uint64, mapped []filemap.Range) error {
	cf, err := os.Open(cowFile)
	if err != nil {
		return err
	}
	defer cf.Close()
	data, err := filemap.DataRanges(cf)
	if err != nil {
		return err
	}
	tf, err := os.OpenFile(tailFile, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := tf.Truncate(int64(size)); err != nil {
		tf.Close()
		return err
	}
	_, err = filemap.CopyRanges(tf, cf, filemap.Subtract(data, mapped), true)
	if cerr := tf.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(tailFile))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// RemoveCOW removes dmsnap-NAME-cowN; one already gone is success. While a
// snapshot uses it, it is ErrBusy.
func (s Stack) RemoveCOW(n int) error {
	if err := s.check("remove COW"); err != nil {
		return err
	}
	err := s.dm().Remove(s.COWName(n))
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// COWInfo reads dmsnap-NAME-cowN back from its table: its size and how much
// of it is mapped straight to the store's device (the segments that are not
// on the loop device over cow.img, which maps the rest at its own offsets).
func (s Stack) COWInfo(n int) (COW, error) {
	cow, _, _, err := s.cowTable(n)
	return cow, err
}

// tableBytes returns a COW table's size and its fast bytes: a segment is
// slow when it maps onto the device of the table's slow segments, which
// map at their own offsets (Offset == Start) — the last segment always
// is one (planCOW).
func tableBytes(lins []Linear) (size, fast uint64) {
	if len(lins) == 0 {
		return 0, 0
	}
	tail := lins[len(lins)-1].Device
	for _, l := range lins {
		size += l.Length * SectorSize
		if l.Device != tail {
			fast += l.Length * SectorSize
		}
	}
	return size, fast
}

// fastExtents picks the extents of a file of size bytes to map straight to
// the device: plain ones (written, in place), each cut to its part aligned
// to align in the file and on the device, all before the file's last align
// bytes (which stay on the loop device over the file, so that the table
// always holds the file open), at most maxFastExtents of them, neighbours
// in the file and on the device merged.
func fastExtents(size uint64, exts []filemap.Extent, align uint64) []filemap.Extent {
	if size < align {
		return nil
	}
	end := size/align*align - align
	var out []filemap.Extent
	for _, e := range exts {
		if !e.Plain() || e.Logical%align != e.Physical%align {
			continue
		}
		lo := (e.Logical + align - 1) / align * align
		hi := min(e.End()/align*align, end)
		if lo >= hi {
			continue
		}
		x := filemap.Extent{Logical: lo, Physical: e.Physical + (lo - e.Logical), Length: hi - lo}
		if n := len(out); n > 0 && out[n-1].End() == x.Logical && out[n-1].Physical+out[n-1].Length == x.Physical {
			out[n-1].Length += x.Length
			continue
		}
		if len(out) == maxFastExtents {
			break
		}
		out = append(out, x)
	}
	return out
}

// span returns the first device byte of the extents and the length of the
// device window that holds them all.
func span(exts []filemap.Extent) (base, length uint64) {
	if len(exts) == 0 {
		return 0, 0
	}
	lo, hi := ^uint64(0), uint64(0)
	for _, e := range exts {
		lo = min(lo, e.Physical)
		hi = max(hi, e.Physical+e.Length)
	}
	return lo, hi - lo
}

// planCOW returns the table of a COW device over a file of size bytes (a
// multiple of cowAlign): the fast segments, sorted and inside the file,
// where they were placed (placeFast); every other part of the file maps to
// tail at its own offset. It also returns the fast bytes.
func planCOW(size uint64, fast []fastSeg, tail Dev) ([]Linear, uint64) {
	var out []Linear
	var fastBytes, at uint64
	slow := func(to uint64) {
		if to > at {
			out = append(out, Linear{Start: at / SectorSize, Length: (to - at) / SectorSize, Device: tail, Offset: at / SectorSize})
			at = to
		}
	}
	for _, f := range fast {
		slow(f.Logical)
		out = append(out, Linear{Start: f.Logical / SectorSize, Length: f.Length / SectorSize, Device: f.Device, Offset: f.Offset / SectorSize})
		fastBytes += f.Length
		at = f.Logical + f.Length
	}
	slow(size)
	return out, fastBytes
}

// placeFast puts the fast extents (on the store's device, fastExtents)
// where a COW table can name them: on the devices below the store's device
// when its table allows (FileMap.Below, see below.go), else through a
// direct-I/O loop device over the store's device, its window spanning
// them all, which it returns for the caller to close once a table holds it.
func placeFast(m Kernel, fm FileMap, fast []filemap.Extent) ([]fastSeg, *Loop, error) {
	if fm.Below != nil {
		if segs, ok := fm.Below.placeBelow(fast); ok {
			return capSegs(segs), nil, nil
		}
	}
	base, limit := span(fast)
	loop, err := m.AttachLoop(fm.Device, LoopOptions{AutoClear: true, DirectIO: true, BlockSize: cowAlign,
		BlockDevice: true, Offset: base, SizeLimit: limit})
	if err != nil {
		return nil, nil, err
	}
	if !loop.DirectIO {
		loop.Close()
		return nil, nil, fmt.Errorf("the loop device over %s does not take direct I/O", fm.Device)
	}
	return loopSegs(fast, loop.Dev, base), loop, nil
}
