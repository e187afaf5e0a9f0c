package snapstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/internal/directio"
	"github.com/dmsnap/dmsnap/internal/filemap"
)

// Preallocation. A new cow.img is sparse: the kernel's first write to each
// of its chunks makes the store's filesystem allocate a block, and the
// exception commit that follows (a flush) must journal that. Writing zeros
// over the start of the file at arming allocates those blocks beforehand,
// and lets dm.AttachCOW map them straight to the store's block device, so
// that the session's first chunks cost what an LVM snapshot's do (README,
// "Benchmarks"). Conversion cuts blocks.dat after its last record, so the
// zeros the session did not use are given back when it closes.

// preallocShare bounds the preallocation to this fraction of the store's
// free space: it never crowds the store out.
const preallocShare = 4

// preallocStep is the size of one write of zeros.
const preallocStep = 1 << 20

// preallocCow writes zeros over the first want bytes of the sparse file at
// path (all zeros already), around the page cache, and returns how many it
// wrote. It writes none where dm.AttachCOW could not map them (a store
// filesystem filemap.Probe refuses: tmpfs, btrfs, ...), and fewer when the
// file or the store's free space is smaller (a quarter of it at most, to
// whole MiB). Preallocation is only ever an optimisation: on any error it
// punches what it wrote back out and returns 0, leaving the file as it was.
func preallocCow(path string, want int64) int64 {
	n, _ := fillCow(path, 0, want)
	return n
}

// FillCow writes zeros over [from, to) of a session's cow.img while its
// snapshot is live, for dm.Stack.GrowCOW, which calls it with the COW
// device suspended and the file unpinned, at or past the exception store's
// frontier (so the kernel never wrote there). It writes as preallocCow
// does: none where the store cannot be mapped, at most a quarter of the
// store's free space, whole MiB. It returns the end of what it wrote (from
// when nothing); what it wrote is durable. dir's state.json counts it in
// Prealloc.
func FillCow(dir string, from, to int64) (int64, error) {
	if from < 0 || to < from || from%preallocStep != 0 {
		return from, fmt.Errorf("fill %s: bad range [%d, %d)", dir, from, to)
	}
	st, err := ReadState(dir)
	if err != nil {
		return from, err
	}
	n, err := fillCow(filepath.Join(dir, CowFile), from, to-from)
	if err != nil || n == 0 {
		return from, err
	}
	st.Prealloc += n
	if err := WriteState(dir, st); err != nil {
		return from + n, err
	}
	return from + n, nil
}

// fillCow writes zeros over up to want bytes of the file at path from byte
// from (a multiple of preallocStep), bounded by the file's last block, the
// store's free space and the filesystem's mappability, and returns how many
// it wrote. On a write error it punches the range back out and returns 0
// with the error; a store that cannot be mapped is 0 and no error.
func fillCow(path string, from, want int64) (int64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if _, err := filemap.Probe(f); err != nil {
		return 0, nil
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &sfs); err != nil {
		return 0, err
	}
	free := int64(sfs.Bavail) * sfs.Bsize
	// The file's last block always goes through the filesystem (AttachCOW),
	// so it is left out.
	n := min(want, fi.Size()-directio.Align-from, free/preallocShare) / preallocStep * preallocStep
	if n <= 0 {
		return 0, nil
	}
	// One request for the whole range first: the filesystem then finds it
	// the longest free runs it has (ext4's mballoc, xfs's allocator), where
	// 1 MiB writes would each take the next free blocks. The COW device
	// has one segment per run on the device, and device-mapper sends every
	// flush to each of them.
	if err := unix.Fallocate(int(f.Fd()), 0, from, n); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
		unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, from, n)
		return 0, fmt.Errorf("allocating %d bytes of %s: %w", n, path, err)
	}
	if err := writeZeros(f, from, n); err != nil {
		// ENOSPC or an I/O error: give the blocks back, keep the file sparse.
		unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, from, n)
		f.Sync()
		return 0, fmt.Errorf("writing zeros to %s: %w", path, err)
	}
	return n, nil
}

// writeZeros writes n zero bytes (a multiple of preallocStep) from byte
// from of f with O_DIRECT where the filesystem allows it, then makes them
// durable and drops what went through the page cache.
func writeZeros(f *os.File, from, n int64) error {
	w := directio.NewWriter(f)
	defer w.Close()
	zero := directio.AlignedBuf(preallocStep)
	for off := from; off < from+n; off += preallocStep {
		if _, err := w.WriteAt(zero, off); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := unix.Fadvise(int(f.Fd()), from, n, unix.FADV_DONTNEED); err != nil && !errors.Is(err, unix.ENOSYS) {
		return err
	}
	return nil
}

// releaseCow undoes, for a closed session, what dm.AttachCOW did to its
// cow.img: it clears the immutable (or, from older versions, append-only)
// flag, since the file is written, renamed and punched next; folds the
// tail file into it (the pre-images the kernel wrote past the mapped part:
// filemap.FoldInto, which removes the tail once cow.img holds them durably);
// and, where the file may have been mapped to the store's device, drops
// its page cache and checks that none is left, since the kernel wrote its
// blocks beneath the filesystem and any page cached before is stale
// (filemap.DropCache). A missing cow.img is fine (converted already; its
// tail was folded before the rename, and one left anyway is removed).
func releaseCow(path, tail string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.Remove(tail); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if err := filemap.Unpin(f); err != nil {
		return err
	}
	if _, err := filemap.FoldInto(path, tail); err != nil {
		return fmt.Errorf("folding %s into %s: %w", tail, path, err)
	}
	_, perr := filemap.Probe(f)
	if perr != nil && !errors.Is(perr, filemap.ErrUnsupported) {
		return perr
	}
	if perr != nil {
		return nil // never mapped: AttachCOW probes the same way
	}
	return filemap.DropCache(f)
}
