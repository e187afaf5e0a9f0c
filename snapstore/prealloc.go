package snapstore

import (
	"errors"
	"os"

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
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0
	}
	defer f.Close()
	if _, err := filemap.Probe(f); err != nil {
		return 0
	}
	fi, err := f.Stat()
	if err != nil {
		return 0
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &sfs); err != nil {
		return 0
	}
	free := int64(sfs.Bavail) * sfs.Bsize
	// The file's last block always goes through the filesystem (AttachCOW),
	// so it is left out.
	n := min(want, fi.Size()-directio.Align, free/preallocShare) / preallocStep * preallocStep
	if n <= 0 {
		return 0
	}
	// One request for the whole range first: the filesystem then finds it
	// the longest free runs it has (ext4's mballoc, xfs's allocator), where
	// 1 MiB writes would each take the next free blocks. The COW device
	// has one segment per run on the device, and device-mapper sends every
	// flush to each of them.
	if err := unix.Fallocate(int(f.Fd()), 0, 0, n); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
		unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, n)
		return 0
	}
	if err := writeZeros(f, n); err != nil {
		// ENOSPC or an I/O error: give the blocks back, keep the file sparse.
		unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, n)
		f.Sync()
		return 0
	}
	return n
}

// writeZeros writes n zero bytes (a multiple of preallocStep) at the start
// of f with O_DIRECT where the filesystem allows it, then makes them
// durable and drops what went through the page cache.
func writeZeros(f *os.File, n int64) error {
	w := directio.NewWriter(f)
	defer w.Close()
	zero := directio.AlignedBuf(preallocStep)
	for off := int64(0); off < n; off += preallocStep {
		if _, err := w.WriteAt(zero, off); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := unix.Fadvise(int(f.Fd()), 0, n, unix.FADV_DONTNEED); err != nil && !errors.Is(err, unix.ENOSYS) {
		return err
	}
	return nil
}

// releaseCow undoes, for a closed session, what dm.AttachCOW did to its
// cow.img: it clears the append-only flag (the file is renamed and punched
// next) and, where the file may have been mapped to the store's device,
// drops its page cache and checks that none is left, since the kernel
// wrote its blocks beneath the filesystem and any page cached before is
// stale (filemap.DropCache). A missing cow.img is fine (converted already).
func releaseCow(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	_, perr := filemap.Probe(f)
	if perr != nil && !errors.Is(perr, filemap.ErrUnsupported) {
		return perr
	}
	if err := filemap.Unpin(f); err != nil {
		return err
	}
	if perr != nil {
		return nil // never mapped: AttachCOW probes the same way
	}
	return filemap.DropCache(f)
}
