package restore

import (
	"errors"
	"fmt"
	"io"
	"math"
)

// Extent is a run of device bytes whose pre-image comes from one record of
// one session. Positions are in bytes: records start on sectors but their
// sizes need not be sector multiples, and the planner splits ranges exactly.
type Extent struct {
	Start   uint64 // device byte offset of the first byte
	Length  uint64 // bytes, > 0
	Session int    // index into the plan's sessions; 0 is the target session
	Index   int64  // position of Record in its session's record stream
	Record  Record // the record the bytes come from
}

// End is one past the extent's last device byte.
func (e Extent) End() uint64 { return e.Start + e.Length }

// Sector is the extent's first sector. Start is a multiple of SectorSize
// unless a record of some session has a size that is not.
func (e Extent) Sector() uint64 { return e.Start / SectorSize }

// RecordOffset is the offset of the extent's first byte within its record's
// pre-image.
func (e Extent) RecordOffset() uint64 { return e.Start - uint64(e.Record.Start()) }

// Plan is the restore plan over a chain of sessions of one device, ordered
// oldest to newest: the session to restore to (the target) first, then
// every later session up to the newest. For every device byte that any of
// them saved, the pre-image of the oldest session that holds it wins: that
// is the byte's content before the target session.
//
// A Plan holds no records; each pass (Extents, Summarize, Verify, Apply)
// streams the sessions' maps again, merging them with a heap, so memory is
// O(number of sessions).
type Plan struct {
	sessions []Session
}

// NewPlan returns the plan over sessions, ordered oldest to newest.
func NewPlan(sessions []Session) (*Plan, error) {
	if len(sessions) == 0 {
		return nil, ErrNoSessions
	}
	return &Plan{sessions: append([]Session(nil), sessions...)}, nil
}

// Sessions returns the plan's sessions, oldest first.
func (p *Plan) Sessions() []Session { return append([]Session(nil), p.sessions...) }

// maxEnd bounds record ends so every device offset fits io.WriterAt's int64.
const maxEnd = math.MaxInt64

// stream is one session's record stream with its head: the next record not
// yet handed to the sweep.
type stream struct {
	id  string
	it  RecordIter
	ok  bool // head is valid
	rec Record
	idx int64
	// start, end: the head's device byte range.
	start, end uint64
	// n counts records read so far (the next record's index), bytes their
	// sizes; both feed the summary.
	n     int64
	bytes uint64
	// last* describe the previous non-empty record, for the order checks.
	seen               bool
	lastStart, lastEnd uint64
}

// advance reads the stream's next non-empty record into the head, checking
// order and overlap; at the end of the stream ok becomes false.
func (s *stream) advance() error {
	for {
		r, err := s.it.Next()
		if err == io.EOF {
			s.ok = false
			return nil
		}
		if err != nil {
			s.ok = false
			return &SessionError{Session: s.id, Index: -1, Err: fmt.Errorf("reading record %d: %w", s.n, err)}
		}
		idx := s.n
		s.n++
		s.bytes += uint64(r.Size)
		if r.Size == 0 {
			continue // covers nothing; snapstore rejects these anyway
		}
		if r.Sector > (maxEnd-uint64(r.Size))/SectorSize {
			s.ok = false
			return &SessionError{Session: s.id, Index: idx, Record: r, Err: ErrRecordRange}
		}
		// The write pass buffers a record whole and refuses a larger one;
		// refused here, it stops Summarize, which every write runs first,
		// instead of a write pass that has begun writing.
		if r.Size > MaxRecordSize {
			s.ok = false
			return &SessionError{Session: s.id, Index: idx, Record: r,
				Err: fmt.Errorf("%w: %d bytes, more than %d (64 MiB)", ErrRecordTooLarge, r.Size, MaxRecordSize)}
		}
		// The range check above keeps both in [0, maxEnd]: exact as uint64.
		start, end := uint64(r.Start()), uint64(r.End())
		if s.seen {
			if start < s.lastStart {
				s.ok = false
				return &SessionError{Session: s.id, Index: idx, Record: r,
					Err: fmt.Errorf("%w: starts at byte %d, before the previous record's %d", ErrUnsorted, start, s.lastStart)}
			}
			if start < s.lastEnd {
				s.ok = false
				return &SessionError{Session: s.id, Index: idx, Record: r,
					Err: fmt.Errorf("%w: starts at byte %d, inside the previous record [%d, %d)", ErrOverlap, start, s.lastStart, s.lastEnd)}
			}
		}
		s.seen, s.lastStart, s.lastEnd = true, start, end
		s.ok, s.rec, s.idx, s.start, s.end = true, r, idx, start, end
		return nil
	}
}

// slot is a session's record that the sweep has reached (start <= pos). It
// stays in the active heap until it surfaces at the top after its end has
// passed; a session has at most one slot, so the heap holds at most one
// entry per session.
type slot struct {
	rec        Record
	idx        int64
	start, end uint64
	active     bool
}

// ExtentIter yields a plan's extents in ascending device order, adjacent
// pieces of one record joined. Close it when done.
type ExtentIter struct {
	sessions []Session
	streams  []stream
	slots    []slot
	pend     idxHeap // streams with a head, by (head start, session index)
	act      idxHeap // sessions with a slot, by session index
	pos      uint64  // every byte before pos has been decided
	held     Extent  // the piece being joined with its successors
	holding  bool
	err      error
}

