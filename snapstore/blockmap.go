package snapstore

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// blocks.map (FORMAT.md, "blocks.map"): packed little-endian records, no
// header, no padding — the seed's struct snapshot_rec, __packed.
const (
	// RecordSize is the size of one blocks.map record.
	RecordSize = 20
	// recSectorOff, recSizeOff, recOffsetOff are the field offsets in a record.
	recSectorOff = 0  // u64 sector: origin position in 512-byte sectors
	recSizeOff   = 8  // u32 size: bytes of the pre-image
	recOffsetOff = 12 // u64 offset: byte offset of the pre-image in blocks.dat

	// maxSector keeps Sector*SectorSize + Size inside an int64.
	maxSector = (1<<63 - 1 - (1<<32 - 1)) / SectorSize

	// MaxRecordSize is the largest record a reader accepts (64 MiB): a
	// restore holds a record whole in memory, and the seed's restore tool
	// refuses larger ones too. dmsnap's own records are one chunk, at most
	// 512 KiB; a larger one means a damaged or forged map, and it must be
	// found by verification, not by a restore that has begun writing.
	MaxRecordSize = 64 << 20
)

// Record is one blocks.map record: Size bytes of pre-image for the origin
// bytes starting at Sector*512, stored at byte Offset of blocks.dat.
type Record struct {
	Sector uint64
	Size   uint32
	Offset uint64
}

// Start is the record's first origin byte, Sector*SectorSize. It is exact
// for a record whose End fits an int64, as for every record MapReader
// returns (it refuses a sector past maxSector) and every record the
// restore planner accepts (it refuses one ending past math.MaxInt64); an
// int64 is what io.ReaderAt and io.WriterAt take.
func (r Record) Start() int64 { return int64(r.Sector) * SectorSize }

// End is one past the record's last origin byte, Start()+Size, under the
// same condition as Start.
func (r Record) End() int64 { return r.Start() + int64(r.Size) }

// Append appends the record's 20 bytes to b.
func (r Record) Append(b []byte) []byte {
	le := binary.LittleEndian
	b = le.AppendUint64(b, r.Sector)
	b = le.AppendUint32(b, r.Size)
	return le.AppendUint64(b, r.Offset)
}

// ParseRecord decodes one record from the first RecordSize bytes of b.
func ParseRecord(b []byte) Record {
	le := binary.LittleEndian
	return Record{
		Sector: le.Uint64(b[recSectorOff:]),
		Size:   le.Uint32(b[recSizeOff:]),
		Offset: le.Uint64(b[recOffsetOff:]),
	}
}

// check reports what is wrong with a record on its own, or "" when nothing.
func (r Record) check() string {
	switch {
	case r.Size == 0:
		return "size is 0"
	case r.Size > MaxRecordSize:
		return fmt.Sprintf("size %d bytes is more than a record may hold (%d, 64 MiB): no restore can write it", r.Size, MaxRecordSize)
	case r.Sector > maxSector:
		return fmt.Sprintf("sector %d is out of range", r.Sector)
	case r.Offset > 1<<63-1-uint64(r.Size):
		return fmt.Sprintf("offset %d is out of range", r.Offset)
	}
	return ""
}

// MapReader reads blocks.map records one at a time, checking each on its
// own (size from 1 byte to MaxRecordSize, no overflowing sector or
// offset). Order and overlaps are the caller's business: see CheckSorted
// and SortAndCheck.
type MapReader struct {
	r    *bufio.Reader
	name string
	n    int64
	buf  [RecordSize]byte
}

// NewMapReader reads records from r; name is used in error messages.
func NewMapReader(r io.Reader, name string) *MapReader {
	return &MapReader{r: bufio.NewReaderSize(r, 64<<10), name: name}
}

// Next returns the next record and its index, or io.EOF after the last one.
// A file that ends inside a record, or a record that is wrong on its own,
// yields a *FormatError.
func (m *MapReader) Next() (Record, int64, error) {
	off := m.n * RecordSize
	k, err := io.ReadFull(m.r, m.buf[:])
	switch {
	case err == io.EOF:
		return Record{}, m.n, io.EOF
	case errors.Is(err, io.ErrUnexpectedEOF):
		return Record{}, m.n, formatErr(m.name, off, m.n, ErrTruncated,
			"file ends %d bytes into a %d-byte record (size is not a multiple of %d)", k, RecordSize, RecordSize)
	case err != nil:
		return Record{}, m.n, fmt.Errorf("%s: read record %d: %w", m.name, m.n, err)
	}
	rec := ParseRecord(m.buf[:])
	if msg := rec.check(); msg != "" {
		return rec, m.n, formatErr(m.name, off, m.n, ErrCorrupt, "%s", msg)
	}
	m.n++
	return rec, m.n - 1, nil
}

// ReadMap reads a whole blocks.map in file order.
func ReadMap(r io.Reader, name string) ([]Record, error) {
	m := NewMapReader(r, name)
	var recs []Record
	for {
		rec, _, err := m.Next()
		if err == io.EOF {
			return recs, nil
		}
		if err != nil {
			return recs, err
		}
		recs = append(recs, rec)
	}
}

// EncodeMap returns the bytes of a blocks.map holding recs in the given order.
func EncodeMap(recs []Record) []byte {
	b := make([]byte, 0, len(recs)*RecordSize)
	for _, r := range recs {
		b = r.Append(b)
	}
	return b
}

// IndexedRecord is a record with its position in blocks.map.
type IndexedRecord struct {
	Record
	Index int64
}

// SortAndCheck sorts records by sector (stable, so equal sectors keep file
// order) and rejects overlapping ones, naming both records. It is what a
// reader does with a seed session, whose records are in write order.
func SortAndCheck(recs []IndexedRecord, name string) error {
	slices.SortStableFunc(recs, func(a, b IndexedRecord) int { return cmp.Compare(a.Sector, b.Sector) })
	for i := 1; i < len(recs); i++ {
		if err := checkNext(recs[i-1], recs[i], name); err != nil {
			return err
		}
	}
	return nil
}

// checkNext reports cur overlapping or preceding prev, for records that
// must be in sector order.
func checkNext(prev, cur IndexedRecord, name string) error {
	if cur.Start() < prev.End() {
		kind := "overlaps"
		if cur.Sector < prev.Sector {
			kind = "comes before"
		}
		return formatErr(name, cur.Index*RecordSize, cur.Index, ErrCorrupt,
			"sector %d (bytes %d-%d) %s record %d (sector %d, bytes %d-%d)",
			cur.Sector, cur.Start(), cur.End()-1, kind, prev.Index, prev.Sector, prev.Start(), prev.End()-1)
	}
	return nil
}
