package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/dmsnap/dmsnap/internal/directio"
	"github.com/dmsnap/dmsnap/internal/units"
	"github.com/dmsnap/dmsnap/snapstore"
)

const (
	// DefaultBufferSize is the default size of apply's coalescing buffer:
	// neighbouring extents are gathered into writes of up to this many bytes.
	DefaultBufferSize = 1 << 20
	// MaxRecordSize is the largest record apply will buffer: snapstore's
	// limit, which verification enforces. dm-snapshot chunks and the
	// seed's blocks are far smaller; a larger record means a damaged map.
	// The plan's record streams refuse one (stream.advance), so every pass
	// meets it first in Summarize, before the first write.
	MaxRecordSize = snapstore.MaxRecordSize
)

// Syncer is implemented by targets that can flush written data to stable
// storage (*os.File does). Apply syncs a target that implements it.
type Syncer interface {
	Sync() error
}

// ApplyOptions tunes Apply. The zero value verifies first, uses
// DefaultBufferSize, checks no bound and shows no progress.
type ApplyOptions struct {
	// SkipVerify skips the verify-before-write pass. Records are still
	// read through Session.ReadRecord, which checks each as it goes, but a
	// damaged record then stops the restore half-way.
	SkipVerify bool
	// BufferSize is the largest single write; 0 means DefaultBufferSize.
	BufferSize int
	// TargetSize, when not 0, is the target's size in bytes: a plan that
	// writes past it is refused before anything is written.
	TargetSize uint64
	// Progress receives the verify and write phases; nil means Quiet.
	Progress Progress
}

func (o *ApplyOptions) progress() Progress {
	if o.Progress == nil {
		return Quiet{}
	}
	return o.Progress
}

// Result is what Apply did.
type Result struct {
	Summary Summary // the plan that was applied
	Writes  int64   // WriteAt calls made
	Bytes   uint64  // bytes written
	Direct  bool    // some writes went around the page cache (O_DIRECT)
}

// PartialWriteError reports a restore that stopped after it had begun
// writing: the target holds a mix of restored and unrestored bytes.
type PartialWriteError struct {
	Written uint64 // bytes written before the failure
	Total   uint64 // bytes the plan writes
	Err     error
}

func (e *PartialWriteError) Error() string {
	if e.Written == 0 {
		return fmt.Sprintf("restore stopped before writing anything: %v", e.Err)
	}
	return fmt.Sprintf("restore stopped after writing %s of %s, so the target is partially restored (run the restore again to finish it): %v",
		units.FormatBytes(e.Written), units.FormatBytes(e.Total), e.Err)
}

func (e *PartialWriteError) Unwrap() error { return e.Err }

// Apply writes the plan to dst: first, unless opts.SkipVerify, it reads and
// integrity-checks every record the plan uses, and writes nothing if any
// fails (the error is a *RecordError naming session and record); then it
// writes the plan in ascending device order, gathering neighbouring extents
// into writes of up to opts.BufferSize bytes; then it syncs dst if dst is a
// Syncer. It stops at ctx's cancellation. An error after the first write is
// a *PartialWriteError.
func (p *Plan) Apply(ctx context.Context, dst io.WriterAt, opts ApplyOptions) (Result, error) {
	sum, err := p.prepare(ctx, opts)
	if err != nil {
		return Result{Summary: sum}, err
	}
	return p.write(ctx, dst, sum, opts)
}

// prepare summarizes the plan, checks it against the target's size and, unless
// told not to, verifies it. Nothing is written.
func (p *Plan) prepare(ctx context.Context, opts ApplyOptions) (Summary, error) {
	sum, err := p.Summarize(ctx)
	if err != nil {
		return sum, fmt.Errorf("planning restore: %w", err)
	}
	if opts.TargetSize > 0 && sum.End > opts.TargetSize {
		return sum, fmt.Errorf("%w: the sessions hold pre-images up to byte %d but the target has %d bytes; nothing was written (are these the sessions of this device?)",
			ErrOutOfBounds, sum.End, opts.TargetSize)
	}
	if !opts.SkipVerify {
		if err := p.verify(ctx, sum, opts.progress()); err != nil {
			return sum, fmt.Errorf("verify before write: %w; nothing was written", err)
		}
	}
	return sum, nil
}

// Verify reads and integrity-checks every record the plan uses, each once,
// and returns the first failure as a *RecordError. It writes nothing.
func (p *Plan) Verify(ctx context.Context, prog Progress) error {
	sum, err := p.Summarize(ctx)
	if err != nil {
		return err
	}
	if prog == nil {
		prog = Quiet{}
	}
	return p.verify(ctx, sum, prog)
}

// maxBad bounds the failed records a storage-order check keeps while it
// looks for more; a session with more falls back to the per-record check.
const maxBad = 1024

