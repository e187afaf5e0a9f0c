package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// checkExtents checks a plan's extents against a brute-force owner map of
// every byte: extents ascend without overlapping, lie inside their
// records, name the record by its index, give every byte that some session
// saved to the oldest such session, cover nothing else, and are joined
// whenever they could be.
func checkExtents(sessions []*memSession, devSize uint64, exts []Extent) error {
	type own struct {
		s   int
		idx int64
	}
	owner := make([]own, devSize)
	for i := range owner {
		owner[i] = own{-1, -1}
	}
	for si, s := range sessions {
		for ri, r := range s.recs {
			for b := r.Start(); b < r.End(); b++ {
				if owner[b].s < 0 {
					owner[b] = own{si, int64(ri)}
				}
			}
		}
	}
	covered := make([]bool, devSize)
	var prevEnd uint64
	for i, e := range exts {
		if e.Length == 0 {
			return fmt.Errorf("extent %d %+v is empty", i, e)
		}
		if i > 0 && e.Start < prevEnd {
			return fmt.Errorf("extent %d %+v starts before the previous one ends (%d)", i, e, prevEnd)
		}
		if i > 0 && e.Start == prevEnd && exts[i-1].Session == e.Session && exts[i-1].Index == e.Index {
			return fmt.Errorf("extents %d and %d are pieces of one record and were not joined", i-1, i)
		}
		prevEnd = e.End()
		if e.Session < 0 || e.Session >= len(sessions) {
			return fmt.Errorf("extent %d names session %d", i, e.Session)
		}
		s := sessions[e.Session]
		if e.Index < 0 || e.Index >= int64(len(s.recs)) || s.recs[e.Index] != e.Record {
			return fmt.Errorf("extent %d: record %d of session %d is not %+v", i, e.Index, e.Session, e.Record)
		}
		if rs, rend := uint64(e.Record.Start()), uint64(e.Record.End()); e.Start < rs || e.End() > rend {
			return fmt.Errorf("extent %d [%d, %d) is not inside its record [%d, %d)", i, e.Start, e.End(), rs, rend)
		}
		if e.End() > devSize {
			return fmt.Errorf("extent %d ends past the device", i)
		}
		for b := e.Start; b < e.End(); b++ {
			if owner[b] != (own{e.Session, e.Index}) {
				return fmt.Errorf("byte %d: plan takes session %d record %d, oldest holder is session %d record %d",
					b, e.Session, e.Index, owner[b].s, owner[b].idx)
			}
			covered[b] = true
		}
	}
	for b := range owner {
		if owner[b].s >= 0 && !covered[b] {
			return fmt.Errorf("byte %d: saved by session %d but not in the plan", b, owner[b].s)
		}
	}
	return nil
}

