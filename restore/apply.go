package restore

import (
	"context"
	"fmt"
	"io"
)

const (
	// DefaultBufferSize is the default size of apply's coalescing buffer:
	// neighbouring extents are gathered into writes of up to this many bytes.
	DefaultBufferSize = 1 << 20
	// MaxRecordSize is the largest record apply will buffer. dm-snapshot
	// chunks and the seed's blocks are far smaller; a larger record means a
	// damaged map.
	MaxRecordSize = 64 << 20
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
		FormatBytes(e.Written), FormatBytes(e.Total), e.Err)
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

func (p *Plan) verify(ctx context.Context, sum Summary, prog Progress) error {
	it, err := p.Extents()
	if err != nil {
		return err
	}
	defer it.Close()
	prog.Begin("verify", sum.UsedRecordBytes())
	defer prog.End()
	last := make([]int64, len(p.sessions))
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
	size := int(e.Record.Size)
	if size > MaxRecordSize {
		return buf, &RecordError{Session: p.sessions[e.Session].ID(), Index: e.Index, Record: e.Record,
			Err: fmt.Errorf("%w: %d bytes, more than %d", ErrRecordTooLarge, size, MaxRecordSize)}
	}
	if cap(buf) < size {
		buf = make([]byte, size)
	}
	buf = buf[:size]
	if err := p.sessions[e.Session].ReadRecord(e.Record, buf); err != nil {
		return buf, &RecordError{Session: p.sessions[e.Session].ID(), Index: e.Index, Record: e.Record, Err: err}
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
	defer it.Close()
	prog.Begin("write", sum.Bytes)
	defer prog.End()
	cache := make([]recordCache, len(p.sessions))
	for i := range cache {
		cache[i].idx = -1
	}
	w := coalescer{dst: dst, buf: make([]byte, size), prog: prog}
	fail := func(err error) (Result, error) {
		res.Writes, res.Bytes = w.writes, w.written
		return res, &PartialWriteError{Written: w.written, Total: sum.Bytes, Err: err}
	}
	for {
		e, err := it.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fail(err)
		}
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
		if opts.TargetSize > 0 && e.End() > opts.TargetSize {
			return fail(fmt.Errorf("%w: extent [%d, %d) of session %s, target has %d bytes",
				ErrOutOfBounds, e.Start, e.End(), p.sessions[e.Session].ID(), opts.TargetSize))
		}
		c := &cache[e.Session]
		if c.idx != e.Index {
			c.idx = -1
			if c.buf, err = p.readRecord(e, c.buf); err != nil {
				return fail(err)
			}
			c.idx = e.Index
		}
		off := e.RecordOffset()
		if err := w.add(e.Start, c.buf[off:off+e.Length]); err != nil {
			return fail(err)
		}
	}
	if err := w.flush(); err != nil {
		return fail(err)
	}
	if s, ok := dst.(Syncer); ok {
		if err := s.Sync(); err != nil {
			return fail(fmt.Errorf("syncing the target: %w", err))
		}
	}
	res.Writes, res.Bytes = w.writes, w.written
	return res, nil
}

// coalescer gathers contiguous bytes into one buffer and writes it when the
// next bytes are not contiguous or the buffer is full.
type coalescer struct {
	dst     io.WriterAt
	buf     []byte
	prog    Progress
	start   uint64 // device offset of buf[0]
	n       int    // bytes held
	writes  int64
	written uint64
}

func (w *coalescer) add(start uint64, data []byte) error {
	if w.n > 0 && start != w.start+uint64(w.n) {
		if err := w.flush(); err != nil {
			return err
		}
	}
	for len(data) > 0 {
		if w.n == 0 {
			w.start = start
		}
		c := copy(w.buf[w.n:], data)
		w.n += c
		data = data[c:]
		start += uint64(c)
		if w.n == len(w.buf) {
			if err := w.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (w *coalescer) flush() error {
	if w.n == 0 {
		return nil
	}
	if _, err := w.dst.WriteAt(w.buf[:w.n], int64(w.start)); err != nil {
		return fmt.Errorf("writing %d bytes at byte %d: %w", w.n, w.start, err)
	}
	w.writes++
	w.written += uint64(w.n)
	w.prog.Add(uint64(w.n))
	w.n = 0
	return nil
}
