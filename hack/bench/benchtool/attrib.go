package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/filemap"
)

// The attribution rows take dmsnap's COW path apart (issue 17): each one
// stacks the same snapshot targets by hand (dm.Stack, as setupHop does)
// over a COW built one piece of dmsnap's closer to what dm.AttachCOW
// makes, so that the difference between neighbouring rows is what that
// piece costs:
//
//	hop         one loop device (direct I/O, 4 KiB blocks) over a device
//	            nothing has mounted (setupHop, the row there was already)
//	hop+linear  the same with a dm-linear device of one segment over it,
//	            which the snapshot names (dmsnap's dmsnap-NAME-cowN)
//	store       one loop device over the *mounted* store's device, at the
//	            blocks of a file written ahead on the store (one run)
//	store+linear  the same under a dm-linear device of one segment
//	store+linear+tail  the same plus a second segment over a write-through
//	            loop device on a sparse file (dmsnap's cow.tail), which
//	            takes no write in the job but gets every flush
//
// and, for the COW through a file (a tmpfs store, where dmsnap maps
// nothing):
//
//	file        one loop device straight over a tmpfs file, 512-byte
//	            blocks, buffered: how a hand-stacked snapshot usually looks
//	file 4K+linear  dmsnap's way: 4 KiB blocks, direct I/O asked for (a
//	            tmpfs before 6.6 keeps buffered I/O), a dm-linear device
//	            of one segment over it
type cowShape struct {
	onStore bool // the loop device is over the mounted store's device
	file    bool // the loop device is over a tmpfs file (no hop device)
	dmsnap  bool // file: dmsnap's loop options (4 KiB blocks, direct I/O)
	linear  bool // a dm-linear device over it is the COW
	tail    bool // linear: plus a segment over a write-through tail loop
}

// attribName is the name of the hand-stacked stack and its COW device.
const attribName = "wattr"

// setupShaped sets up the snapshot targets by hand over a COW of shape sh
// for a size-byte device (a tmpfs loop, prep run on it first).
func setupShaped(size, chunk int64, sh cowShape, prep func(dev string) error) (t *target, err error) {
	disk, free, err := deviceOr("", "wdisk.img", size)
	if err != nil {
		return nil, err
	}
	var undo []func() error
	down := func() error {
		var errs []error
		for i := len(undo) - 1; i >= 0; i-- {
			errs = append(errs, undo[i]())
		}
		free()
		return errors.Join(errs...)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, down())
		}
	}()
	if prep != nil {
		if err := prep(disk); err != nil {
			return nil, err
		}
	}
	cowBytes := size + size/64 + 8<<20
	var loop *dm.Loop
	switch {
	case sh.file:
		f := filepath.Join(benchRoot, "wattr-cow.img")
		if err := sparse(f, cowBytes); err != nil {
			return nil, err
		}
		undo = append(undo, func() error { return os.Remove(f) })
		opts := dm.LoopOptions{AutoClear: true}
		if sh.dmsnap {
			opts.DirectIO, opts.BlockSize = true, 4096
		}
		loop, err = dm.AttachLoop(f, opts)
	case sh.onStore:
		var at, n uint64
		var dev string
		dev, at, n, err = writtenRun(filepath.Join(storeMount, "wattr-cow.img"), cowBytes, &undo)
		if err != nil {
			return nil, err
		}
		loop, err = dm.AttachLoop(dev, dm.LoopOptions{AutoClear: true, DirectIO: true, BlockSize: 4096, BlockDevice: true, Offset: at, SizeLimit: n})
	default:
		cowDev, freeCOW, ferr := deviceOr("", "whop.img", cowBytes)
		if ferr != nil {
			return nil, ferr
		}
		undo = append(undo, func() error { freeCOW(); return nil })
		loop, err = dm.AttachLoop(cowDev, dm.LoopOptions{AutoClear: true, DirectIO: true, BlockDevice: true, BlockSize: 4096})
	}
	if err != nil {
		return nil, err
	}
	defer loop.Close() // the table holds it from here; auto-clear then
	if !sh.file && !loop.DirectIO {
		return nil, fmt.Errorf("the loop device over %s took no direct I/O", loop.Backing)
	}
	cow := loop.Path
	if sh.linear {
		if cow, err = linearCOW(loop, sh.tail, &undo); err != nil {
			return nil, err
		}
	}
	s := dm.Stack{Name: attribName, Device: disk}
	if err := s.Build(); err != nil {
		return nil, err
	}
	undo = append(undo, s.Teardown)
	if err := s.AddSnapshot(1, cow, uint32(chunk/dm.SectorSize)); err != nil {
		return nil, err
	}
	return &target{origin: s.OriginPath(), cowBytes: func() (int64, error) { return snapshotUsed(attribName) }, teardown: down}, nil
}