func mustPlan(t testing.TB, ms []*memSession) *Plan {
	t.Helper()
	p, err := NewPlan(asSessions(ms))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPlanHandCases(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	type ext struct {
		start, length uint64
		session       int
		index         int64
	}
	cases := []struct {
		name     string
		sessions [][]Record
		want     []ext
	}{
		{
			name:     "one session",
			sessions: [][]Record{{{Sector: 0, Size: 4096}, {Sector: 16, Size: 4096}}},
			want:     []ext{{0, 4096, 0, 0}, {8192, 4096, 0, 1}},
		},
		{
			name: "older small block inside newer big chunk",
			sessions: [][]Record{
				{{Sector: 8, Size: 4096}},
				{{Sector: 0, Size: 16384}},
			},
			want: []ext{{0, 4096, 1, 0}, {4096, 4096, 0, 0}, {8192, 8192, 1, 0}},
		},
		{
			name: "newer small block inside older big chunk is shadowed",
			sessions: [][]Record{
				{{Sector: 0, Size: 16384}},
				{{Sector: 8, Size: 4096}},
			},
			want: []ext{{0, 16384, 0, 0}},
		},
		{
			name: "partial overlaps across three sessions",
			sessions: [][]Record{
				{{Sector: 4, Size: 1024}},                         // [2048, 3072)
				{{Sector: 2, Size: 2048}, {Sector: 8, Size: 512}}, // [1024, 3072) [4096, 4608)
				{{Sector: 0, Size: 8192}},                         // [0, 8192)
			},
			want: []ext{
				{0, 1024, 2, 0}, {1024, 1024, 1, 0}, {2048, 1024, 0, 0},
				{3072, 1024, 2, 0}, {4096, 512, 1, 1}, {4608, 8192 - 4608, 2, 0},
			},
		},
		{
			name: "sizes that are not sector multiples",
			sessions: [][]Record{
				{{Sector: 1, Size: 100}},  // [512, 612)
				{{Sector: 0, Size: 1000}}, // [0, 1000)
			},
			want: []ext{{0, 512, 1, 0}, {512, 100, 0, 0}, {612, 388, 1, 0}},
		},
		{
			name: "zero-size records cover nothing",
			sessions: [][]Record{
				{{Sector: 0, Size: 0}, {Sector: 0, Size: 512}, {Sector: 1, Size: 0}},
			},
			want: []ext{{0, 512, 0, 1}},
		},
		{
			name:     "sessions with no records",
			sessions: [][]Record{nil, {{Sector: 2, Size: 512}}, nil},
			want:     []ext{{1024, 512, 1, 0}},
		},
		{
			name:     "nothing at all",
			sessions: [][]Record{nil, nil},
			want:     nil,
		},
		{
			name: "same range in every session: the oldest wins whole",
			sessions: [][]Record{
				{{Sector: 0, Size: 4096}},
				{{Sector: 0, Size: 4096}},
				{{Sector: 0, Size: 4096}},
			},
			want: []ext{{0, 4096, 0, 0}},
		},
		{
			name: "adjacent records of one session stay separate extents",
			sessions: [][]Record{
				{{Sector: 0, Size: 512}, {Sector: 1, Size: 512}},
			},
			want: []ext{{0, 512, 0, 0}, {512, 512, 0, 1}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var ms []*memSession
			var devSize uint64
			for i, recs := range tc.sessions {
				ms = append(ms, newMemSession(rng, fmt.Sprintf("s%d", i), recs))
				for _, r := range recs {
					devSize = max(devSize, uint64(r.End()))
				}
			}
			got, err := collect(mustPlan(t, ms))
			if err != nil {
				t.Fatal(err)
			}
			var gotE []ext
			for _, e := range got {
				gotE = append(gotE, ext{e.Start, e.Length, e.Session, e.Index})
				if e.RecordOffset() != e.Start-e.Record.Sector*SectorSize {
					t.Errorf("RecordOffset %d for %+v", e.RecordOffset(), e)
				}
			}
			if fmt.Sprint(gotE) != fmt.Sprint(tc.want) {
				t.Errorf("extents\n got %v\nwant %v", gotE, tc.want)
			}
			if err := checkExtents(ms, devSize, got); err != nil {
				t.Error(err)
			}
			for _, m := range ms {
				if m.opens != 1 || m.closes != 1 {
					t.Errorf("session %s: %d opens, %d closes", m.id, m.opens, m.closes)
				}
			}
		})
	}
}

func TestPlanRejectsBadStreams(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	cases := []struct {
		name  string
		recs  []Record
		want  error
		index int64
	}{
		{"unsorted", []Record{{Sector: 8, Size: 512}, {Sector: 0, Size: 512}}, ErrUnsorted, 1},
		{"overlap", []Record{{Sector: 0, Size: 4096}, {Sector: 4, Size: 512}}, ErrOverlap, 1},
		{"same start", []Record{{Sector: 0, Size: 512}, {Sector: 0, Size: 512}}, ErrOverlap, 1},
		{"unsorted after an empty record", []Record{{Sector: 8, Size: 512}, {Sector: 9, Size: 0}, {Sector: 1, Size: 512}}, ErrUnsorted, 2},
		{"past int64", []Record{{Sector: math.MaxInt64 / SectorSize, Size: 4096}}, ErrRecordRange, 0},
		{"overflows uint64", []Record{{Sector: math.MaxUint64 / SectorSize, Size: 512}}, ErrRecordRange, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			good := newMemSession(rng, "good", []Record{{Sector: 0, Size: 512}, {Sector: 100, Size: 512}})
			bad := &memSession{id: "bad_1700000000", recs: tc.recs}
			_, err := collect(mustPlan(t, []*memSession{good, bad}))
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			var se *SessionError
			if !errors.As(err, &se) || se.Session != "bad_1700000000" || se.Index != tc.index {
				t.Fatalf("error %#v does not name session bad_1700000000 record %d", err, tc.index)
			}
			if good.closes != good.opens || bad.closes != bad.opens {
				t.Errorf("iterators left open: good %d/%d bad %d/%d", good.opens, good.closes, bad.opens, bad.closes)
			}
		})
	}
	t.Run("open fails", func(t *testing.T) {
		a := newMemSession(rng, "a", []Record{{Sector: 0, Size: 512}})
		b := &memSession{id: "b", openErr: errors.New("blocks.map: permission denied")}
		_, err := mustPlan(t, []*memSession{a, b}).Extents()
		var se *SessionError
		if !errors.As(err, &se) || se.Session != "b" || !errors.Is(err, b.openErr) {
			t.Fatalf("error %v", err)
		}
		if a.closes != 1 {
			t.Errorf("session a's iterator not closed after b failed to open")
		}
	})
	t.Run("read fails", func(t *testing.T) {
		a := newMemSession(rng, "a", []Record{{Sector: 0, Size: 512}, {Sector: 1, Size: 512}, {Sector: 2, Size: 512}})
		a.nextErrAt = 2
		exts, err := collect(mustPlan(t, []*memSession{a}))
		var se *SessionError
		if !errors.As(err, &se) || se.Session != "a" {
			t.Fatalf("error %v", err)
		}
		// The sweep reads one record ahead, so at most the first record is out.
		if len(exts) > 1 {
			t.Errorf("%d extents before the failure", len(exts))
		}
	})
	t.Run("no sessions", func(t *testing.T) {
		if _, err := NewPlan(nil); !errors.Is(err, ErrNoSessions) {
			t.Fatalf("error %v", err)
		}
	})
}

