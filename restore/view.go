package restore

import (
	"context"
	"fmt"
	"io"

	"github.com/dmsnap/dmsnap/snapstore"
)

// ViewStats is what WriteViewCow wrote.
type ViewStats struct {
	Chunks     int64 // exceptions (whole chunks) in the store
	PlanBytes  uint64
	FilledFrom uint64 // bytes of those chunks read from the device, where the plan had none
	Cow        snapstore.CowWriteStats
}

// WriteViewCow writes into w, which must read as zeros (a new or freshly
// truncated file), a persistent COW store of chunkSize-byte chunks that,
// loaded as a `snapshot` target over the device, shows the device as it was
// before the plan's first session: every chunk the plan touches becomes one
// exception holding its pre-image. Where the plan covers only part of a
// chunk the rest comes from dev, the device's current content (read it
// from the device under the origin, -real, never through a view).
//
// The store keeps room for the kernel to copy every other chunk of the
// device once more (the origin stays writable while a view is open), sized
// like a session's COW: Geometry.CowFileSize of devSize bytes.
func (p *Plan) WriteViewCow(ctx context.Context, w io.WriterAt, dev io.ReaderAt, devSize, chunkSize int64) (ViewStats, error) {
	var st ViewStats
	if devSize <= 0 {
		return st, fmt.Errorf("view: device size %d", devSize)
	}
	cw, err := snapstore.NewCowWriter(w, chunkSize, snapstore.CowWriterOptions{})
	if err != nil {
		return st, err
	}
	cb := uint64(chunkSize)
	it, err := p.Extents()
	if err != nil {
		return st, err
	}
	defer it.Close()
	cache := make([]recordCache, len(p.sessions))
	for i := range cache {
		cache[i].idx = -1
	}
	buf := make([]byte, cb)
	var tmp []byte
	cur := int64(-1) // chunk being assembled
	var pos uint64   // next byte of cur not yet filled, relative to its start
	var gaps [][2]uint64
	chunkLen := func(c int64) uint64 { return min(cb, uint64(devSize)-uint64(c)*cb) }
	flush := func() error {
		if cur < 0 {
			return nil
		}
		n := chunkLen(cur)
		if pos < n {
			gaps = append(gaps, [2]uint64{pos, n})
		}
		if len(gaps) > 0 {
			if tmp == nil {
				tmp = make([]byte, cb)
			}
			if _, err := dev.ReadAt(tmp[:n], int64(uint64(cur)*cb)); err != nil && err != io.EOF {
				return fmt.Errorf("view: reading chunk %d of the device: %w", cur, err)
			}
			for _, g := range gaps {
				copy(buf[g[0]:g[1]], tmp[g[0]:g[1]])
				st.FilledFrom += g[1] - g[0]
			}
		}
		if err := cw.Add(uint64(cur), buf[:n]); err != nil {
			return err
		}
		st.Chunks++
		cur, pos, gaps = -1, 0, gaps[:0]
		return nil
	}
	for {
		e, err := it.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return st, err
		}
		if err := ctx.Err(); err != nil {
			return st, err
		}
		if e.End() > uint64(devSize) {
			return st, fmt.Errorf("%w: extent [%d, %d) of session %s, device has %d bytes",
				ErrOutOfBounds, e.Start, e.End(), p.sessions[e.Session].ID(), devSize)
		}
		c := &cache[e.Session]
		if c.idx != e.Index {
			c.idx = -1
			if c.buf, err = p.readRecord(e, c.buf); err != nil {
				return st, err
			}
			c.idx = e.Index
		}
		st.PlanBytes += e.Length
		data := c.buf[e.RecordOffset() : e.RecordOffset()+e.Length]
		start := e.Start
		for len(data) > 0 {
			ch := int64(start / cb)
			if ch != cur {
				if err := flush(); err != nil {
					return st, err
				}
				cur = ch
			}
			off := start - uint64(ch)*cb
			if off > pos {
				gaps = append(gaps, [2]uint64{pos, off})
			}
			k := copy(buf[off:chunkLen(ch)], data)
			pos = off + uint64(k)
			data = data[k:]
			start += uint64(k)
		}
	}
	if err := flush(); err != nil {
		return st, err
	}
	cs, err := cw.Close()
	st.Cow = cs
	if err != nil {
		return st, err
	}
	if f, ok := w.(interface{ Truncate(int64) error }); ok {
		want := cw.Geometry().CowFileSize(devSize)
		if want > cs.Size {
			if err := f.Truncate(want); err != nil {
				return st, fmt.Errorf("view: grow COW to %d bytes: %w", want, err)
			}
		}
	}
	return st, nil
}