// Extents opens the sessions' record streams and returns an iterator over
// the plan. Errors of the streams surface from Next as *SessionError.
func (p *Plan) Extents() (*ExtentIter, error) {
	k := len(p.sessions)
	it := &ExtentIter{
		sessions: p.sessions,
		streams:  make([]stream, k),
		slots:    make([]slot, k),
	}
	it.pend = idxHeap{h: make([]int, 0, k), less: func(a, b int) bool {
		sa, sb := &it.streams[a], &it.streams[b]
		if sa.start != sb.start {
			return sa.start < sb.start
		}
		return a < b
	}}
	it.act = idxHeap{h: make([]int, 0, k), less: func(a, b int) bool { return a < b }}
	for i, s := range p.sessions {
		st := &it.streams[i]
		st.id = s.ID()
		ri, err := s.Records()
		if err != nil {
			it.Close()
			return nil, &SessionError{Session: st.id, Index: -1, Err: fmt.Errorf("opening records: %w", err)}
		}
		st.it = ri
	}
	for i := range it.streams {
		if err := it.streams[i].advance(); err != nil {
			it.Close()
			return nil, err
		}
		if it.streams[i].ok {
			it.pend.push(i)
		}
	}
	return it, nil
}

// Next returns the next extent, or io.EOF after the last one. Any other
// error is final.
func (it *ExtentIter) Next() (Extent, error) {
	if it.err != nil {
		return Extent{}, it.err
	}
	for {
		e, ok, err := it.piece()
		if err != nil {
			it.err = err
			return Extent{}, err
		}
		if !ok {
			if it.holding {
				it.holding = false
				return it.held, nil
			}
			it.err = io.EOF
			return Extent{}, io.EOF
		}
		if !it.holding {
			it.held, it.holding = e, true
			continue
		}
		if e.Session == it.held.Session && e.Index == it.held.Index && e.Start == it.held.End() {
			it.held.Length += e.Length
			continue
		}
		out := it.held
		it.held = e
		return out, nil
	}
}

// piece runs the sweep to the next event: it returns the range from pos to
// the nearest point where the winning record may change. Pieces of one
// record may come split (a later session's record starting inside it is an
// event even though it does not win); Next joins them.
func (it *ExtentIter) piece() (Extent, bool, error) {
	for {
		// Hand every record the sweep has reached to its session's slot. A
		// session's previous slot has ended by then (its records do not
		// overlap), so overwriting it in place keeps the heap valid.
		for it.pend.len() > 0 {
			i := it.pend.top()
			st := &it.streams[i]
			if st.start > it.pos {
				break
			}
			sl := &it.slots[i]
			sl.rec, sl.idx, sl.start, sl.end = st.rec, st.idx, st.start, st.end
			if !sl.active {
				sl.active = true
				it.act.push(i)
			}
			if err := st.advance(); err != nil {
				return Extent{}, false, err
			}
			if st.ok {
				it.pend.fixTop()
			} else {
				it.pend.pop()
			}
		}
		// Drop slots that have ended until the lowest session index left
		// is live: that session is the oldest holding pos, so it wins.
		for it.act.len() > 0 && it.slots[it.act.top()].end <= it.pos {
			it.slots[it.act.pop()].active = false
		}
		if it.act.len() == 0 {
			if it.pend.len() == 0 {
				return Extent{}, false, nil
			}
			it.pos = it.streams[it.pend.top()].start
			continue
		}
		w := it.act.top()
		sl := &it.slots[w]
		end := sl.end
		if it.pend.len() > 0 {
			if next := it.streams[it.pend.top()].start; next < end {
				end = next
			}
		}
		e := Extent{Start: it.pos, Length: end - it.pos, Session: w, Index: sl.idx, Record: sl.rec}
		it.pos = end
		return e, true, nil
	}
}

// Close closes every record stream.
func (it *ExtentIter) Close() error {
	var errs []error
	for i := range it.streams {
		st := &it.streams[i]
		if st.it == nil {
			continue
		}
		if err := st.it.Close(); err != nil {
			errs = append(errs, &SessionError{Session: st.id, Index: -1, Err: fmt.Errorf("closing records: %w", err)})
		}
		st.it = nil
	}
	if it.err == nil {
		it.err = errors.New("restore: extent iterator closed")
	}
	return errors.Join(errs...)
}

// idxHeap is a binary min-heap of small ints ordered by less. It exists
// instead of container/heap so that pushing and popping never allocate:
// the sweep runs once per record and must not make garbage per record.
type idxHeap struct {
	h    []int
	less func(a, b int) bool
}

func (q *idxHeap) len() int { return len(q.h) }
func (q *idxHeap) top() int { return q.h[0] }

func (q *idxHeap) push(x int) {
	q.h = append(q.h, x)
	q.up(len(q.h) - 1)
}

func (q *idxHeap) pop() int {
	x := q.h[0]
	n := len(q.h) - 1
	q.h[0] = q.h[n]
	q.h = q.h[:n]
	if n > 0 {
		q.down(0)
	}
	return x
}

// fixTop restores the heap after the top's key grew.
func (q *idxHeap) fixTop() { q.down(0) }

func (q *idxHeap) up(j int) {
	for j > 0 {
		i := (j - 1) / 2
		if !q.less(q.h[j], q.h[i]) {
			break
		}
		q.h[i], q.h[j] = q.h[j], q.h[i]
		j = i
	}
}

func (q *idxHeap) down(i int) {
	n := len(q.h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		j := l
		if r := l + 1; r < n && q.less(q.h[r], q.h[l]) {
			j = r
		}
		if !q.less(q.h[j], q.h[i]) {
			return
		}
		q.h[i], q.h[j] = q.h[j], q.h[i]
		i = j
	}
}
