package snapstore

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// cowWriteBlock bounds the metadata the writer buffers: entries are flushed
// in blocks of at most this many bytes, so memory stays one block whatever
// the chunk size (a 1 GiB chunk has a 1 GiB metadata area) and the number
// of exceptions.
const cowWriteBlock = 64 << 10

// CowWriterOptions tunes a CowWriter. The zero value writes a valid store
// exactly as large as its exceptions need.
type CowWriterOptions struct {
	// Invalid writes the header with valid = 0, as the kernel does when it
	// drops a snapshot (COW full, I/O error).
	Invalid bool
	// Reserve is the number of further exceptions the file must have room
	// for, so that the kernel can go on copying chunks into it when it is
	// loaded as a live snapshot: Close grows the file to hold Reserve more
	// data chunks with their metadata areas and the next area the kernel
	// zeroes (the sizing rule of Geometry.CowFileSize).
	Reserve int64
}

// CowWriteStats is what a CowWriter wrote.
type CowWriteStats struct {
	Exceptions int64 // entries in the list
	LastArea   int64 // metadata area holding the terminator
	NextFree   int64 // chunk the kernel would allocate next
	Size       int64 // bytes the store needs (at least); Close grows a file to it
}

// CowWriter writes a persistent exception store in the kernel's format
// (FORMAT.md, "cow.img"; drivers/md/dm-snap-persistent.c, version 1): the
// inverse of OpenCow and Cow.Walk. It streams: exceptions are appended in
// list order, their data written at once, and the metadata is buffered one
// block (at most 64 KiB) at a time, so memory does not grow with the
// number of exceptions or the chunk size.
//
// The target must read as zeros wherever the writer does not write (a new
// or freshly truncated file, such as CreateSession's cow.img): the writer
// is sparse, it writes the header, the metadata entries, the terminator
// entry and the data, nothing else. In particular the rest of the last
// metadata area is not written, and the kernel relies on it being zero
// (it keeps appending to that area after it loads the store).
//
// The header is written last, by Close: a store whose writing was cut
// short has magic 0 and reads as uninitialised, never as a shorter list.
//
// The writer does not look for the same old chunk twice (that would need
// memory per exception); the kernel never commits one twice, and a caller
// that might must deduplicate first.
type CowWriter struct {
	g    Geometry
	w    io.WriterAt
	opts CowWriterOptions

	n        int64 // exceptions written
	nextFree int64 // next data chunk Add allocates
	maxChunk int64 // highest data chunk written, 0 if none

	blk    []byte // pending entries, contiguous in one area
	blkOff int64  // file offset of blk[0]
	closed bool
}

// NewCowWriter starts a store of chunkSize bytes (a power of two from 512
// bytes to 1 GiB) in w.
func NewCowWriter(w io.WriterAt, chunkSize int64, opts CowWriterOptions) (*CowWriter, error) {
	if chunkSize <= 0 || chunkSize%SectorSize != 0 || chunkSize/SectorSize > MaxChunkSectors {
		return nil, fmt.Errorf("COW writer: chunk size %d bytes is not a power of two between %d and %d", chunkSize, MinChunkSectors*SectorSize, MaxChunkSectors*SectorSize)
	}
	if err := ValidChunkSectors(uint32(chunkSize / SectorSize)); err != nil {
		return nil, fmt.Errorf("COW writer: %w", err)
	}
	if opts.Reserve < 0 {
		return nil, fmt.Errorf("COW writer: reserve %d is negative", opts.Reserve)
	}
	g := Geometry{ChunkSectors: uint32(chunkSize / SectorSize)}
	return &CowWriter{
		g:        g,
		w:        w,
		opts:     opts,
		nextFree: g.DataChunk(0),
		blk:      make([]byte, 0, min(g.ChunkBytes(), cowWriteBlock)),
	}, nil
}

// Geometry is the store's geometry.
func (cw *CowWriter) Geometry() Geometry { return cw.g }

// Exceptions is the number of exceptions written so far.
func (cw *CowWriter) Exceptions() int64 { return cw.n }

// Add appends the exception for origin chunk oldChunk, whose pre-image is
// data (at most one chunk; shorter for the last chunk of a device whose
// size is not a multiple of the chunk size: the rest of the chunk stays
// zero). Its data goes to the next free data chunk, as the kernel
// allocates them: chunk 2 + k + ⌊k/E⌋ for the k-th exception when all came
// through Add.
func (cw *CowWriter) Add(oldChunk uint64, data []byte) error {
	return cw.AddAt(Exception{OldChunk: oldChunk, NewChunk: uint64(cw.nextFree)}, data)
}

