package restore

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/dmsnap/dmsnap/snapstore"
)

// Reading a store session's pre-images fast. A session of layout cow keeps
// its chunks in blocks.dat in the order the kernel first copied them, so
// reading its records in sector order (the plan's order) means reading
// blocks.dat at random offsets. The verify pass instead reads blocks.dat in
// file order (snapstore's Session.CheckInStorageOrder), in large sequential
// reads, which also brings the data into the page cache for the write pass.

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
	return a.S.CheckInStorageOrder(ctx, add, func(idx int64, r snapstore.Record, err error) bool {
		return bad(idx, Record{Sector: r.Sector, Size: r.Size, Offset: r.Offset}, err)
	})
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
// pass and a StoreSession reads them straight from blocks.dat (from the
// page cache, normally) without checking them again; otherwise every record
// is checked as it is read.
func openRecordReader(s Session, checked bool) (recordReader, error) {
	if a, ok := s.(*StoreSession); ok && a.S.Verified() {
		dat, err := os.Open(filepath.Join(a.S.Dir, snapstore.DataFile))
		if err != nil {
			return nil, err
		}
		r := &storeReader{dat: dat, size: uint64(a.S.DataSize())}
		if checked {
			if r.crc, err = os.Open(filepath.Join(a.S.Dir, snapstore.CRCFile)); err != nil {
				dat.Close()
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
// blocks.dat per record, and, when checking, the CRC from a window of
// blocks.crc (the write pass asks for a session's records in increasing
// position, so the window moves forward).
type storeReader struct {
	dat, crc *os.File
	size     uint64
	win      []byte
	winStart int64 // record index of win[0:4]
}

func (r *storeReader) readRecord(idx int64, rec Record, p []byte) error {
	if end := rec.Offset + uint64(rec.Size); end > r.size {
		return fmt.Errorf("%w: needs bytes %d-%d, but blocks.dat ends at %d", snapstore.ErrTruncated, rec.Offset, end-1, r.size)
	}
	if _, err := r.dat.ReadAt(p, int64(rec.Offset)); err != nil {
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
	if r.crc != nil {
		if cerr := r.crc.Close(); err == nil {
			err = cerr
		}
	}
	return err
}
