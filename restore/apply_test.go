package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"

	"github.com/dmsnap/dmsnap/snapstore"
)

// threeSessions builds a small chain with overlaps of different chunk
// sizes over a devSize-byte device.
func threeSessions(rng *rand.Rand, devSize uint64) []*memSession {
	var s0, s1, s2 []Record
	for pos := uint64(0); pos+4096 <= devSize; pos += 8192 {
		s0 = append(s0, Record{Sector: pos / SectorSize, Size: 4096}) // every other 4 KiB block
	}
	for pos := uint64(0); pos+16384 <= devSize; pos += 32768 {
		s1 = append(s1, Record{Sector: pos / SectorSize, Size: 16384})
	}
	for pos := uint64(0); pos+65536 <= devSize; pos += 65536 {
		s2 = append(s2, Record{Sector: pos / SectorSize, Size: 65536})
	}
	return []*memSession{
		newMemSession(rng, "sdb1_1700000000", s0),
		newMemSession(rng, "sdb1_1700000100", s1),
		newMemSession(rng, "sdb1_1700000200", s2),
	}
}

func TestApplyCoalescesInOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	const devSize = 1 << 20
	ms := threeSessions(rng, devSize)
	dev := randomBytes(rng, devSize)
	want := modelRestore(dev, ms)
	tgt := &memTarget{b: bytes.Clone(dev)}
	const buf = 256 << 10
	res, err := mustPlan(t, ms).Apply(context.Background(), tgt, ApplyOptions{BufferSize: buf})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(tgt.b, want) {
		t.Fatalf("target differs from the model at byte %d", firstDiff(tgt.b, want))
	}
	// Session 2 covers the whole device, so the plan is one contiguous run
	// of 1 MiB: exactly four full 256 KiB writes, in ascending order.
	if res.Summary.Runs != 1 || res.Summary.Bytes != devSize {
		t.Fatalf("summary %+v", res.Summary)
	}
	if len(tgt.writes) != 4 || res.Writes != 4 {
		t.Fatalf("%d writes (result says %d), want 4: %v", len(tgt.writes), res.Writes, tgt.writes)
	}
	for i, w := range tgt.writes {
		if w.off != int64(i)*buf || w.n != buf {
			t.Errorf("write %d is [%d, +%d), want [%d, +%d)", i, w.off, w.n, i*buf, buf)
		}
	}
	if tgt.syncs != 1 {
		t.Errorf("%d syncs, want 1", tgt.syncs)
	}
	if res.Summary.Extents <= 4 {
		t.Errorf("only %d extents: the test does not exercise coalescing", res.Summary.Extents)
	}
}

