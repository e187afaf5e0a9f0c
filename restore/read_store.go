package restore

import (
	"bufio"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/dmsnap/dmsnap/internal/crc32c"
	"github.com/dmsnap/dmsnap/snapstore"
	"golang.org/x/sys/unix"
)

// Reading a store session's pre-images fast. A session of layout cow keeps
// its chunks in blocks.dat in the order the kernel first copied them, so
// reading its records in sector order (the plan's order) means reading
// blocks.dat at random offsets. The verify pass instead reads blocks.dat in
// file order (StoreSession.checkInStorageOrder), in large sequential reads,
// which also brings the data into the page cache for the write pass.

// segRecords bounds the records a storage-order check holds at once:
// blocks.dat is checked one segment of segRecords chunks at a time, and the
// map is streamed once per segment. (A variable so tests can shrink it.)
var segRecords = 1 << 16

const (
	// storageReadBlock is one read of a storage-order check;
	// storageReadAhead reads are in flight or being checked at once.
	storageReadBlock = 1 << 20
	storageReadAhead = 6
	// storageWorkers goroutines checksum the blocks read (CRC-32C is the
	// CPU's share of the check; a software-emulated CPU is slow at it).
	storageWorkers = 2
	// storageGap: holes between records up to this size are read through,
	// so neighbouring records come in one read.
	storageGap = 256 << 10
)

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

// storedRec is a record with its position in blocks.map and its CRC.
type storedRec struct {
	rec Record
	idx int64
	crc uint32
}

// checkInStorageOrder implements storageOrderChecker for a session dmsnap
// wrote (with blocks.crc): for each segment of blocks.dat holding at most
// segRecords chunks it streams blocks.map and blocks.crc, keeps the records
// inside the segment, sorts them by offset and reads them in large
// sequential reads while it checks their CRC-32C. A seed session (no
// checksums) is not done here. blocks.map and blocks.crc themselves are
// checked by Records (their SHA-256), which the plan has called before.
func (a *StoreSession) checkInStorageOrder(ctx context.Context, add func(uint64), bad func(int64, Record, error) bool) (bool, error) {
	d := a.S.Meta.Dmsnap
	if !a.S.Verified() || d == nil || d.ChunkSize == 0 {
		return false, nil
	}
	dat, err := os.Open(filepath.Join(a.S.Dir, snapstore.DataFile))
	if err != nil {
		return false, err
	}
	defer dat.Close()
	unix.Fadvise(int(dat.Fd()), 0, 0, unix.FADV_SEQUENTIAL) // a hint
	span := uint64(segRecords) * uint64(d.ChunkSize)
	size := uint64(a.S.DataSize())
	var recs []storedRec
	for lo := uint64(0); lo < size; lo += span {
		if recs, err = a.segment(recs[:0], lo, lo+span); err != nil {
			if errors.Is(err, errSegmentFull) {
				return false, nil
			}
			return false, err
		}
		if len(recs) == 0 {
			continue
		}
		slices.SortFunc(recs, func(x, y storedRec) int { return cmp.Compare(x.rec.Offset, y.rec.Offset) })
		if !checkSorted(ctx, dat, recs, add, bad) {
			return true, ctx.Err()
		}
		if err := ctx.Err(); err != nil {
			return false, err
		}
	}
	return true, nil
}

var errSegmentFull = errors.New("more records than chunks in a segment of blocks.dat")

// segment appends to recs every record whose offset is in [lo, hi).
func (a *StoreSession) segment(recs []storedRec, lo, hi uint64) ([]storedRec, error) {
	mf, err := os.Open(filepath.Join(a.S.Dir, snapstore.MapFile))
	if err != nil {
		return recs, err
	}
	defer mf.Close()
	cf, err := os.Open(filepath.Join(a.S.Dir, snapstore.CRCFile))
	if err != nil {
		return recs, err
	}
	defer cf.Close()
	mr, cr := bufio.NewReaderSize(mf, 256<<10), bufio.NewReaderSize(cf, 64<<10)
	var rb [snapstore.RecordSize]byte
	var cb [snapstore.CRCSize]byte
	for idx := int64(0); ; idx++ {
		if _, err := io.ReadFull(mr, rb[:]); err != nil {
			if err == io.EOF {
				return recs, nil
			}
			return recs, fmt.Errorf("%s: record %d: %w", mf.Name(), idx, err)
		}
		if _, err := io.ReadFull(cr, cb[:]); err != nil {
			return recs, fmt.Errorf("%s: CRC %d: %w", cf.Name(), idx, err)
		}
		r := snapstore.ParseRecord(rb[:])
		if r.Offset < lo || r.Offset >= hi || r.Size == 0 {
			continue
		}
		if len(recs) >= 2*segRecords {
			return recs, errSegmentFull
		}
		recs = append(recs, storedRec{rec: Record{Sector: r.Sector, Size: r.Size, Offset: r.Offset}, idx: idx, crc: binary.LittleEndian.Uint32(cb[:])})
	}
}

