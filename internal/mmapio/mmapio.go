// Package mmapio reads a file through a read-only shared mapping. A read is
// a copy out of the page cache with no system call: that matters where
// system calls are dear, as in a restore's write pass, which reads
// blocks.dat one record (4 KiB by default) at a time in device order, and
// under an emulated CPU each pread costs tens of microseconds.
//
// A mapped file reports trouble by a fault, not by an error: a page past the
// file's end (the file shrank since it was mapped) or one the disk cannot
// read. ReadAt turns such a fault into an error (ErrFault) instead of letting
// it crash the program.
package mmapio

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"golang.org/x/sys/unix"
)

// ErrFault reports a read of the mapping that faulted: the file is shorter
// than when it was mapped, or its storage failed to read.
var ErrFault = errors.New("fault reading the mapped file (it shrank, or its storage failed to read)")

// Reader reads a file through a mapping of its first size bytes. Its
// methods may be called from several goroutines, but none after Close.
type Reader struct {
	name string
	data []byte
}

// Open maps the first size bytes of f read-only. f may be closed
// afterwards; the mapping stays until Close. A size of 0 maps nothing and
// every read is at the end.
func Open(f *os.File, size int64) (*Reader, error) {
	r := &Reader{name: f.Name()}
	if size == 0 {
		return r, nil
	}
	if size < 0 || int64(int(size)) != size {
		return nil, fmt.Errorf("mapping %s: %d bytes cannot be mapped", f.Name(), size)
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, &os.PathError{Op: "mmap", Path: f.Name(), Err: err}
	}
	r.data = data
	return r, nil
}

// Size is the number of bytes mapped.
func (r *Reader) Size() int64 { return int64(len(r.data)) }

// ReadAt copies len(p) bytes at off out of the mapping, as io.ReaderAt
// does: fewer than len(p) only at the end of the mapping, with io.EOF. A
// fault on the way is a *os.PathError wrapping ErrFault.
func (r *Reader) ReadAt(p []byte, off int64) (n int, err error) {
	if off < 0 {
		return 0, &os.PathError{Op: "read", Path: r.name, Err: fmt.Errorf("negative offset %d", off)}
	}
	if off >= int64(len(r.data)) {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	if err := guard(func() { n = copy(p, r.data[off:]) }); err != nil {
		return n, &os.PathError{Op: "read", Path: r.name, Err: fmt.Errorf("%w, at or after byte %d", err, off)}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// guard runs f, which reads a mapping, and returns ErrFault if a read
// faulted (f is then cut short); other panics pass through.
func guard(f func()) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if v := recover(); v != nil {
			if _, ok := v.(interface{ Addr() uintptr }); !ok {
				panic(v)
			}
			err = ErrFault
		}
	}()
	f()
	return nil
}

// ErrNoPopulate: the kernel cannot populate a mapping ahead
// (MADV_POPULATE_READ came in Linux 5.14).
var ErrNoPopulate = errors.New("the kernel cannot populate a mapping (MADV_POPULATE_READ)")

// Populate reads the mapping's bytes [off, off+n) into memory and maps
// them, waiting for the reads: reading them afterwards costs no fault and no
// I/O (unless memory runs short and the kernel takes pages back). It
// returns an error wrapping ErrNoPopulate on kernels without
// MADV_POPULATE_READ, one wrapping ErrFault for a page that cannot be read.
func (r *Reader) Populate(off, n int64) error {
	if off < 0 || n < 0 || off > int64(len(r.data)) || n > int64(len(r.data))-off {
		return &os.PathError{Op: "populate", Path: r.name, Err: fmt.Errorf("bytes [%d, %d) are not all mapped (%d are)", off, off+n, len(r.data))}
	}
	if n == 0 {
		return nil
	}
	page := int64(os.Getpagesize())
	lo := off / page * page // madvise wants a page-aligned start
	err := unix.Madvise(r.data[lo:off+n], unix.MADV_POPULATE_READ)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EINVAL):
		return &os.PathError{Op: "populate", Path: r.name, Err: ErrNoPopulate}
	case errors.Is(err, unix.EFAULT):
		return &os.PathError{Op: "populate", Path: r.name, Err: fmt.Errorf("%w, in bytes [%d, %d)", ErrFault, off, off+n)}
	default:
		return &os.PathError{Op: "populate", Path: r.name, Err: fmt.Errorf("bytes [%d, %d): %w", off, off+n, err)}
	}
}

// Close unmaps the file.
func (r *Reader) Close() error {
	if r.data == nil {
		return nil
	}
	data := r.data
	r.data = nil
	return unix.Munmap(data)
}
