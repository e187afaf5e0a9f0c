package storedev

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/dmsnap/dmsnap/internal/crc32c"
)

// The header's place and size. The filesystem starts DataOffset bytes into
// the device: blkid and the kernel's own probes look for a filesystem at
// the start of a device, so they find none on the raw device, only
// dmsnap's magic, and nothing mounts the raw device by its filesystem's
// UUID while dmsnap's linear device is down. DataOffset is a multiple of
// 4 KiB, so the COW can go straight to the device below (dm/below.go).
const (
	HeaderSize = 512
	DataOffset = 1 << 20
	Magic      = "DMSNAPST"
	// headerVersion is the layout below; a newer one is refused.
	headerVersion = 1
)

// Header layout (little endian):
//
//	0   8  magic "DMSNAPST"
//	8   4  version (1)
//	12  4  flags (0)
//	16 16  store UUID (random)
//	32  8  data offset, bytes (a multiple of 4096)
//	40  8  data length, bytes (a multiple of 4096)
//	48 16  filesystem type, NUL-padded: "ext4" or "xfs"
//	64  8  creation time, Unix seconds
//	72 436 zero
//	508 4  CRC-32C of bytes 0..507
const (
	offVersion = 8
	offFlags   = 12
	offUUID    = 16
	offData    = 32
	offLength  = 40
	offFS      = 48
	offCreated = 64
	offCRC     = HeaderSize - 4
	fsLen      = 16
)

// Header is what the first sector of a managed store's device says.
type Header struct {
	UUID       [16]byte
	DataOffset uint64 // bytes into the device
	DataLength uint64 // bytes
	FS         string // ext4 or xfs
	Created    int64  // Unix seconds
}

// UUIDString is the store's UUID as 32 hex digits.
func (h Header) UUIDString() string { return hex.EncodeToString(h.UUID[:]) }

// ErrNoHeader: the bytes do not start with dmsnap's magic (not a managed
// store at all, as opposed to a damaged one).
var ErrNoHeader = errors.New("no dmsnap store header")

// FSTypes are the filesystems a managed store may carry: those whose
// files' extents dmsnap can map and pin (dm.MapFile).
var FSTypes = []string{"ext4", "xfs"}

func knownFS(fs string) bool {
	for _, f := range FSTypes {
		if f == fs {
			return true
		}
	}
	return false
}

// Marshal renders h as the device's first HeaderSize bytes.
func (h Header) Marshal() ([]byte, error) {
	if err := h.check(); err != nil {
		return nil, err
	}
	b := make([]byte, HeaderSize)
	copy(b, Magic)
	binary.LittleEndian.PutUint32(b[offVersion:], headerVersion)
	copy(b[offUUID:], h.UUID[:])
	binary.LittleEndian.PutUint64(b[offData:], h.DataOffset)
	binary.LittleEndian.PutUint64(b[offLength:], h.DataLength)
	copy(b[offFS:offFS+fsLen], h.FS)
	binary.LittleEndian.PutUint64(b[offCreated:], uint64(h.Created))
	binary.LittleEndian.PutUint32(b[offCRC:], crc32c.Checksum(b[:offCRC]))
	return b, nil
}

func (h Header) check() error {
	switch {
	case h.UUID == [16]byte{}:
		return fmt.Errorf("store header: no UUID")
	case h.DataOffset == 0 || h.DataOffset%4096 != 0:
		return fmt.Errorf("store header: data offset %d is not a positive multiple of 4096", h.DataOffset)
	case h.DataLength == 0 || h.DataLength%4096 != 0:
		return fmt.Errorf("store header: data length %d is not a positive multiple of 4096", h.DataLength)
	case h.DataOffset+h.DataLength < h.DataOffset:
		return fmt.Errorf("store header: data offset %d + length %d overflows", h.DataOffset, h.DataLength)
	case !knownFS(h.FS):
		return fmt.Errorf("store header: filesystem %q is not one of %v", h.FS, FSTypes)
	}
	return nil
}

// ParseHeader decodes a device's first bytes (at least HeaderSize). Bytes
// without the magic are ErrNoHeader; a header with the magic that fails
// its checksum or its checks is damaged, and says how.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize || !bytes.Equal(b[:len(Magic)], []byte(Magic)) {
		return Header{}, ErrNoHeader
	}
	b = b[:HeaderSize]
	if got, want := binary.LittleEndian.Uint32(b[offCRC:]), crc32c.Checksum(b[:offCRC]); got != want {
		return Header{}, fmt.Errorf("store header is damaged: checksum %08x, computed %08x", got, want)
	}
	if v := binary.LittleEndian.Uint32(b[offVersion:]); v != headerVersion {
		return Header{}, fmt.Errorf("store header version %d: this dmsnap reads version %d only", v, headerVersion)
	}
	if f := binary.LittleEndian.Uint32(b[offFlags:]); f != 0 {
		return Header{}, fmt.Errorf("store header has flags %#x this dmsnap does not know", f)
	}
	if !bytes.Equal(b[offCreated+8:offCRC], make([]byte, offCRC-offCreated-8)) {
		return Header{}, fmt.Errorf("store header has bytes this dmsnap does not know (a newer layout?)")
	}
	var h Header
	copy(h.UUID[:], b[offUUID:])
	h.DataOffset = binary.LittleEndian.Uint64(b[offData:])
	h.DataLength = binary.LittleEndian.Uint64(b[offLength:])
	h.FS = string(bytes.TrimRight(b[offFS:offFS+fsLen], "\x00"))
	h.Created = int64(binary.LittleEndian.Uint64(b[offCreated:]))
	if err := h.check(); err != nil {
		return Header{}, err
	}
	return h, nil
}