// AddAt appends e to the list as it is and writes data into chunk
// e.NewChunk, which must be a data chunk (not the header, not a metadata
// area). It lets a caller reproduce a list whose order differs from the
// allocation order (copies completing out of order). Later Adds allocate
// after the highest chunk used so far. data may be empty: the entry is
// written, the chunk is not.
func (cw *CowWriter) AddAt(e Exception, data []byte) error {
	if cw.closed {
		return fmt.Errorf("COW writer: add after close")
	}
	cb := cw.g.ChunkBytes()
	if int64(len(data)) > cb {
		return fmt.Errorf("COW writer: old chunk %d: %d bytes of data for a %d-byte chunk", e.OldChunk, len(data), cb)
	}
	if e.NewChunk == 0 || cw.g.IsMetadataChunk(e.NewChunk) || e.NewChunk > uint64(1<<62)/uint64(cb) {
		return fmt.Errorf("COW writer: old chunk %d: chunk %d is not a data chunk", e.OldChunk, e.NewChunk)
	}
	nc := int64(e.NewChunk)
	if len(data) > 0 {
		if _, err := cw.w.WriteAt(data, nc*cb); err != nil {
			return fmt.Errorf("COW writer: data of old chunk %d at chunk %d: %w", e.OldChunk, nc, err)
		}
	}
	if err := cw.appendEntry(e); err != nil {
		return err
	}
	cw.n++
	cw.maxChunk = max(cw.maxChunk, nc)
	if nc >= cw.nextFree {
		cw.nextFree = nc + 1
		if cw.g.IsMetadataChunk(uint64(cw.nextFree)) {
			cw.nextFree++
		}
	}
	return nil
}

// entryOffset is the file offset of list entry i.
func (cw *CowWriter) entryOffset(i int64) int64 {
	e := cw.g.PerArea()
	return cw.g.AreaChunk(i/e)*cw.g.ChunkBytes() + (i%e)*CowExceptionSize
}

// appendEntry buffers entry number cw.n, flushing the block first when the
// entry does not follow it in the same block.
func (cw *CowWriter) appendEntry(e Exception) error {
	off := cw.entryOffset(cw.n)
	if len(cw.blk) > 0 && (off != cw.blkOff+int64(len(cw.blk)) || len(cw.blk) == cap(cw.blk)) {
		if err := cw.flush(); err != nil {
			return err
		}
	}
	if len(cw.blk) == 0 {
		cw.blkOff = off
	}
	le := binary.LittleEndian
	cw.blk = le.AppendUint64(cw.blk, e.OldChunk)
	cw.blk = le.AppendUint64(cw.blk, e.NewChunk)
	return nil
}

func (cw *CowWriter) flush() error {
	if len(cw.blk) == 0 {
		return nil
	}
	if _, err := cw.w.WriteAt(cw.blk, cw.blkOff); err != nil {
		return fmt.Errorf("COW writer: metadata at offset %d: %w", cw.blkOff, err)
	}
	cw.blk = cw.blk[:0]
	return nil
}

// Stats reports the layout so far; Size is what Close would make it.
func (cw *CowWriter) Stats() CowWriteStats {
	cb := cw.g.ChunkBytes()
	lastArea := cw.n / cw.g.PerArea()
	// The terminator's area and every data chunk must lie inside the file.
	need := max(cw.g.AreaChunk(lastArea), cw.maxChunk) + 1
	if cw.opts.Reserve > 0 {
		// Room for Reserve more allocations from nextFree on, as
		// Geometry.CowFileSize sizes a new store: the last of them plus
		// one chunk (the next area, when that one ends an area).
		last := cw.g.DataChunk(cw.dataIndex(cw.nextFree) + cw.opts.Reserve - 1)
		need = max(need, last+2)
	}
	return CowWriteStats{Exceptions: cw.n, LastArea: lastArea, NextFree: cw.nextFree, Size: need * cb}
}

// dataIndex is k for data chunk c = DataChunk(k).
func (cw *CowWriter) dataIndex(c int64) int64 {
	d := c - CowHeaderChunks // area 0 is d = 0; each area and its data span E+1 chunks
	e := cw.g.PerArea()
	return d/(e+1)*e + d%(e+1) - 1
}

// Close writes the pending metadata, the terminator (a zero entry after
// the last one: in the last area, or slot 0 of the next area when the last
// is full), then the header, and grows the file to Stats().Size when w is a
// file (it never shrinks it). It does not sync or close w.
func (cw *CowWriter) Close() (CowWriteStats, error) {
	st := cw.Stats()
	if cw.closed {
		return st, nil
	}
	cw.closed = true
	if err := cw.appendEntry(Exception{}); err != nil {
		return st, err
	}
	if err := cw.flush(); err != nil {
		return st, err
	}
	if f, ok := cw.w.(interface {
		Stat() (os.FileInfo, error)
		Truncate(int64) error
	}); ok {
		fi, err := f.Stat()
		if err != nil {
			return st, fmt.Errorf("COW writer: %w", err)
		}
		if fi.Mode().IsRegular() && fi.Size() < st.Size {
			if err := f.Truncate(st.Size); err != nil {
				return st, fmt.Errorf("COW writer: grow to %d bytes: %w", st.Size, err)
			}
		}
	}
	valid := uint32(1)
	if cw.opts.Invalid {
		valid = 0
	}
	h := CowHeader{Magic: CowMagic, Valid: valid, Version: CowVersion, ChunkSectors: cw.g.ChunkSectors}
	if _, err := cw.w.WriteAt(h.Append(nil), 0); err != nil {
		return st, fmt.Errorf("COW writer: header: %w", err)
	}
	return st, nil
}
