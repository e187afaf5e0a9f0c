package snapstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
)

// The kernel's persistent exception store, as drivers/md/dm-snap-persistent.c
// lays it out (FORMAT.md, "cow.img"). All integers are little-endian.
const (
	// SectorSize is the unit of device-mapper and of blocks.map's sector
	// field: always 512 bytes, whatever the device's block size.
	SectorSize = 512

	// CowMagic is "SnAp" read as a little-endian u32 (SNAP_MAGIC).
	CowMagic uint32 = 0x70416e53
	// CowVersion is the only on-disk version the kernel has ever written
	// (SNAPSHOT_DISK_VERSION); the kernel refuses any other.
	CowVersion uint32 = 1
	// CowHeaderSize is the meaningful part of chunk 0: magic, valid,
	// version, chunk_size (struct disk_header). The rest of chunk 0 is zero.
	CowHeaderSize = 16
	// CowExceptionSize is one metadata entry: old_chunk u64, new_chunk u64
	// (struct disk_exception).
	CowExceptionSize = 16
	// CowHeaderChunks is the number of chunks before the first metadata
	// area (NUM_SNAPSHOT_HDR_CHUNKS).
	CowHeaderChunks = 1

	// MinChunkSectors and MaxChunkSectors bound the chunk size the kernel
	// accepts (dm_exception_store_set_chunk_size): a power of two, a
	// multiple of the devices' logical block size (so at least one sector)
	// and at most INT_MAX >> SECTOR_SHIFT sectors, which makes 2^21 sectors
	// (1 GiB) the largest power of two.
	MinChunkSectors = 1
	MaxChunkSectors = 1 << 21

	// cowReadBlock bounds a single metadata read so memory does not grow
	// with the chunk size (a 1 GiB chunk has a 1 GiB metadata area).
	cowReadBlock = 64 << 10
)

// CowHeader is chunk 0 of the store (struct disk_header).
type CowHeader struct {
	Magic        uint32 // CowMagic
	Valid        uint32 // 1 while usable, 0 once the kernel dropped the snapshot
	Version      uint32 // CowVersion
	ChunkSectors uint32 // chunk size in 512-byte sectors
}

// ParseCowHeader decodes the first CowHeaderSize bytes of b without judging
// them; see CowHeader.Validate.
func ParseCowHeader(b []byte) (CowHeader, error) {
	if len(b) < CowHeaderSize {
		return CowHeader{}, fmt.Errorf("COW header needs %d bytes, have %d: %w", CowHeaderSize, len(b), ErrTruncated)
	}
	le := binary.LittleEndian
	return CowHeader{
		Magic:        le.Uint32(b[0:4]),
		Valid:        le.Uint32(b[4:8]),
		Version:      le.Uint32(b[8:12]),
		ChunkSectors: le.Uint32(b[12:16]),
	}, nil
}

// Append appends the 16 header bytes to b.
func (h CowHeader) Append(b []byte) []byte {
	le := binary.LittleEndian
	b = le.AppendUint32(b, h.Magic)
	b = le.AppendUint32(b, h.Valid)
	b = le.AppendUint32(b, h.Version)
	return le.AppendUint32(b, h.ChunkSectors)
}

// Validate checks the header the way the kernel does when it loads an
// existing store (read_header, persistent_read_metadata).
func (h CowHeader) Validate() error {
	switch {
	case h.Magic == 0:
		return ErrUninitialized
	case h.Magic != CowMagic:
		return fmt.Errorf("magic %#08x is not %#08x (\"SnAp\"): not a persistent snapshot store: %w", h.Magic, CowMagic, ErrCorrupt)
	case h.Version != CowVersion:
		return fmt.Errorf("store version %d, only version %d exists: %w", h.Version, CowVersion, ErrUnsupportedVersion)
	}
	return ValidChunkSectors(h.ChunkSectors)
}

// IsValid reports whether the kernel still considered the snapshot usable
// when it last wrote the header. The kernel tests the field for zero only.
func (h CowHeader) IsValid() bool { return h.Valid != 0 }

