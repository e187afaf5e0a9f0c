package restore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
)

// ImageFile is the file `restore --to FILE` writes (an *os.File, or a
// BlockImage).
type ImageFile interface {
	io.WriterAt
	Truncate(size int64) error
}

// BlockImage is a block device as the destination of ApplyToImage
// (`restore --to DEVICE --force`). A device cannot be truncated and holds
// data of its own, so CopyImage writes the whole image onto it, zeros
// included, and leaves what lies past the image's end as it was. Size is
// the device's size; a device smaller than the image is refused before
// anything is written.
type BlockImage struct {
	F    *os.File
	Size int64
}

// WriteAt implements ImageFile.
func (b BlockImage) WriteAt(p []byte, off int64) (int, error) { return b.F.WriteAt(p, off) }

// Truncate implements ImageFile: a device keeps its size; it only checks
// that the image fits.
func (b BlockImage) Truncate(size int64) error {
	if size > b.Size {
		return fmt.Errorf("%s holds %d bytes, the image needs %d", b.F.Name(), b.Size, size)
	}
	return nil
}

// Sync implements Syncer.
func (b BlockImage) Sync() error { return b.F.Sync() }

// IncompleteImageError reports an ApplyToImage that failed after it had
// begun changing the destination (truncating or writing it): it holds
// neither its old content nor the image. An error of ApplyToImage that is
// not one left the destination as it was.
type IncompleteImageError struct{ Err error }

func (e *IncompleteImageError) Error() string {
	return fmt.Sprintf("the image is incomplete: %v", e.Err)
}

func (e *IncompleteImageError) Unwrap() error { return e.Err }

const (
	// copyBufferSize is the size of CopyImage's reads.
	copyBufferSize = 1 << 20
	// holeBlock is the granularity of CopyImage's hole detection: a
	// filesystem block, so holes line up with what the file system can
	// leave unallocated.
	holeBlock = 4096
)

// CopyStats is what CopyImage did.
type CopyStats struct {
	Bytes     uint64 `json:"bytes"`      // image size
	DataBytes uint64 `json:"data_bytes"` // bytes written
	HoleBytes uint64 `json:"hole_bytes"` // all-zero bytes left as holes
}

var zeroBlock [holeBlock]byte

// CopyImage makes dst a copy of the first size bytes of src. dst is
// truncated to zero and then to size first, so it reads as zeros
// throughout; all-zero 4 KiB blocks of src are then left as holes and only
// the rest is written, so a mostly empty device makes a sparse file. A
// BlockImage is written whole instead: it reads as what it held before. dst
// is not synced: ApplyToImage syncs once after the plan is written.
func CopyImage(ctx context.Context, dst ImageFile, src io.ReaderAt, size int64, prog Progress) (CopyStats, error) {
	_, dense := dst.(BlockImage)
	if prog == nil {
		prog = Quiet{}
	}
	st := CopyStats{Bytes: uint64(size)}
	if size < 0 {
		return st, fmt.Errorf("copying image: negative size %d", size)
	}
	if err := dst.Truncate(0); err != nil {
		return st, fmt.Errorf("copying image: truncating the file: %w", err)
	}
	if err := dst.Truncate(size); err != nil {
		return st, fmt.Errorf("copying image: sizing the file to %d bytes: %w", size, err)
	}
	prog.Begin("copy", uint64(size))
	defer prog.End()
	buf := make([]byte, copyBufferSize)
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		chunk := buf[:min(int64(len(buf)), size-off)]
		n, err := src.ReadAt(chunk, off)
		if n < len(chunk) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return st, fmt.Errorf("copying image: reading %d bytes at byte %d of the source: %w", len(chunk), off, err)
		}
		if dense {
			if _, err := dst.WriteAt(chunk, off); err != nil {
				return st, fmt.Errorf("copying image: writing %d bytes at byte %d of the device: %w", len(chunk), off, err)
			}
			st.DataBytes += uint64(len(chunk))
			off += int64(len(chunk))
			prog.Add(uint64(len(chunk)))
			continue
		}
		// Write each run of blocks that are not all zero in one call.
		for i := 0; i < len(chunk); {
			j := i
			for j < len(chunk) && isZero(chunk[j:min(j+holeBlock, len(chunk))]) {
				j = min(j+holeBlock, len(chunk))
			}
			st.HoleBytes += uint64(j - i)
			i = j
			for j < len(chunk) && !isZero(chunk[j:min(j+holeBlock, len(chunk))]) {
				j = min(j+holeBlock, len(chunk))
			}
			if j > i {
				if _, err := dst.WriteAt(chunk[i:j], off+int64(i)); err != nil {
					return st, fmt.Errorf("copying image: writing %d bytes at byte %d of the file: %w", j-i, off+int64(i), err)
				}
				st.DataBytes += uint64(j - i)
			}
			i = j
		}
		off += int64(len(chunk))
		prog.Add(uint64(len(chunk)))
	}
	return st, nil
}

func isZero(b []byte) bool { return bytes.Equal(b, zeroBlock[:len(b)]) }

// ApplyToImage is `restore --to FILE`: it verifies the plan (unless
// opts.SkipVerify) before touching dst, copies the source device (size
// bytes of src) into dst, sparse where the device is zero, writes the plan
// over the copy and syncs dst. The source is only read, provided dst is
// not the source: CheckImageTarget decides that. A plan that reaches past
// size, or a BlockImage smaller than size, is refused before anything is
// written. An error once dst has begun to change is an
// *IncompleteImageError.
func (p *Plan) ApplyToImage(ctx context.Context, dst ImageFile, src io.ReaderAt, size int64, opts ApplyOptions) (Result, CopyStats, error) {
	if size <= 0 {
		return Result{}, CopyStats{}, fmt.Errorf("restore to image: source size is %d bytes", size)
	}
	if b, ok := dst.(BlockImage); ok {
		if err := b.Truncate(size); err != nil {
			return Result{}, CopyStats{}, fmt.Errorf("restore to image: %w", err)
		}
	}
	opts.TargetSize = uint64(size)
	sum, err := p.prepare(ctx, opts)
	if err != nil {
		return Result{Summary: sum}, CopyStats{}, err
	}
	cs, err := CopyImage(ctx, dst, src, size, opts.progress())
	if err != nil {
		return Result{Summary: sum}, cs, &IncompleteImageError{Err: err}
	}
	res, err := p.write(ctx, dst, sum, opts)
	if err != nil {
		return res, cs, &IncompleteImageError{Err: err}
	}
	return res, cs, nil
}
