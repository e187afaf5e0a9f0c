package snapstore

import (
	"fmt"
	"io"
	"sort"
)

// Reconstructor shows a device as it was before a session, in userspace:
// the device's current bytes with the session's pre-images laid over them.
// It is the reference the VM tests compare the kernel's snapshot device and
// the restore package's output with. It holds the session's records in
// memory (an index, no data) and checks each pre-image's CRC as it reads.
type Reconstructor struct {
	dev     io.ReaderAt
	devSize int64
	s       *Session
	entries []Entry // sorted by sector, non-overlapping
}

// NewReconstructor indexes s over dev, the device (or image) the session
// was taken of, devSize bytes long.
func NewReconstructor(dev io.ReaderAt, devSize int64, s *Session) (*Reconstructor, error) {
	entries, err := s.AllEntries()
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if e.End() > devSize {
			return nil, fmt.Errorf("%s: record %d (sector %d) ends at byte %d, past the end of the device (%d bytes)",
				s.Dir, e.Index, e.Sector, e.End(), devSize)
		}
	}
	return &Reconstructor{dev: dev, devSize: devSize, s: s, entries: entries}, nil
}

// Size is the device size.
func (r *Reconstructor) Size() int64 { return r.devSize }

// ReadAt fills p with the pre-session bytes at off (io.ReaderAt).
func (r *Reconstructor) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("reconstruct: negative offset %d", off)
	}
	if off >= r.devSize {
		return 0, io.EOF
	}
	n := len(p)
	var eof error
	if int64(n) > r.devSize-off {
		n, eof = int(r.devSize-off), io.EOF
	}
	p = p[:n]
	if err := readFull(r.dev, p, off); err != nil {
		return 0, fmt.Errorf("reconstruct: read device at %d: %w", off, err)
	}
	end := off + int64(n)
	// First record that ends after off.
	i := sort.Search(len(r.entries), func(i int) bool { return r.entries[i].End() > off })
	var buf []byte
	for ; i < len(r.entries) && r.entries[i].Start() < end; i++ {
		e := r.entries[i]
		var err error
		if buf, err = r.s.ReadData(e, buf); err != nil {
			return 0, err
		}
		lo, hi := max(off, e.Start()), min(end, e.End())
		copy(p[lo-off:hi-off], buf[lo-e.Start():hi-e.Start()])
	}
	return n, eof
}
