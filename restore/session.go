package restore

import (
	"io"

	"github.com/dmsnap/dmsnap/snapstore"
)

// SectorSize is the unit of Record.Sector (snapstore.SectorSize): blocks.map
// positions are in 512-byte sectors whatever the device's logical block size.
const SectorSize = snapstore.SectorSize

// Record is one blocks.map record, snapstore.Record under the name the
// planner's interfaces use: Size bytes of pre-image for the device bytes
// [Start(), End()), stored at byte Offset of the session's blocks.dat. The
// planner refuses a record whose End would not fit an int64 before it asks
// for either.
type Record = snapstore.Record

// Session is one closed session as the planner sees it.
type Session interface {
	// ID names the session in messages, e.g. "sdb1_1700000000".
	ID() string
	// Records opens a fresh iterator over the session's records in
	// ascending sector order. The planner calls it once per pass (summary,
	// verify, write) and closes every iterator it opens.
	Records() (RecordIter, error)
	// ReadRecord fills p (len(p) == int(r.Size)) with the record's
	// pre-image, checking its integrity where the session records checksums,
	// and fails when the bytes are damaged or missing. r is a record that
	// Records returned.
	ReadRecord(r Record, p []byte) error
}

// RecordIter yields a session's records. Records must come in ascending
// sector order and must not overlap; the planner checks both and fails with
// a *SessionError otherwise (readers of the seed's write-ordered maps sort
// them first).
type RecordIter interface {
	// Next returns the next record, or io.EOF after the last one.
	Next() (Record, error)
	Close() error
}

// SliceRecords is a RecordIter over records held in memory, for adapters
// that have read (and sorted) a whole map, and for tests.
type SliceRecords struct {
	Recs []Record
	i    int
}

// Next implements RecordIter.
func (s *SliceRecords) Next() (Record, error) {
	if s.i >= len(s.Recs) {
		return Record{}, io.EOF
	}
	s.i++
	return s.Recs[s.i-1], nil
}

// Close implements RecordIter.
func (s *SliceRecords) Close() error { return nil }