// ValidChunkSectors reports whether the kernel accepts this chunk size.
func ValidChunkSectors(sectors uint32) error {
	if sectors < MinChunkSectors || sectors > MaxChunkSectors || bits.OnesCount32(sectors) != 1 {
		return fmt.Errorf("chunk size %d sectors is not a power of two between %d and %d: %w",
			sectors, MinChunkSectors, MaxChunkSectors, ErrCorrupt)
	}
	return nil
}

// Geometry is where things live in a store of a given chunk size.
type Geometry struct {
	ChunkSectors uint32
}

// ChunkBytes is the chunk size in bytes.
func (g Geometry) ChunkBytes() int64 { return int64(g.ChunkSectors) * SectorSize }

// PerArea is E, the number of exceptions one metadata area holds: one
// chunk's worth of 16-byte entries. Each area is followed by its E data
// chunks.
func (g Geometry) PerArea() int64 { return g.ChunkBytes() / CowExceptionSize }

// AreaChunk is the chunk index of metadata area a: 1 + a*(E+1)
// (area_location).
func (g Geometry) AreaChunk(a int64) int64 { return CowHeaderChunks + a*(g.PerArea()+1) }

// IsMetadataChunk reports whether chunk c is the header or a metadata area,
// that is, never a data chunk.
func (g Geometry) IsMetadataChunk(c uint64) bool {
	return c < CowHeaderChunks || (c-CowHeaderChunks)%uint64(g.PerArea()+1) == 0
}

// DataChunk is the chunk index the kernel allocates for the k-th exception
// (k from 0) when every exception is committed in allocation order:
// data chunks start at 2 and skip the metadata areas (persistent_prepare_exception).
func (g Geometry) DataChunk(k int64) int64 {
	e := g.PerArea()
	return CowHeaderChunks + 1 + k + k/e
}

// CowFileSize is the size a COW file needs so that every chunk of a device
// of deviceSize bytes can be copied once: the header, every data chunk and
// its metadata area, and the next (empty) area the kernel zeroes when the
// last one fills up; without it the kernel would drop the snapshot when the
// last area fills.
func (g Geometry) CowFileSize(deviceSize int64) int64 {
	cb := g.ChunkBytes()
	chunks := (deviceSize + cb - 1) / cb
	if chunks == 0 {
		return (CowHeaderChunks + 1) * cb
	}
	last := g.DataChunk(chunks - 1)
	return (last + 2) * cb
}

// Exception is one metadata entry: origin chunk OldChunk's pre-image is
// stored in chunk NewChunk of the COW file.
type Exception struct {
	OldChunk uint64
	NewChunk uint64
}

// CowEntry is an Exception with where it was found, for error messages.
type CowEntry struct {
	Exception
	Index  int64 // position in the exception list, from 0
	Area   int64 // metadata area holding it
	Slot   int64 // index inside that area
	Offset int64 // byte offset of the entry in the COW file
}

// CowStats summarises a walk over the exception list.
type CowStats struct {
	Exceptions int64 // entries yielded
	LastArea   int64 // index of the last metadata area read (the one holding the terminator)
}

// Cow reads a persistent exception store.
type Cow struct {
	Header CowHeader
	Geometry
	r    io.ReaderAt
	size int64
	name string
}

// OpenCow reads and checks the header of the store in r, which is size
// bytes long; name is used in error messages (usually the file's path).
// A store whose header says invalid (Header.IsValid() == false) opens fine:
// its exceptions up to the point the kernel gave up are still on disk.
// A store the kernel never initialised yields an error wrapping
// ErrUninitialized.
func OpenCow(r io.ReaderAt, size int64, name string) (*Cow, error) {
	var b [CowHeaderSize]byte
	if size < CowHeaderSize {
		return nil, formatErr(name, 0, -1, ErrTruncated, "file is %d bytes, shorter than the %d-byte header", size, CowHeaderSize)
	}
	if _, err := r.ReadAt(b[:], 0); err != nil {
		return nil, fmt.Errorf("%s: read header: %w", name, err)
	}
	h, _ := ParseCowHeader(b[:])
	if err := h.Validate(); err != nil {
		if errors.Is(err, ErrUninitialized) {
			return nil, formatErr(name, 0, -1, ErrUninitialized, "header magic is zero")
		}
		kind := ErrCorrupt
		if errors.Is(err, ErrUnsupportedVersion) {
			kind = ErrUnsupportedVersion
		}
		return nil, formatErr(name, 0, -1, kind, "%s", trimKind(err, kind))
	}
	return &Cow{Header: h, Geometry: Geometry{ChunkSectors: h.ChunkSectors}, r: r, size: size, name: name}, nil
}

