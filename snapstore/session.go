package snapstore

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
)

// Session is a finished session directory opened for reading: dmsnap's
// (verified by checksums) or the seed's (unverified).
type Session struct {
	Dir  string
	ID   string // directory name, <name>_<unix seconds>
	Meta Meta

	dat     *os.File
	datSize int64

	// For ReadRecord on a dmsnap session: blocks.map and blocks.crc opened
	// lazily, and the index after the last record found (restore reads in
	// map order, so the next lookup is usually that one).
	idxOnce  sync.Once
	idxErr   error
	mapFile  *os.File
	crcFile  *os.File
	mapCount int64
	hint     atomic.Int64
}

// Open opens the finished session in dir. It reads and checks meta.json
// (its self-checksum and version for dmsnap sessions) and opens blocks.dat.
// A directory without meta.json is ErrIncomplete: it is never read as if it
// were a session. Damage is a *FormatError (a missing blocks.dat too); a
// file the OS would not read wraps ErrCannotVerify (ClassifyReadError).
func Open(dir string) (*Session, error) {
	metaPath := filepath.Join(dir, MetaFile)
	b, err := os.ReadFile(metaPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", dir, ErrIncomplete)
	}
	if err != nil {
		return nil, ClassifyReadError(err)
	}
	m, err := ParseMeta(b, metaPath)
	if err != nil {
		return nil, err
	}
	dat, err := os.Open(filepath.Join(dir, DataFile))
	if err != nil {
		return nil, ClassifyReadError(err)
	}
	fi, err := dat.Stat()
	if err != nil {
		dat.Close()
		return nil, ClassifyReadError(err)
	}
	if !fi.Mode().IsRegular() {
		// A directory opens; only its first read would fail (EISDIR).
		dat.Close()
		return nil, formatErr(dat.Name(), -1, -1, ErrCorrupt, "not a regular file (%v)", fi.Mode().Type())
	}
	return &Session{Dir: dir, ID: filepath.Base(dir), Meta: m, dat: dat, datSize: fi.Size()}, nil
}

