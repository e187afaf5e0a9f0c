package snapstore

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/dmsnap/dmsnap/internal/crc32c"
)

// blocks.crc (FORMAT.md, "blocks.crc"): one little-endian CRC-32C
// (Castagnoli) per blocks.map record, in blocks.map order, no header.
const CRCSize = 4

// ChecksumData is the CRC-32C of a record's pre-image bytes.
func ChecksumData(b []byte) uint32 { return crc32c.Checksum(b) }

// crcReader reads blocks.crc entries one at a time.
type crcReader struct {
	r    *bufio.Reader
	name string
	n    int64
	buf  [CRCSize]byte
}

func newCRCReader(r io.Reader, name string) *crcReader {
	return &crcReader{r: bufio.NewReaderSize(r, 16<<10), name: name}
}

// next returns the CRC of the next record, or io.EOF at the end.
func (c *crcReader) next() (uint32, error) {
	k, err := io.ReadFull(c.r, c.buf[:])
	switch {
	case err == io.EOF:
		return 0, io.EOF
	case errors.Is(err, io.ErrUnexpectedEOF):
		return 0, formatErr(c.name, c.n*CRCSize, c.n, ErrTruncated, "file ends %d bytes into a %d-byte entry", k, CRCSize)
	case err != nil:
		return 0, fmt.Errorf("%s: read entry %d: %w", c.name, c.n, err)
	}
	c.n++
	return binary.LittleEndian.Uint32(c.buf[:]), nil
}