// verify checks every record the plan uses. A session that can check its
// records in storage order (a StoreSession: blocks.dat read sequentially, in
// large reads) is checked whole that way when the plan uses at least a
// quarter of its bytes, and the failures it finds count only if the plan
// uses the record; the other sessions' used records are read one by one in
// device order. The first failure of a used record, in device order, is
// returned.
func (p *Plan) verify(ctx context.Context, sum Summary, prog Progress) error {
	k := len(p.sessions)
	ordered := make([]storageOrderChecker, k)
	var total uint64
	for i, s := range p.sessions {
		ss := sum.Sessions[i]
		if c, ok := s.(storageOrderChecker); ok && ss.readWhole() {
			ordered[i] = c
			total += ss.RecordBytes
		} else {
			total += ss.UsedRecordBytes
		}
	}
	prog.Begin("verify", total)
	defer prog.End()
	type key struct {
		session int
		idx     int64
	}
	bad := map[key]error{}
	perRecord := false
	for i, c := range ordered {
		if c == nil {
			perRecord = perRecord || sum.Sessions[i].RecordsUsed > 0
			continue
		}
		n := 0
		done, err := c.checkInStorageOrder(ctx, prog.Add, func(idx int64, _ Record, err error) bool {
			bad[key{i, idx}] = err
			n++
			return n < maxBad
		})
		if err != nil {
			return &SessionError{Session: p.sessions[i].ID(), Index: -1, Err: err}
		}
		if !done || n >= maxBad {
			for kk := range bad {
				if kk.session == i {
					delete(bad, kk)
				}
			}
			ordered[i] = nil
			perRecord = true
		}
	}
	if len(bad) == 0 && !perRecord {
		return nil
	}
	it, err := p.Extents()
	if err != nil {
		return err
	}
	defer it.Close()
	last := make([]int64, k)
	for i := range last {
		last[i] = -1
	}
	var buf []byte
	for {
		e, err := it.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if e.Index == last[e.Session] {
			continue // another piece of a record already checked
		}
		last[e.Session] = e.Index
		if ordered[e.Session] != nil {
			if err := bad[key{e.Session, e.Index}]; err != nil {
				return &RecordError{Session: p.sessions[e.Session].ID(), Index: e.Index, Record: e.Record, Err: err}
			}
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		buf, err = p.readRecord(e, buf)
		if err != nil {
			return err
		}
		prog.Add(uint64(e.Record.Size))
	}
}

// readRecord reads e's whole record into buf, growing it as needed.
func (p *Plan) readRecord(e Extent, buf []byte) ([]byte, error) {
	size := int(e.Record.Size) // at most MaxRecordSize: stream.advance
	if cap(buf) < size {
		buf = make([]byte, size)
	}
	buf = buf[:size]
	if err := p.sessions[e.Session].ReadRecord(e.Record, buf); err != nil {
		// An error of the OS is not damage: the caller can tell them
		// apart (errors.Is(err, snapstore.ErrCannotVerify)).
		return buf, &RecordError{Session: p.sessions[e.Session].ID(), Index: e.Index, Record: e.Record, Err: snapstore.ClassifyReadError(err)}
	}
	return buf, nil
}

// recordCache holds the record of one session that the write pass is
// working through. A session's extents come in ascending record order, so
// once the pass moves to the session's next record the previous one is
// never needed again: every record is read once, whatever its pieces.
type recordCache struct {
	idx int64
	buf []byte
}

// writeAhead is how many write buffers the write pass holds: the reading
// goroutine fills the next ones while the current one is written.
const writeAhead = 4

// chunkOut is one write of the write pass, or the reader's error.
type chunkOut struct {
	start uint64
	p     []byte
	err   error
}

// write runs the write pass: a goroutine reads the plan's records in
// device order into buffers of up to opts.BufferSize contiguous bytes
// (writeAhead of them), while this one writes them. Records are checked as
// they are read unless the verify pass has just checked them.
func (p *Plan) write(ctx context.Context, dst io.WriterAt, sum Summary, opts ApplyOptions) (Result, error) {
	res := Result{Summary: sum}
	prog := opts.progress()
	size := opts.BufferSize
	if size <= 0 {
		size = DefaultBufferSize
	}
	it, err := p.Extents()
	if err != nil {
		return res, &PartialWriteError{Total: sum.Bytes, Err: err}
	}
	readers := make([]recordReader, len(p.sessions))
	closeReaders := func() {
		for _, r := range readers {
			if r != nil {
				r.close()
			}
		}
	}
	for i, s := range p.sessions {
		if readers[i], err = openRecordReader(s, opts.SkipVerify); err != nil {
			it.Close()
			closeReaders()
			return res, &PartialWriteError{Total: sum.Bytes, Err: &SessionError{Session: s.ID(), Index: -1, Err: err}}
		}
	}
	prog.Begin("write", sum.Bytes)
	defer prog.End()

	free := make(chan []byte, writeAhead)
	full := make(chan chunkOut, writeAhead)
	for range writeAhead {
		free <- directio.AlignedBuf(size)
	}
	// A file or device is written around the page cache where it allows
	// it: the restore writes each byte once and syncs at the end, and the
	// kernel's copy costs a memory copy per byte (internal/directio).
	var dw *directio.Writer
	if f, ok := dst.(*os.File); ok {
		dw = directio.NewWriter(f)
		defer dw.Close()
		dst = dw
	}
	stop := make(chan struct{})
	go func() {
		defer close(full)
		defer closeReaders()
		defer it.Close()
		defer prefetch(readers, sum)() // stopped before the readers close
		if err := p.fill(ctx, it, readers, opts.TargetSize, free, full, stop); err != nil {
			full <- chunkOut{err: err}
		}
	}()
	var werr error
	for c := range full {
		if werr != nil {
			continue // drain until the reader stops
		}
		if c.err != nil {
			werr = c.err
			continue
		}
		// Cancellation stops the writes at once, not only the reads: the
		// buffers read ahead are dropped.
		if err := ctx.Err(); err != nil {
			werr = err
			close(stop)
			continue
		}
		if _, err := dst.WriteAt(c.p, int64(c.start)); err != nil {
			werr = fmt.Errorf("writing %d bytes at byte %d: %w", len(c.p), c.start, err)
			close(stop)
			continue
		}
		res.Writes++
		res.Bytes += uint64(len(c.p))
		prog.Add(uint64(len(c.p)))
		free <- c.p[:cap(c.p)]
	}
	res.Direct = dw != nil && dw.Direct()
	if werr == nil {
		if s, ok := dst.(Syncer); ok {
			if err := s.Sync(); err != nil {
				werr = fmt.Errorf("syncing the target: %w", err)
			}
		}
	}
	if werr != nil {
		return res, &PartialWriteError{Written: res.Bytes, Total: sum.Bytes, Err: werr}
	}
	return res, nil
}

// fill is the write pass's reading side: it gathers the plan's bytes into
// buffers from free and sends each full or discontiguous one to full. It
// returns at the end of the plan, at the first error, or when stop closes.
func (p *Plan) fill(ctx context.Context, it *ExtentIter, readers []recordReader, targetSize uint64, free <-chan []byte, full chan<- chunkOut, stop <-chan struct{}) error {
	cache := make([]recordCache, len(p.sessions))
	for i := range cache {
		cache[i].idx = -1
	}
	var cur []byte // buffer being filled
	var n int      // bytes held in cur
	var at uint64  // device offset of cur[0]
	send := func() {
		if n > 0 {
			full <- chunkOut{start: at, p: cur[:n]}
			cur, n = nil, 0
		}
	}
	take := func() bool {
		if cur != nil {
			return true
		}
		select {
		case cur = <-free:
			return true
		case <-stop:
			return false
		}
	}
	errStopped := errors.New("write pass stopped")
	for {
		e, err := it.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if targetSize > 0 && e.End() > targetSize {
			return fmt.Errorf("%w: extent [%d, %d) of session %s, target has %d bytes",
				ErrOutOfBounds, e.Start, e.End(), p.sessions[e.Session].ID(), targetSize)
		}
		if n > 0 && e.Start != at+uint64(n) {
			send()
		}
		if !take() {
			return errStopped
		}
		if n == 0 {
			at = e.Start
		}
		c := &cache[e.Session]
		size := int(e.Record.Size) // at most MaxRecordSize: stream.advance
		// A whole record that fits is read straight into the buffer.
		if e.RecordOffset() == 0 && e.Length == uint64(size) && size <= len(cur)-n {
			if err := readers[e.Session].readRecord(e.Index, e.Record, cur[n:n+size]); err != nil {
				return &RecordError{Session: p.sessions[e.Session].ID(), Index: e.Index, Record: e.Record, Err: err}
			}
			n += size
			if n == len(cur) {
				send()
			}
			continue
		}
		if c.idx != e.Index {
			c.idx = -1
			if cap(c.buf) < size {
				c.buf = make([]byte, size)
			}
			c.buf = c.buf[:size]
			if err := readers[e.Session].readRecord(e.Index, e.Record, c.buf); err != nil {
				return &RecordError{Session: p.sessions[e.Session].ID(), Index: e.Index, Record: e.Record, Err: err}
			}
			c.idx = e.Index
		}
		off := e.RecordOffset()
		data := c.buf[off : off+e.Length]
		for len(data) > 0 {
			if !take() {
				return errStopped
			}
			if n == 0 {
				at = e.Start + e.Length - uint64(len(data))
			}
			k := copy(cur[n:], data)
			n += k
			data = data[k:]
			if n == len(cur) {
				send()
			}
		}
	}
	send()
	return nil
}