func TestApplyGapsSplitWrites(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	// Two runs separated by a gap; each run is pieces from two sessions.
	a := newMemSession(rng, "a", []Record{{Sector: 0, Size: 512}, {Sector: 100, Size: 512}})
	b := newMemSession(rng, "b", []Record{{Sector: 0, Size: 4096}, {Sector: 96, Size: 4096}})
	dev := randomBytes(rng, 128*SectorSize)
	tgt := &memTarget{b: bytes.Clone(dev)}
	if _, err := mustPlan(t, []*memSession{a, b}).Apply(context.Background(), tgt, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	want := []memWrite{{0, 4096}, {96 * SectorSize, 4096}}
	if fmt.Sprint(tgt.writes) != fmt.Sprint(want) {
		t.Errorf("writes %v, want %v", tgt.writes, want)
	}
	if m := modelRestore(dev, []*memSession{a, b}); !bytes.Equal(tgt.b, m) {
		t.Errorf("target differs from model")
	}
}

func TestApplyReadsEachRecordOnce(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	// One big newer chunk split into many pieces by older small blocks:
	// its pieces alternate with other sessions' extents.
	var small []Record
	for s := uint64(0); s < 128; s += 16 {
		small = append(small, Record{Sector: s, Size: 4096})
	}
	a := newMemSession(rng, "a", small)
	b := newMemSession(rng, "b", []Record{{Sector: 0, Size: 65536}})
	tgt := &memTarget{b: make([]byte, 65536)}
	res, err := mustPlan(t, []*memSession{a, b}).Apply(context.Background(), tgt, ApplyOptions{SkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Summary.Sessions[1].Extents != 8 {
		t.Fatalf("session b gives %d extents, want 8", res.Summary.Sessions[1].Extents)
	}
	if a.reads != 8 || b.reads != 1 {
		t.Errorf("reads: a %d (want 8), b %d (want 1)", a.reads, b.reads)
	}
	// With verification, each record is read once more, first.
	a.reads, b.reads = 0, 0
	if _, err := mustPlan(t, []*memSession{a, b}).Apply(context.Background(), tgt, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if a.reads != 16 || b.reads != 2 {
		t.Errorf("reads with verify: a %d (want 16), b %d (want 2)", a.reads, b.reads)
	}
}

func TestVerifyBeforeWrite(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	ms := threeSessions(rng, 1<<20)
	bad := ms[1].recs[5]
	ms[1].bad = map[uint64]bool{bad.Offset: true}
	dev := randomBytes(rng, 1<<20)
	tgt := &memTarget{b: bytes.Clone(dev)}
	_, err := mustPlan(t, ms).Apply(context.Background(), tgt, ApplyOptions{})
	if err == nil {
		t.Fatal("apply with a damaged record succeeded")
	}
	if len(tgt.writes) != 0 || !bytes.Equal(tgt.b, dev) || tgt.syncs != 0 {
		t.Fatalf("%d writes happened before verification failed", len(tgt.writes))
	}
	var re *RecordError
	if !errors.As(err, &re) || re.Session != "sdb1_1700000100" || re.Index != 5 || re.Record != bad || !errors.Is(err, errCRC) {
		t.Fatalf("error %v does not name session sdb1_1700000100 record 5", err)
	}
	for _, want := range []string{"sdb1_1700000100", "record 5", fmt.Sprintf("sector %d", bad.Sector), "nothing was written", "CRC-32C mismatch"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	var pw *PartialWriteError
	if errors.As(err, &pw) {
		t.Errorf("a verify failure is reported as a partial write: %v", err)
	}
}

func TestVerifySkipsShadowedRecords(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	// Session b's record is entirely shadowed by a's: it is not in the
	// plan, so its damage does not matter.
	a := newMemSession(rng, "a", []Record{{Sector: 0, Size: 8192}})
	b := newMemSession(rng, "b", []Record{{Sector: 4, Size: 2048}})
	b.bad = map[uint64]bool{0: true}
	tgt := &memTarget{b: make([]byte, 8192)}
	if _, err := mustPlan(t, []*memSession{a, b}).Apply(context.Background(), tgt, ApplyOptions{}); err != nil {
		t.Fatalf("damage in a shadowed record stopped the restore: %v", err)
	}
	if b.reads != 0 {
		t.Errorf("shadowed record read %d times", b.reads)
	}
}

func TestApplySkipVerifyStopsAtDamage(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 16))
	ms := threeSessions(rng, 1<<20)
	// The last record of the oldest session: the restore gets far first.
	last := ms[0].recs[len(ms[0].recs)-1]
	ms[0].bad = map[uint64]bool{last.Offset: true}
	tgt := &memTarget{b: make([]byte, 1<<20)}
	_, err := mustPlan(t, ms).Apply(context.Background(), tgt, ApplyOptions{SkipVerify: true, BufferSize: 64 << 10})
	var pw *PartialWriteError
	if !errors.As(err, &pw) || pw.Written == 0 || pw.Total != 1<<20 || !errors.Is(err, errCRC) {
		t.Fatalf("error %v, want a partial write that wraps the CRC error", err)
	}
	var re *RecordError
	if !errors.As(err, &re) || re.Session != "sdb1_1700000000" {
		t.Fatalf("error %v does not name the session", err)
	}
	if !strings.Contains(err.Error(), "partially restored") {
		t.Errorf("error %q does not say the target is partially restored", err)
	}
}

func TestApplyCancel(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 18))
	ms := threeSessions(rng, 4<<20)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tgt := &memTarget{b: make([]byte, 4<<20)}
	tgt.onWrite = func() {
		if len(tgt.writes) == 2 {
			cancel()
		}
	}
	_, err := mustPlan(t, ms).Apply(ctx, tgt, ApplyOptions{BufferSize: 64 << 10})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	if len(tgt.writes) > 4 {
		t.Errorf("%d writes after cancellation at write 3", len(tgt.writes))
	}
	if tgt.syncs != 0 {
		t.Errorf("synced after cancellation")
	}

	// Cancelled before starting: nothing is read or written.
	tgt = &memTarget{b: make([]byte, 4<<20)}
	_, err = mustPlan(t, ms).Apply(ctx, tgt, ApplyOptions{})
	if !errors.Is(err, context.Canceled) || len(tgt.writes) != 0 {
		t.Fatalf("error %v, %d writes", err, len(tgt.writes))
	}
}

func TestApplyWriteError(t *testing.T) {
	rng := rand.New(rand.NewPCG(19, 20))
	ms := threeSessions(rng, 1<<20)
	tgt := &memTarget{b: make([]byte, 1<<20), failAt: 3}
	_, err := mustPlan(t, ms).Apply(context.Background(), tgt, ApplyOptions{BufferSize: 128 << 10})
	var pw *PartialWriteError
	if !errors.As(err, &pw) || pw.Written != 2*128<<10 || !errors.Is(err, errWrite) {
		t.Fatalf("error %v", err)
	}
	if !strings.Contains(err.Error(), "at byte 262144") {
		t.Errorf("error %q does not say where the write failed", err)
	}
}

func TestApplyTargetTooSmall(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	ms := threeSessions(rng, 1<<20)
	tgt := &memTarget{b: make([]byte, 1<<20)}
	_, err := mustPlan(t, ms).Apply(context.Background(), tgt, ApplyOptions{TargetSize: 1<<20 - 512})
	if !errors.Is(err, ErrOutOfBounds) || len(tgt.writes) != 0 {
		t.Fatalf("error %v, %d writes", err, len(tgt.writes))
	}
	if ms[0].reads+ms[1].reads+ms[2].reads != 0 {
		t.Errorf("records read although the plan was refused")
	}
}

// TestApplyRefusesHugeRecord: a record over MaxRecordSize, which the write
// pass cannot buffer, stops the restore before its first write whether or
// not the verify pass runs; behind a record the write pass had buffered,
// it used to be found only after that record was written.
func TestApplyRefusesHugeRecord(t *testing.T) {
	for _, skip := range []bool{true, false} {
		s := &memSession{id: "huge", dat: make([]byte, 4096), recs: []Record{
			{Sector: 0, Size: 4096},
			{Sector: 1 << 20 / SectorSize, Size: MaxRecordSize + 1},
		}}
		tgt := &memTarget{b: make([]byte, 2<<20)}
		_, err := mustPlan(t, []*memSession{s}).Apply(context.Background(), tgt, ApplyOptions{SkipVerify: skip})
		if len(tgt.writes) != 0 || s.reads != 0 {
			t.Errorf("SkipVerify %v: %d writes, %d record reads before the refusal", skip, len(tgt.writes), s.reads)
		}
		var se *SessionError
		if !errors.Is(err, ErrRecordTooLarge) || !errors.As(err, &se) || se.Session != "huge" || se.Index != 1 {
			t.Errorf("SkipVerify %v: error %v", skip, err)
		}
	}
}

// recProgress records what a Progress receives.
type recProgress struct {
	events []string
	added  map[string]uint64
	phase  string
}

func (p *recProgress) Begin(phase string, total uint64) {
	p.phase = phase
	p.events = append(p.events, fmt.Sprintf("begin %s %d", phase, total))
}
func (p *recProgress) Add(n uint64) {
	if p.added == nil {
		p.added = map[string]uint64{}
	}
	p.added[p.phase] += n
}
func (p *recProgress) End() { p.events = append(p.events, "end "+p.phase) }

func TestApplyProgress(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 24))
	a := newMemSession(rng, "a", []Record{{Sector: 0, Size: 4096}})
	b := newMemSession(rng, "b", []Record{{Sector: 0, Size: 16384}, {Sector: 64, Size: 8192}})
	p := &recProgress{}
	tgt := &memTarget{b: make([]byte, 64<<10)}
	if _, err := mustPlan(t, []*memSession{a, b}).Apply(context.Background(), tgt, ApplyOptions{Progress: p}); err != nil {
		t.Fatal(err)
	}
	// verify reads the used records whole (4 + 16 + 8 KiB); write writes
	// the plan (16 + 8 KiB).
	want := "[begin verify 28672 end verify begin write 24576 end write]"
	if fmt.Sprint(p.events) != want {
		t.Errorf("events %v, want %v", p.events, want)
	}
	if p.added["verify"] != 28672 || p.added["write"] != 24576 {
		t.Errorf("added %v", p.added)
	}
}