// trimKind drops the trailing ": kind" of err's message, since FormatError
// adds the kind itself.
func trimKind(err, kind error) string {
	s := err.Error()
	suffix := ": " + kind.Error()
	if len(s) > len(suffix) && s[len(s)-len(suffix):] == suffix {
		return s[:len(s)-len(suffix)]
	}
	return s
}

// Size is the size of the store in bytes, as given to OpenCow.
func (c *Cow) Size() int64 { return c.size }

// Walk calls fn for every exception in list order, the order the kernel
// loads them: area 0 slot 0 onward, ending at the first entry whose
// new_chunk is 0; a full area continues in the next one (read_exceptions).
// Memory use is one read block, whatever the store size.
//
// Each entry is checked: its new_chunk must be a data chunk (not the header
// or a metadata area) lying wholly inside the file. A damaged entry or an
// area past the end of the file stops the walk with a *FormatError; the
// entries before it have been passed to fn already. An error from fn stops
// the walk and is returned as is.
//
// Walk does not look for duplicates (the same old_chunk twice): the kernel
// never commits a chunk twice in one store, and what to do with damage of
// that kind is the caller's decision (Convert keeps the first, as the
// kernel's lookup would).
func (c *Cow) Walk(fn func(CowEntry) error) (CowStats, error) {
	cb := c.ChunkBytes()
	perArea := c.PerArea()
	blockLen := min(cb, cowReadBlock)
	buf := make([]byte, blockLen)
	le := binary.LittleEndian
	maxChunk := uint64(c.size / cb) // chunks wholly inside the file are < maxChunk
	var st CowStats
	for area := int64(0); ; area++ {
		chunk := c.AreaChunk(area)
		if chunk < 0 || chunk > c.size/cb-1 {
			return st, formatErr(c.name, chunk*cb, st.Exceptions, ErrTruncated,
				"metadata area %d (chunk %d) lies past the end of the file (%d bytes)", area, chunk, c.size)
		}
		st.LastArea = area
		areaOff := chunk * cb
		for slot := int64(0); slot < perArea; {
			blockOff := areaOff + slot*CowExceptionSize
			n := min(blockLen, (perArea-slot)*CowExceptionSize)
			if err := readFull(c.r, buf[:n], blockOff); err != nil {
				return st, fmt.Errorf("%s: read metadata area %d at offset %d: %w", c.name, area, blockOff, err)
			}
			for i := int64(0); i < n; i += CowExceptionSize {
				e := Exception{OldChunk: le.Uint64(buf[i:]), NewChunk: le.Uint64(buf[i+8:])}
				off := blockOff + i
				if e.NewChunk == 0 {
					return st, nil
				}
				if c.IsMetadataChunk(e.NewChunk) {
					return st, formatErr(c.name, off, st.Exceptions, ErrCorrupt,
						"exception (old chunk %d) points at chunk %d, which is the header or a metadata area", e.OldChunk, e.NewChunk)
				}
				if e.NewChunk >= maxChunk {
					return st, formatErr(c.name, off, st.Exceptions, ErrTruncated,
						"exception (old chunk %d) points at chunk %d, past the end of the file (%d bytes, %d whole chunks)",
						e.OldChunk, e.NewChunk, c.size, maxChunk)
				}
				ent := CowEntry{Exception: e, Index: st.Exceptions, Area: area, Slot: slot + i/CowExceptionSize, Offset: off}
				if err := fn(ent); err != nil {
					return st, err
				}
				st.Exceptions++
			}
			slot += n / CowExceptionSize
		}
		// The area is full: the list goes on in the next one, which the
		// kernel zeroed before committing this one.
	}
}

// readFull reads len(p) bytes at off; a short read is ErrTruncated.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return fmt.Errorf("read %d of %d bytes: %w", n, len(p), ErrTruncated)
	}
	return err
}
