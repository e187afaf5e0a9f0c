package filemap

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Range is a run of a file's bytes, [Off, End).
type Range struct{ Off, End int64 }

// DataRanges returns the runs of f that hold data, as the filesystem tells
// them (SEEK_DATA, SEEK_HOLE); holes, and unwritten extents on the
// filesystems that report them as holes, are left out. A filesystem
// without SEEK_DATA gives the whole file.
func DataRanges(f *os.File) ([]Range, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	var out []Range
	for off := int64(0); off < size; {
		start, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // no data from off on
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			return []Range{{0, size}}, nil
		}
		if err != nil {
			return nil, &os.PathError{Op: "seek data", Path: f.Name(), Err: err}
		}
		end, err := unix.Seek(int(f.Fd()), start, unix.SEEK_HOLE)
		if err != nil {
			return nil, &os.PathError{Op: "seek hole", Path: f.Name(), Err: err}
		}
		out = append(out, Range{start, min(end, size)})
		off = end
	}
	return out, nil
}

// Subtract returns the parts of rs outside every range of cut (both sorted,
// neither overlapping itself).
func Subtract(rs, cut []Range) []Range {
	var out []Range
	for _, r := range rs {
		for _, c := range cut {
			if c.End <= r.Off || c.Off >= r.End {
				continue
			}
			if c.Off > r.Off {
				out = append(out, Range{r.Off, c.Off})
			}
			r.Off = max(r.Off, c.End)
			if r.Off >= r.End {
				break
			}
		}
		if r.Off < r.End {
			out = append(out, r)
		}
	}
	return out
}

// copyBlock is the unit CopyRanges reads, writes and skips when all zero.
const copyBlock = 1 << 20

// CopyRanges copies the bytes of rs from src to dst at the same offsets,
// through the page cache, and syncs dst. With skipZeros, blocks of zeros
// are left unwritten (for a dst that reads zeros there already: a new
// sparse file). It returns the bytes written.
func CopyRanges(dst, src *os.File, rs []Range, skipZeros bool) (int64, error) {
	buf := make([]byte, copyBlock)
	zero := make([]byte, copyBlock)
	var written int64
	for _, r := range rs {
		for off := r.Off; off < r.End; {
			n := min(int64(len(buf)), r.End-off)
			b := buf[:n]
			if _, err := src.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
				return written, fmt.Errorf("read %s at %d: %w", src.Name(), off, err)
			}
			if !skipZeros || !bytes.Equal(b, zero[:n]) {
				if _, err := dst.WriteAt(b, off); err != nil {
					return written, fmt.Errorf("write %s at %d: %w", dst.Name(), off, err)
				}
				written += n
			}
			off += n
		}
	}
	if err := dst.Sync(); err != nil {
		return written, &os.PathError{Op: "fsync", Path: dst.Name(), Err: err}
	}
	return written, nil
}

// FoldInto copies every byte of data of the file at src into the file at
// dst at the same offsets (CopyRanges; zeros too: they may replace data),
// makes it durable, then removes src and syncs its directory. Holes of src
// leave dst as it is. A missing src is nothing to do. dst must be
// writable (not pinned). Repeated after a crash it does the same again.
func FoldInto(dst, src string) (int64, error) {
	sf, err := os.Open(src)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer sf.Close()
	rs, err := DataRanges(sf)
	if err != nil {
		return 0, err
	}
	df, err := os.OpenFile(dst, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	n, err := CopyRanges(df, sf, rs, false)
	if cerr := df.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return n, err
	}
	if err := os.Remove(src); err != nil {
		return n, err
	}
	d, err := os.Open(filepath.Dir(src))
	if err != nil {
		return n, err
	}
	defer d.Close()
	return n, d.Sync()
}
