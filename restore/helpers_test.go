package restore

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
)

// memSession is a session held in memory: its records in sector order and
// its blocks.dat. Records listed in bad fail ReadRecord like a CRC mismatch.
type memSession struct {
	id   string
	recs []Record
	dat  []byte
	bad  map[uint64]bool // by record Offset

	mu        sync.Mutex
	opens     int
	closes    int
	reads     int
	openErr   error
	nextErrAt int // when > 0, Next fails at this record index
}

var errCRC = errors.New("CRC-32C mismatch")

func (s *memSession) ID() string { return s.id }

func (s *memSession) Records() (RecordIter, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.openErr != nil {
		return nil, s.openErr
	}
	s.opens++
	return &memIter{s: s}, nil
}

func (s *memSession) ReadRecord(r Record, p []byte) error {
	s.mu.Lock()
	s.reads++
	s.mu.Unlock()
	if len(p) != int(r.Size) {
		return fmt.Errorf("ReadRecord: buffer of %d bytes for a %d-byte record", len(p), r.Size)
	}
	if r.Offset+uint64(r.Size) > uint64(len(s.dat)) {
		return fmt.Errorf("record at offset %d past the end of blocks.dat", r.Offset)
	}
	if s.bad[r.Offset] {
		return errCRC
	}
	copy(p, s.dat[r.Offset:])
	return nil
}

type memIter struct {
	s *memSession
	i int
}

func (it *memIter) Next() (Record, error) {
	if it.s.nextErrAt > 0 && it.i == it.s.nextErrAt {
		return Record{}, errors.New("blocks.map: read error")
	}
	if it.i >= len(it.s.recs) {
		return Record{}, io.EOF
	}
	it.i++
	return it.s.recs[it.i-1], nil
}

func (it *memIter) Close() error {
	it.s.mu.Lock()
	it.s.closes++
	it.s.mu.Unlock()
	return nil
}

// newMemSession builds a session from records given by position only:
// it assigns blocks.dat offsets in a shuffled order (so offsets do not follow
// sectors, as in a COW file) and fills blocks.dat with random bytes.
func newMemSession(rng *rand.Rand, id string, recs []Record) *memSession {
	order := rng.Perm(len(recs))
	var off uint64
	for _, i := range order {
		recs[i].Offset = off
		off += uint64(recs[i].Size)
	}
	dat := make([]byte, off)
	for i := range dat {
		dat[i] = byte(rng.Uint32())
	}
	return &memSession{id: id, recs: recs, dat: dat}
}

// randomRecords returns a random, sorted, non-overlapping record set within
// devSize bytes, in one of the shapes sessions really have: dm-snapshot
// chunks (chunk-aligned, one chunk size), the seed's 4 KiB blocks at any
// sector, or arbitrary sizes that are not sector multiples.
func randomRecords(rng *rand.Rand, devSize uint64) []Record {
	var recs []Record
	density := rng.Float64()
	switch rng.IntN(3) {
	case 0: // chunk-aligned, one chunk size per session
		chunk := uint64(512) << rng.IntN(8) // 512 B .. 64 KiB
		for pos := uint64(0); pos+chunk <= devSize; pos += chunk {
			if rng.Float64() < density {
				recs = append(recs, Record{Sector: pos / SectorSize, Size: uint32(chunk)})
			}
		}
	case 1: // seed-like 4 KiB blocks at arbitrary sectors
		for pos := uint64(rng.IntN(16)) * SectorSize; pos+4096 <= devSize; {
			if rng.Float64() < density {
				recs = append(recs, Record{Sector: pos / SectorSize, Size: 4096})
				pos += 4096
			}
			pos += uint64(rng.IntN(24)) * SectorSize
			if rng.IntN(4) == 0 {
				pos += SectorSize // avoid getting stuck
			}
		}
	default: // arbitrary sizes, some not sector multiples
		for pos := uint64(0); ; {
			pos += uint64(rng.IntN(8)) * SectorSize
			size := uint64(1 + rng.IntN(9000))
			if pos+size > devSize {
				break
			}
			if rng.Float64() < density {
				recs = append(recs, Record{Sector: pos / SectorSize, Size: uint32(size)})
			}
			// next record starts on a sector at or after this one's end
			pos = (pos + size + SectorSize - 1) / SectorSize * SectorSize
		}
	}
	return recs
}

// modelRestore is the oracle: apply every session's pre-images onto dev,
// newest session first, so that the oldest session's bytes land last.
func modelRestore(dev []byte, sessions []*memSession) []byte {
	out := slices.Clone(dev)
	for i := len(sessions) - 1; i >= 0; i-- {
		s := sessions[i]
		for _, r := range s.recs {
			copy(out[r.Start():r.End()], s.dat[r.Offset:r.Offset+uint64(r.Size)])
		}
	}
	return out
}

// memTarget is an io.WriterAt over a byte slice that logs its writes and
// refuses writes past its end.
type memTarget struct {
	b      []byte
	writes []memWrite
	syncs  int
	// failAt, when > 0, makes the failAt-th write fail.
	failAt int
	// onWrite, when set, is called before each write.
	onWrite func()
}

type memWrite struct{ off, n int64 }

var errWrite = errors.New("I/O error")

func (t *memTarget) WriteAt(p []byte, off int64) (int, error) {
	if t.onWrite != nil {
		t.onWrite()
	}
	if t.failAt > 0 && len(t.writes)+1 == t.failAt {
		return 0, errWrite
	}
	if off < 0 || off+int64(len(p)) > int64(len(t.b)) {
		return 0, fmt.Errorf("write [%d, %d) past the end (%d)", off, off+int64(len(p)), len(t.b))
	}
	t.writes = append(t.writes, memWrite{off, int64(len(p))})
	copy(t.b[off:], p)
	return len(p), nil
}

func (t *memTarget) Sync() error { t.syncs++; return nil }

func asSessions(ms []*memSession) []Session {
	out := make([]Session, len(ms))
	for i, m := range ms {
		out[i] = m
	}
	return out
}

func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// collect returns all extents of the plan.
func collect(p *Plan) ([]Extent, error) {
	it, err := p.Extents()
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []Extent
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