// TestPlanMatchesModel: random sessions of random shapes, applied through
// the plan, give the same bytes as applying every session's pre-images
// newest first onto the device, and the plan's extents pass the
// brute-force structural check.
func TestPlanMatchesModel(t *testing.T) {
	iters := 400
	if testing.Short() {
		iters = 50
	}
	for seed := range uint64(iters) {
		rng := rand.New(rand.NewPCG(seed, 0x5eed))
		devSize := uint64(1+rng.IntN(256)) * 1024
		k := 1 + rng.IntN(6)
		var ms []*memSession
		for i := range k {
			ms = append(ms, newMemSession(rng, fmt.Sprintf("dev_%d", 1700000000+i), randomRecords(rng, devSize)))
		}
		dev := randomBytes(rng, int(devSize))
		want := modelRestore(dev, ms)
		p := mustPlan(t, ms)

		exts, err := collect(p)
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		if err := checkExtents(ms, devSize, exts); err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		tgt := &memTarget{b: bytes.Clone(dev)}
		res, err := p.Apply(context.Background(), tgt, ApplyOptions{BufferSize: 1 + rng.IntN(64<<10), TargetSize: devSize})
		if err != nil {
			t.Fatalf("seed %d: apply: %v", seed, err)
		}
		if !bytes.Equal(tgt.b, want) {
			t.Fatalf("seed %d: applied plan differs from the model at byte %d", seed, firstDiff(tgt.b, want))
		}
		var planBytes uint64
		for _, e := range exts {
			planBytes += e.Length
		}
		if res.Bytes != planBytes || res.Summary.Bytes != planBytes || res.Summary.Extents != int64(len(exts)) {
			t.Fatalf("seed %d: result %+v, plan has %d bytes in %d extents", seed, res, planBytes, len(exts))
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// FuzzPlan feeds the planner session shapes decoded from the input,
// including streams that are unsorted or overlapping. A valid shape must
// give a plan that matches the model; an invalid one must be refused with
// ErrUnsorted or ErrOverlap naming the right session, never a panic or a
// wrong plan.
func FuzzPlan(f *testing.F) {
	f.Add([]byte{2, 0, 0, 8, 1, 0, 32})
	f.Add([]byte{3, 0, 4, 2, 1, 2, 4, 2, 0, 0, 70, 1, 8, 1})
	f.Add([]byte{1, 0, 0, 8, 0, 0x81, 8}) // overlapping stream
	f.Add([]byte{4, 0, 1, 200, 1, 0, 3, 2, 5, 9, 3, 0, 255})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		k := 1 + int(data[0])%5
		data = data[1:]
		recs := make([][]Record, k)
		cursor := make([]uint64, k)  // next free sector per session
		invalid := make([]bool, k)   // the stream breaks order or overlaps
		lastEnd := make([]uint64, k) // byte end of the last record
		lastStart := make([]uint64, k)
		var devSize uint64
		for len(data) >= 3 && devSize < 1<<20 {
			s := int(data[0]) % k
			gap, sz := data[1], data[2]
			data = data[3:]
			var sector uint64
			if gap&0x80 != 0 && cursor[s] > 0 {
				// step back: may overlap or go backwards
				back := uint64(gap&0x7f) % (cursor[s] + 1)
				sector = cursor[s] - back
			} else {
				sector = cursor[s] + uint64(gap&0x3f)
			}
			var size uint32
			if sz&0x80 != 0 {
				size = uint32(sz&0x7f)*37 + 1 // not a sector multiple
			} else {
				size = uint32(sz%64+1) * SectorSize
			}
			r := Record{Sector: sector, Size: size}
			start, end := uint64(r.Start()), uint64(r.End())
			if len(recs[s]) > 0 && !invalid[s] {
				if start < lastStart[s] || start < lastEnd[s] {
					invalid[s] = true
				}
			}
			lastStart[s], lastEnd[s] = start, end
			recs[s] = append(recs[s], r)
			cursor[s] = max(cursor[s], (end+SectorSize-1)/SectorSize)
			devSize = max(devSize, end)
		}
		rng := rand.New(rand.NewPCG(uint64(len(data)), 7))
		var ms []*memSession
		for i := range k {
			ms = append(ms, newMemSession(rng, fmt.Sprintf("s%d", i), recs[i]))
		}
		p := mustPlan(t, ms)
		exts, err := collect(p)
		firstBad := -1
		for i := range k {
			if invalid[i] {
				firstBad = i
				break
			}
		}
		if firstBad >= 0 {
			if !errors.Is(err, ErrUnsorted) && !errors.Is(err, ErrOverlap) {
				t.Fatalf("invalid session %d accepted: err %v", firstBad, err)
			}
			var se *SessionError
			if !errors.As(err, &se) || !invalid[se.Session[1]-'0'] {
				t.Fatalf("error %v names a valid session", err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := checkExtents(ms, devSize, exts); err != nil {
			t.Fatal(err)
		}
		dev := randomBytes(rng, int(devSize))
		want := modelRestore(dev, ms)
		tgt := &memTarget{b: bytes.Clone(dev)}
		if _, err := p.Apply(context.Background(), tgt, ApplyOptions{BufferSize: 4096}); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(tgt.b, want) {
			t.Fatalf("plan differs from model at byte %d", firstDiff(tgt.b, want))
		}
	})
}