// osErrSession is a memSession whose ReadRecord fails with err.
type osErrSession struct {
	*memSession
	err error
}

func (s osErrSession) ReadRecord(Record, []byte) error { return s.err }

// TestVerifyTellsOSErrorsFromDamage: a record the OS would not read (an
// I/O error, a permission) fails the verify pass as "cannot verify", not
// damage; a missing file is damage. The CLI exits 5 on the first, 1 on
// the second.
func TestVerifyTellsOSErrorsFromDamage(t *testing.T) {
	for _, tc := range []struct {
		errno  syscall.Errno
		cannot bool
	}{{syscall.EIO, true}, {syscall.EACCES, true}, {syscall.ENOENT, false}} {
		s := osErrSession{&memSession{id: "s", recs: []Record{{Sector: 0, Size: 4096}}},
			&fs.PathError{Op: "read", Path: "/store/s/blocks.dat", Err: tc.errno}}
		p, err := NewPlan([]Session{s})
		if err != nil {
			t.Fatal(err)
		}
		err = p.Verify(context.Background(), nil)
		var re *RecordError
		if !errors.As(err, &re) || errors.Is(err, snapstore.ErrCannotVerify) != tc.cannot ||
			errors.As(err, new(*snapstore.FormatError)) == tc.cannot {
			t.Errorf("%v: %v; want cannot verify %v", tc.errno, err, tc.cannot)
		}
	}
}
