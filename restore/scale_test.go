package restore

import (
	"context"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// synthSession generates its records instead of holding them: n records
// of size bytes, one every stride bytes from byte first, stored back to
// back in blocks.dat. It lets a test build plans of millions of chunks
// whose only memory is the planner's own.
type synthSession struct {
	id            string
	n             int64
	first, stride uint64
	size          uint32
	pattern       []byte // ReadRecord's bytes; at least size long
	onRead        func() // called on every ReadRecord, when set
}

func (s *synthSession) ID() string { return s.id }

func (s *synthSession) Records() (RecordIter, error) { return &synthIter{s: s}, nil }

func (s *synthSession) record(i int64) Record {
	return Record{Sector: (s.first + uint64(i)*s.stride) / SectorSize, Size: s.size, Offset: uint64(i) * uint64(s.size)}
}

func (s *synthSession) ReadRecord(r Record, p []byte) error {
	if s.onRead != nil {
		s.onRead()
	}
	copy(p, s.pattern)
	return nil
}

type synthIter struct {
	s *synthSession
	i int64
}

func (it *synthIter) Next() (Record, error) {
	if it.i >= it.s.n {
		return Record{}, io.EOF
	}
	it.i++
	return it.s.record(it.i - 1), nil
}

func (it *synthIter) Close() error { return nil }

// discard is an io.WriterAt that drops what it is given.
type discard struct{ bytes uint64 }

func (d *discard) WriteAt(p []byte, off int64) (int, error) {
	d.bytes += uint64(len(p))
	return len(p), nil
}

// scaleSessions returns three sessions with chunks records in all, of
// different sizes and overlapping: 512-byte records every 2 KiB, 1 KiB
// records every 2 KiB shifted by 512 bytes, 2 KiB records everywhere.
func scaleSessions(chunks int64, onRead func()) []Session {
	n := chunks / 3
	pattern := make([]byte, 2048)
	for i := range pattern {
		pattern[i] = byte(i*7 + 1)
	}
	return []Session{
		&synthSession{id: "s0", n: n, first: 0, stride: 2048, size: 512, pattern: pattern, onRead: onRead},
		&synthSession{id: "s1", n: n, first: 512, stride: 2048, size: 1024, pattern: pattern, onRead: onRead},
		&synthSession{id: "s2", n: n, first: 0, stride: 2048, size: 2048, pattern: pattern, onRead: onRead},
	}
}

type memUse struct {
	mallocs    uint64 // heap objects allocated during the run
	totalAlloc uint64 // bytes allocated during the run
	peak       int64  // highest sampled live heap above the start
	bytes      uint64 // bytes the plan wrote
}

// measureApply runs a full Apply (summary, verify and write passes) over a
// plan of chunks records and measures the heap: allocation counts over the
// run, and the live heap sampled every 4096 record reads.
func measureApply(t *testing.T, chunks int64) memUse {
	var ms runtime.MemStats
	var base uint64
	var peak int64
	reads := 0
	sample := func() {
		reads++
		if reads%4096 != 0 {
			return
		}
		runtime.ReadMemStats(&ms)
		peak = max(peak, int64(ms.HeapAlloc)-int64(base))
	}
	p, err := NewPlan(scaleSessions(chunks, sample))
	if err != nil {
		t.Fatal(err)
	}
	dst := &discard{}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	base = before.HeapAlloc
	res, err := p.Apply(context.Background(), dst, ApplyOptions{})
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if res.Summary.Sessions[0].Records+res.Summary.Sessions[1].Records+res.Summary.Sessions[2].Records != chunks/3*3 {
		t.Fatalf("plan over %d chunks, summary %+v", chunks, res.Summary)
	}
	return memUse{
		mallocs:    after.Mallocs - before.Mallocs,
		totalAlloc: after.TotalAlloc - before.TotalAlloc,
		peak:       peak,
		bytes:      dst.bytes,
	}
}

// TestMemoryDoesNotGrowWithChunks: applying a plan of 1M chunks allocates
// no more, and holds no more live heap, than one of 10k chunks, up to a
// constant. Planning keeps one record per session and apply one buffer.
func TestMemoryDoesNotGrowWithChunks(t *testing.T) {
	small := measureApply(t, 10_000)
	large := measureApply(t, 1_000_000)
	t.Logf("10k chunks: %d mallocs, %d bytes allocated, live heap peak +%d, %d bytes written", small.mallocs, small.totalAlloc, small.peak, small.bytes)
	t.Logf("1M chunks:  %d mallocs, %d bytes allocated, live heap peak +%d, %d bytes written", large.mallocs, large.totalAlloc, large.peak, large.bytes)
	if large.bytes < 100*small.bytes {
		t.Fatalf("the large plan wrote %d bytes, the small %d: not 100 times more work", large.bytes, small.bytes)
	}
	// ReadMemStats itself and the runtime may allocate a little; 100
	// times the chunks must not mean more than a few hundred objects.
	if large.mallocs > small.mallocs+500 {
		t.Errorf("allocations grow with chunks: %d for 10k, %d for 1M", small.mallocs, large.mallocs)
	}
	if large.totalAlloc > small.totalAlloc+256<<10 {
		t.Errorf("allocated bytes grow with chunks: %d for 10k, %d for 1M", small.totalAlloc, large.totalAlloc)
	}
	if large.peak > small.peak+1<<20 {
		t.Errorf("live heap grows with chunks: peak +%d for 10k, +%d for 1M", small.peak, large.peak)
	}
}

// fileSession is a session whose pre-images live in a blocks.dat file and
// are checked against a CRC-32C per record on every read, as a snapstore
// reader does. Its records are generated like synthSession's.
type fileSession struct {
	synthSession
	dat *os.File
	crc []uint32
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func (s *fileSession) Records() (RecordIter, error) { return &synthIter{s: &s.synthSession}, nil }

func (s *fileSession) ReadRecord(r Record, p []byte) error {
	if _, err := s.dat.ReadAt(p, int64(r.Offset)); err != nil {
		return err
	}
	i := r.Offset / uint64(s.size)
	if crc32.Checksum(p, castagnoli) != s.crc[i] {
		return fmt.Errorf("CRC-32C mismatch")
	}
	return nil
}

// newFileSession writes blocks.dat for n records of size bytes every stride
// bytes from first.
func newFileSession(b *testing.B, dir, id string, n int64, first, stride uint64, size uint32) *fileSession {
	s := &fileSession{synthSession: synthSession{id: id, n: n, first: first, stride: stride, size: size}}
	f, err := os.Create(filepath.Join(dir, id+".dat"))
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, size)
	s.crc = make([]uint32, n)
	for i := range n {
		for j := range buf {
			buf[j] = byte(uint64(i)*31 + uint64(j)*7 + uint64(size))
		}
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
		s.crc[i] = crc32.Checksum(buf, castagnoli)
	}
	s.dat = f
	b.Cleanup(func() { f.Close() })
	return s
}

// BenchmarkApply applies a three-session plan of 64 MiB (1 GiB with
// DMSNAP_BENCH_GIB=1) to a file: 4 KiB records on every other block, 16 KiB
// chunks on every other 16 KiB, and 64 KiB chunks everywhere, read from
// blocks.dat files with CRC checks. MB/s is plan bytes written per second.
func BenchmarkApply(b *testing.B) {
	total := uint64(64 << 20)
	if os.Getenv("DMSNAP_BENCH_GIB") == "1" {
		total = 1 << 30
	}
	dir := b.TempDir()
	sessions := []Session{
		newFileSession(b, dir, "s0", int64(total/8192), 0, 8192, 4096),
		newFileSession(b, dir, "s1", int64(total/32768), 0, 32768, 16384),
		newFileSession(b, dir, "s2", int64(total/65536), 0, 65536, 65536),
	}
	p, err := NewPlan(sessions)
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		opts ApplyOptions
	}{
		{"verify/buf=1MiB", ApplyOptions{}},
		{"noverify/buf=256KiB", ApplyOptions{SkipVerify: true, BufferSize: 256 << 10}},
		{"noverify/buf=1MiB", ApplyOptions{SkipVerify: true}},
		{"noverify/buf=4MiB", ApplyOptions{SkipVerify: true, BufferSize: 4 << 20}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			dst, err := os.Create(filepath.Join(dir, "target.img"))
			if err != nil {
				b.Fatal(err)
			}
			defer dst.Close()
			if err := dst.Truncate(int64(total)); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(total))
			b.ReportAllocs()
			for b.Loop() {
				res, err := p.Apply(context.Background(), dst, bc.opts)
				if err != nil {
					b.Fatal(err)
				}
				if res.Bytes != total {
					b.Fatalf("wrote %d bytes, want %d", res.Bytes, total)
				}
			}
		})
	}
}
