package restore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/dmsnap/dmsnap/internal/mmapio"
	"github.com/dmsnap/dmsnap/snapstore"
)

// Reading a store session's pre-images fast. A session of layout cow keeps
// its chunks in blocks.dat in the order the kernel first copied them, so
// reading its records in sector order (the plan's order) means reading
// blocks.dat at random offsets. The verify pass instead reads blocks.dat in
// file order (snapstore's Session.CheckInStorageOrder), in large sequential
// reads around the page cache. The write pass maps blocks.dat and copies
// records out of the mapping in device order, while a goroutine of its own
// reads the mapping into memory in file order (prefetch): the copies find
// their pages there instead of waiting on a read for each fault.

// storageOrderChecker is a Session that can check all of its records by
// reading its storage in file order.
type storageOrderChecker interface {
	// checkInStorageOrder reads every record of the session in storage
	// order and checks it. It calls add with the bytes of each record
	// checked and bad for each record that fails (idx is its position in
	// the record stream); it stops when bad returns false. It returns
	// done = false, having called bad for nothing that matters, when the
	// session cannot be checked this way (the caller then reads its
	// records one by one); err is fatal.
	checkInStorageOrder(ctx context.Context, add func(uint64), bad func(idx int64, r Record, err error) bool) (done bool, err error)
}

// checkInStorageOrder implements storageOrderChecker for a session dmsnap
// wrote (with blocks.crc).
func (a *StoreSession) checkInStorageOrder(ctx context.Context, add func(uint64), bad func(int64, Record, error) bool) (bool, error) {
	return a.S.CheckInStorageOrder(ctx, add, bad)
}

// recordReader reads whole records for the write pass.
type recordReader interface {
	// readRecord fills p (len(p) == r.Size) with record r, at position idx
	// of its session's record stream.
	readRecord(idx int64, r Record, p []byte) error
	close() error
}

// openRecordReader returns the write pass's reader of session s. When
// checked is false the records were verified moments ago by the verify
// pass and a StoreSession reads them straight from blocks.dat without
// checking them again; otherwise every record is checked as it is read.
func openRecordReader(s Session, checked bool) (recordReader, error) {
	if a, ok := s.(*StoreSession); ok && a.S.Verified() {
		dat, err := os.Open(filepath.Join(a.S.Dir, snapstore.DataFile))
		if err != nil {
			return nil, err
		}
		r := &storeReader{dat: dat, src: dat, size: uint64(a.S.DataSize())}
		// Mapped, a record is a copy out of memory instead of a pread each
		// (a quarter of a million of them per GiB of 4 KiB chunks), and
		// prefetch can bring the file in ahead. Where blocks.dat cannot be
		// mapped it is read.
		if m, err := mmapio.Open(dat, a.S.DataSize()); err == nil {
			r.mapped, r.src = m, m
		}
		if checked {
			if r.crc, err = os.Open(filepath.Join(a.S.Dir, snapstore.CRCFile)); err != nil {
				r.close()
				return nil, err
			}
		}
		return r, nil
	}
	return sessionReader{s}, nil
}

// sessionReader reads through Session.ReadRecord, which checks.
type sessionReader struct{ s Session }

func (r sessionReader) readRecord(_ int64, rec Record, p []byte) error { return r.s.ReadRecord(rec, p) }
func (r sessionReader) close() error                                   { return nil }

// storeReader reads a dmsnap session's records by position: one read of
// blocks.dat per record (a copy out of its mapping, normally), and, when
// checking, the CRC from a window of blocks.crc (the write pass asks for a
// session's records in increasing position, so the window moves forward).
type storeReader struct {
	dat, crc *os.File
	mapped   *mmapio.Reader // blocks.dat mapped, or nil
	src      io.ReaderAt    // mapped, or dat where it could not be mapped
	size     uint64
	win      []byte
	winStart int64 // record index of win[0:4]
}

func (r *storeReader) readRecord(idx int64, rec Record, p []byte) error {
	if end := rec.Offset + uint64(rec.Size); end > r.size {
		return fmt.Errorf("%w: needs bytes %d-%d, but blocks.dat ends at %d", snapstore.ErrTruncated, rec.Offset, end-1, r.size)
	}
	if _, err := r.src.ReadAt(p, int64(rec.Offset)); err != nil {
		return fmt.Errorf("reading blocks.dat at byte %d: %w", rec.Offset, err)
	}
	if r.crc == nil {
		return nil
	}
	want, err := r.crcOf(idx)
	if err != nil {
		return err
	}
	if got := snapstore.ChecksumData(p); got != want {
		return fmt.Errorf("%w: pre-image has CRC-32C %08x, blocks.crc says %08x", snapstore.ErrChecksum, got, want)
	}
	return nil
}

func (r *storeReader) crcOf(idx int64) (uint32, error) {
	if idx < r.winStart || idx >= r.winStart+int64(len(r.win)/snapstore.CRCSize) {
		if r.win == nil {
			r.win = make([]byte, 64<<10)
		}
		n, err := r.crc.ReadAt(r.win[:cap(r.win)], idx*snapstore.CRCSize)
		if n < snapstore.CRCSize {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, fmt.Errorf("%w: no CRC for record %d in blocks.crc: %v", snapstore.ErrTruncated, idx, err)
		}
		r.win, r.winStart = r.win[:n/snapstore.CRCSize*snapstore.CRCSize], idx
	}
	i := (idx - r.winStart) * snapstore.CRCSize
	return binary.LittleEndian.Uint32(r.win[i:]), nil
}

func (r *storeReader) close() error {
	err := r.dat.Close()
	if r.mapped != nil {
		if merr := r.mapped.Close(); err == nil {
			err = merr
		}
	}
	if r.crc != nil {
		if cerr := r.crc.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// toPrefetch picks the readers of rs worth prefetching: store readers with
// a mapping whose session the plan uses enough of (readWhole in sum). A
// session the plan uses little of is better read record by record than
// whole.
func toPrefetch(rs []recordReader, sum Summary) []*storeReader {
	var srs []*storeReader
	for i, r := range rs {
		if sr, ok := r.(*storeReader); ok && sr.mapped != nil && sum.Sessions[i].readWhole() {
			srs = append(srs, sr)
		}
	}
	return srs
}

// prefetchStep is one read of prefetch.
const prefetchStep = 4 << 20

// prefetch reads the mapped blocks.dat of the sessions toPrefetch picks
// into memory on a goroutine of its own, session after session, each from
// start to end (MADV_POPULATE_READ, which also maps the pages; plain reads
// of the file where the kernel cannot do that), while the write pass
// copies the records out in device order: it finds them in memory instead
// of waiting on a read per fault. The returned function stops the goroutine
// and waits for it; call it before the readers close. Errors are left to
// the write pass, whose own reads report them.
func prefetch(rs []recordReader, sum Summary) (stop func()) {
	srs := toPrefetch(rs, sum)
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		var buf []byte // for plain reads
		for _, sr := range srs {
			size := sr.mapped.Size()
			for off := int64(0); off < size; off += prefetchStep {
				select {
				case <-quit:
					return
				default:
				}
				n := min(prefetchStep, size-off)
				if buf == nil && errors.Is(sr.mapped.Populate(off, n), mmapio.ErrNoPopulate) {
					buf = make([]byte, prefetchStep)
				}
				if buf != nil {
					sr.dat.ReadAt(buf[:n], off)
				}
			}
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}