// checkSorted reads the records (sorted by offset) from dat in blocks of
// whole records of up to storageReadBlock bytes (holes of up to storageGap
// read through): a goroutine keeps the next reads in flight while
// storageWorkers goroutines checksum the blocks read, and this one reports.
// It returns false when bad asked to stop or ctx ended. A record larger
// than a block is read on its own, into a buffer of its size.
func checkSorted(ctx context.Context, dat io.ReaderAt, recs []storedRec, add func(uint64), bad func(int64, Record, error) bool) bool {
	type block struct {
		off    uint64
		p      []byte
		lo, hi int // recs[lo:hi] lie in the block
		err    error
	}
	type failure struct {
		i   int
		err error
	}
	type result struct {
		bytes uint64
		bad   []failure
	}
	free := make(chan []byte, storageReadAhead)
	full := make(chan block, storageReadAhead)
	results := make(chan result, storageReadAhead)
	for range storageReadAhead {
		free <- make([]byte, storageReadBlock)
	}
	stop := make(chan struct{})
	go func() {
		defer close(full)
		for lo := 0; lo < len(recs); {
			start, end := recs[lo].rec.Offset, recs[lo].rec.Offset+uint64(recs[lo].rec.Size)
			hi := lo + 1
			for hi < len(recs) {
				r := recs[hi].rec
				e := max(end, r.Offset+uint64(r.Size))
				if r.Offset > end+storageGap || e-start > storageReadBlock {
					break
				}
				end, hi = e, hi+1
			}
			var b []byte
			select {
			case b = <-free:
			case <-stop:
				return
			}
			if end-start > uint64(len(b)) {
				b = make([]byte, end-start) // one record larger than a block
			}
			n, err := dat.ReadAt(b[:end-start], int64(start))
			if err == io.EOF && uint64(n) == end-start {
				err = nil
			} else if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			if err != nil {
				err = fmt.Errorf("reading blocks.dat at byte %d: %w", start, err)
			}
			full <- block{off: start, p: b[:end-start], lo: lo, hi: hi, err: err}
			lo = hi
		}
	}()
	done := make(chan struct{})
	for range storageWorkers {
		go func() {
			defer func() { done <- struct{}{} }()
			for b := range full {
				var res result
				for i := b.lo; i < b.hi; i++ {
					r := recs[i].rec
					if b.err != nil {
						res.bad = append(res.bad, failure{i, b.err})
						continue
					}
					res.bytes += uint64(r.Size)
					at := r.Offset - b.off
					if got := crc32c.Checksum(b.p[at : at+uint64(r.Size)]); got != recs[i].crc {
						res.bad = append(res.bad, failure{i, fmt.Errorf("%w: pre-image has CRC-32C %08x, blocks.crc says %08x", snapstore.ErrChecksum, got, recs[i].crc)})
					}
				}
				if len(b.p) <= storageReadBlock {
					free <- b.p[:storageReadBlock]
				} else {
					free <- make([]byte, storageReadBlock)
				}
				results <- res
			}
		}()
	}
	go func() {
		for range storageWorkers {
			<-done
		}
		close(results)
	}()
	ok := true
	for res := range results {
		if !ok {
			continue // drain
		}
		add(res.bytes)
		for _, f := range res.bad {
			if !bad(recs[f.i].idx, recs[f.i].rec, f.err) {
				ok = false
				break
			}
		}
		if ok && ctx.Err() != nil {
			ok = false
		}
		if !ok {
			close(stop)
		}
	}
	return ok && ctx.Err() == nil
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
	if got := crc32c.Checksum(p); got != want {
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