// Close closes the session's files.
func (s *Session) Close() error {
	err := s.dat.Close()
	for _, f := range []*os.File{s.mapFile, s.crcFile} {
		if f != nil {
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
	}
	return err
}

// Verified reports whether the session carries dmsnap's checksums. Seed
// sessions do not: they are readable and restorable, but unverified.
func (s *Session) Verified() bool { return s.Meta.Dmsnap != nil }

// Invalid reports whether dmsnap flagged the session invalid (the kernel
// dropped its snapshot, or its COW file was damaged): its pre-images may
// not cover every write of the session.
func (s *Session) Invalid() bool { return s.Meta.Dmsnap != nil && s.Meta.Dmsnap.State == StateInvalid }

// DataSize is the size of blocks.dat.
func (s *Session) DataSize() int64 { return s.datSize }

// Entry is one record as a reader sees it.
type Entry struct {
	Record
	Index  int64  // position in blocks.map
	CRC    uint32 // from blocks.crc; meaningful when HasCRC
	HasCRC bool
}

// Records returns an iterator over the records in sector order.
//
// For a dmsnap session it streams blocks.map and blocks.crc (memory does not
// grow with the session), checks on the way that records are sorted and do
// not overlap, lie inside blocks.dat, that the files have matching lengths,
// and at the end that both files' SHA-256 match meta.json — so a damaged
// file cannot pass silently, though damage is only reported when reached.
// Call Verify first to check everything before acting.
//
// For a seed session it reads the whole map, sorts it by sector (the seed
// wrote records in write order) and rejects overlapping records.
func (s *Session) Records() (*RecordIter, error) {
	mapPath := filepath.Join(s.Dir, MapFile)
	mf, err := os.Open(mapPath)
	if err != nil {
		return nil, err
	}
	it := &RecordIter{s: s, mapPath: mapPath}
	if !s.Verified() {
		defer mf.Close()
		recs, err := ReadMap(mf, mapPath)
		if err != nil {
			return nil, err
		}
		ir := make([]IndexedRecord, len(recs))
		for i, r := range recs {
			ir[i] = IndexedRecord{Record: r, Index: int64(i)}
		}
		if err := SortAndCheck(ir, mapPath); err != nil {
			return nil, err
		}
		it.sorted = ir
		return it, nil
	}
	crcPath := filepath.Join(s.Dir, CRCFile)
	cf, err := os.Open(crcPath)
	if err != nil {
		mf.Close()
		return nil, err
	}
	it.mapFile, it.crcFile = mf, cf
	it.crcPath = crcPath
	it.mapHash, it.crcHash = sha256.New(), sha256.New()
	it.mr = NewMapReader(io.TeeReader(mf, it.mapHash), mapPath)
	it.cr = newCRCReader(io.TeeReader(cf, it.crcHash), crcPath)
	return it, nil
}

// RecordIter yields a session's records in sector order.
type RecordIter struct {
	s       *Session
	mapPath string
	crcPath string

	// seed sessions
	sorted []IndexedRecord
	pos    int

	// dmsnap sessions
	mapFile, crcFile *os.File
	mr               *MapReader
	cr               *crcReader
	mapHash, crcHash hash.Hash
	prev             IndexedRecord
	n                int64
	done             bool
}

// Next returns the next record, or io.EOF after the last one.
func (it *RecordIter) Next() (Entry, error) {
	if it.sorted != nil || !it.s.Verified() {
		if it.pos >= len(it.sorted) {
			return Entry{}, io.EOF
		}
		r := it.sorted[it.pos]
		it.pos++
		if err := it.checkInData(r); err != nil {
			return Entry{}, err
		}
		return Entry{Record: r.Record, Index: r.Index}, nil
	}
	if it.done {
		return Entry{}, io.EOF
	}
	rec, idx, err := it.mr.Next()
	if err == io.EOF {
		return Entry{}, it.finish()
	}
	if err != nil {
		return Entry{}, err
	}
	c, err := it.cr.next()
	if err == io.EOF {
		return Entry{}, formatErr(it.crcPath, idx*CRCSize, idx, ErrTruncated, "no CRC for record %d of blocks.map", idx)
	}
	if err != nil {
		return Entry{}, err
	}
	cur := IndexedRecord{Record: rec, Index: idx}
	if idx > 0 {
		if err := checkNext(it.prev, cur, it.mapPath); err != nil {
			return Entry{}, err
		}
	}
	it.prev = cur
	it.n++
	if err := it.checkInData(cur); err != nil {
		return Entry{}, err
	}
	return Entry{Record: rec, Index: idx, CRC: c, HasCRC: true}, nil
}

// finish runs the end-of-file checks of a dmsnap session.
func (it *RecordIter) finish() error {
	it.done = true
	if _, err := it.cr.next(); err != io.EOF {
		if err != nil {
			return err
		}
		return formatErr(it.crcPath, it.n*CRCSize, it.n, ErrCorrupt, "more CRCs than blocks.map has records (%d)", it.n)
	}
	d := it.s.Meta.Dmsnap
	if got := hexSum(it.mapHash); got != d.Checksums.BlocksMap {
		return formatErr(it.mapPath, -1, -1, ErrChecksum, "SHA-256 is %s, meta.json says %s", got, d.Checksums.BlocksMap)
	}
	if got := hexSum(it.crcHash); got != d.Checksums.BlocksCRC {
		return formatErr(it.crcPath, -1, -1, ErrChecksum, "SHA-256 is %s, meta.json says %s", got, d.Checksums.BlocksCRC)
	}
	if it.n != it.s.Meta.TotalBlocksSaved {
		return formatErr(it.mapPath, -1, -1, ErrCorrupt, "has %d records, meta.json's total_blocks_saved says %d", it.n, it.s.Meta.TotalBlocksSaved)
	}
	return io.EOF
}

func (it *RecordIter) checkInData(r IndexedRecord) error {
	if end := r.Offset + uint64(r.Size); end > uint64(it.s.datSize) {
		return formatErr(filepath.Join(it.s.Dir, DataFile), int64(it.s.datSize), r.Index, ErrTruncated,
			"blocks.map record %d (sector %d) needs bytes %d-%d, but blocks.dat ends at %d: blocks.dat is cut short or the record is wrong",
			r.Index, r.Sector, r.Offset, end-1, it.s.datSize)
	}
	return nil
}

// Close releases the iterator's files.
func (it *RecordIter) Close() error {
	var err error
	if it.mapFile != nil {
		err = it.mapFile.Close()
	}
	if it.crcFile != nil {
		if cerr := it.crcFile.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// ReadData reads an entry's pre-image into buf (grown when too small) and
// checks its CRC when the session has one. A mismatch is ErrChecksum naming
// blocks.dat, the record, its sector and its chunk.
func (s *Session) ReadData(e Entry, buf []byte) ([]byte, error) {
	if cap(buf) < int(e.Size) {
		buf = make([]byte, e.Size)
	}
	buf = buf[:e.Size]
	datPath := filepath.Join(s.Dir, DataFile)
	if err := readFull(s.dat, buf, int64(e.Offset)); err != nil {
		if errors.Is(err, ErrTruncated) {
			return nil, formatErr(datPath, int64(e.Offset), e.Index, ErrTruncated, "sector %d: %v", e.Sector, err)
		}
		return nil, fmt.Errorf("%s: record %d (sector %d): %w", datPath, e.Index, e.Sector, err)
	}
	if e.HasCRC {
		if got := ChecksumData(buf); got != e.CRC {
			chunk := ""
			if d := s.Meta.Dmsnap; d != nil {
				chunk = fmt.Sprintf(", origin chunk %d", e.Start()/int64(d.ChunkSize))
			}
			return nil, formatErr(datPath, int64(e.Offset), e.Index, ErrChecksum,
				"pre-image of sector %d%s (%d bytes) has CRC-32C %08x, blocks.crc says %08x", e.Sector, chunk, e.Size, got, e.CRC)
		}
	}
	return buf, nil
}

// ReadRecord fills p (len(p) == r.Size) with the pre-image of r, a record
// of this session, checking its CRC-32C when the session has one: it finds
// r's position in the sorted blocks.map (the next one after the previous
// call first, else a binary search) and its CRC in blocks.crc, holding
// nothing in memory. It suits callers that carry plain Records, such as the
// restore planner. Safe for concurrent use.
func (s *Session) ReadRecord(r Record, p []byte) error {
	if len(p) != int(r.Size) {
		return fmt.Errorf("%s: read record at sector %d: buffer of %d bytes for %d", s.Dir, r.Sector, len(p), r.Size)
	}
	e := Entry{Record: r, Index: -1}
	if s.Verified() {
		var err error
		if e, err = s.lookup(r); err != nil {
			return err
		}
	}
	if end := r.Offset + uint64(r.Size); end > uint64(s.datSize) {
		return formatErr(filepath.Join(s.Dir, DataFile), int64(s.datSize), e.Index, ErrTruncated,
			"record at sector %d needs bytes %d-%d, but blocks.dat ends at %d", r.Sector, r.Offset, end-1, s.datSize)
	}
	_, err := s.ReadData(e, p)
	return err
}

// lookup finds r in the sorted blocks.map of a dmsnap session, with its CRC.
func (s *Session) lookup(r Record) (Entry, error) {
	s.idxOnce.Do(func() {
		mapPath := filepath.Join(s.Dir, MapFile)
		if s.mapFile, s.idxErr = os.Open(mapPath); s.idxErr != nil {
			return
		}
		if s.crcFile, s.idxErr = os.Open(filepath.Join(s.Dir, CRCFile)); s.idxErr != nil {
			return
		}
		fi, err := s.mapFile.Stat()
		if err != nil {
			s.idxErr = err
			return
		}
		if fi.Size()%RecordSize != 0 {
			s.idxErr = formatErr(mapPath, fi.Size()/RecordSize*RecordSize, fi.Size()/RecordSize, ErrTruncated,
				"file is %d bytes, not a multiple of %d", fi.Size(), RecordSize)
		}
		s.mapCount = fi.Size() / RecordSize
	})
	if s.idxErr != nil {
		return Entry{}, s.idxErr
	}
	mapPath := filepath.Join(s.Dir, MapFile)
	var buf [RecordSize]byte
	at := func(i int64) (Record, error) {
		if err := readFull(s.mapFile, buf[:], i*RecordSize); err != nil {
			return Record{}, fmt.Errorf("%s: record %d: %w", mapPath, i, err)
		}
		return ParseRecord(buf[:]), nil
	}
	idx := int64(-1)
	if h := s.hint.Load(); h < s.mapCount {
		if rec, err := at(h); err == nil && rec == r {
			idx = h
		}
	}
	if idx < 0 {
		lo, hi := int64(0), s.mapCount // first index whose sector >= r.Sector
		for lo < hi {
			mid := lo + (hi-lo)/2
			rec, err := at(mid)
			if err != nil {
				return Entry{}, err
			}
			if rec.Sector < r.Sector {
				lo = mid + 1
			} else {
				hi = mid
			}
		}
		if lo < s.mapCount {
			if rec, err := at(lo); err != nil {
				return Entry{}, err
			} else if rec == r {
				idx = lo
			}
		}
	}
	if idx < 0 {
		return Entry{}, formatErr(mapPath, -1, -1, ErrCorrupt,
			"no record {sector %d, size %d, offset %d} in this session", r.Sector, r.Size, r.Offset)
	}
	s.hint.Store(idx + 1)
	var c [CRCSize]byte
	if err := readFull(s.crcFile, c[:], idx*CRCSize); err != nil {
		return Entry{}, formatErr(filepath.Join(s.Dir, CRCFile), idx*CRCSize, idx, ErrTruncated, "no CRC for record %d: %v", idx, err)
	}
	return Entry{Record: r, Index: idx, CRC: binary.LittleEndian.Uint32(c[:]), HasCRC: true}, nil
}

// AllEntries reads every record in sector order (memory grows with the
// session: for tools and tests, not for restore).
func (s *Session) AllEntries() ([]Entry, error) {
	it, err := s.Records()
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []Entry
	for {
		e, err := it.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, e)
	}
}