// writtenRun writes a file of n bytes of zeros at path on the store and
// returns its filesystem's device and where the file's first run of
// blocks lies on it (at and length, bytes), pinned there (dm.MapFile) until
// the teardown (undo) unpins and removes it. A first run shorter than
// minRun is an error: the rows compare one segment with one.
func writtenRun(path string, n int64, undo *[]func() error) (dev string, at, length uint64, err error) {
	f, err := os.Create(path)
	if err != nil {
		return "", 0, 0, err
	}
	zeros := make([]byte, 1<<20)
	for off := int64(0); off < n && err == nil; off += int64(len(zeros)) {
		_, err = f.Write(zeros[:min(int64(len(zeros)), n-off)])
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	*undo = append(*undo, func() error { return os.Remove(path) })
	if err != nil {
		return "", 0, 0, err
	}
	fm, err := dm.MapFile(path)
	if err != nil {
		return "", 0, 0, err
	}
	*undo = append(*undo, func() error { return filemap.UnpinPath(path) })
	// ext4 gives a run of at most 128 MiB (an extent) before it moves to
	// another block group: the COW is that first run, which holds the gap
	// job's pre-images (16 MiB) many times over.
	var run uint64
	for _, e := range fm.Extents {
		if !e.Plain() || e.Logical != run || e.Physical != fm.Extents[0].Physical+e.Logical {
			break
		}
		run = min(e.Logical+e.Length, uint64(n))
	}
	if run < minRun {
		return "", 0, 0, fmt.Errorf("%s: its first run of written blocks is %d bytes, want %d or more: %+v", path, run, minRun, fm.Extents)
	}
	return fm.Device, fm.Extents[0].Physical, run / 4096 * 4096, nil
}

// minRun is the least COW the store rows take: a run of blocks of the
// file written ahead (writtenRun).
const minRun = 64 << 20

// linearCOW makes dmsnap-like COW device wattr-cow over loop: one linear
// segment over all of it, and with tail a second one over a write-through
// loop device on a sparse 64 MiB file on the store (dm.AttachCOW's tail,
// which the job never reaches). It returns the device's path.
func linearCOW(loop *dm.Loop, tail bool, undo *[]func() error) (string, error) {
	lf, err := os.Open(loop.Path)
	if err != nil {
		return "", err
	}
	size, err := dm.Size(lf)
	lf.Close()
	if err != nil {
		return "", err
	}
	sectors := uint64(size) / dm.SectorSize
	targets := []dm.Target{dm.Linear{Start: 0, Length: sectors, Device: loop.Dev}}
	if tail {
		f := filepath.Join(storeMount, "wattr-cow.tail")
		const tailBytes = 64 << 20
		if err := sparse(f, tailBytes); err != nil {
			return "", err
		}
		*undo = append(*undo, func() error { return os.Remove(f) })
		tl, err := dm.AttachLoop(f, dm.LoopOptions{AutoClear: true, WriteThrough: true, BlockSize: 4096})
		if err != nil {
			return "", err
		}
		defer tl.Close()
		targets = append(targets, dm.Linear{Start: sectors, Length: tailBytes / dm.SectorSize, Device: tl.Dev})
	}
	name := attribName + "-cow"
	if _, err := dm.Create(name, ""); err != nil {
		return "", err
	}
	*undo = append(*undo, func() error { return dm.Remove(name) })
	if err := dm.Load(name, targets...); err != nil {
		return "", err
	}
	if err := dm.Resume(name); err != nil {
		return "", err
	}
	return dm.MapperPath(name), nil
}
