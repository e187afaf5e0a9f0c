package storedev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/dmsnap/dmsnap/internal/fsprobe"
)

// mdMagic is an md RAID superblock's magic (little endian).
const mdMagic = 0xa92b4efc

// Signature names what a device already holds that store create would
// destroy ("" when it finds nothing it knows): a filesystem (fsprobe),
// a dmsnap store header, an LVM physical volume, LUKS, swap, an md RAID
// member, a partition table or boot sector. It reads the first 64 KiB
// and the last 128 KiB of a device of size bytes.
func Signature(r io.ReaderAt, size int64) (string, error) {
	if fs, uuid, err := fsprobe.Probe(io.NewSectionReader(r, 0, size)); err != nil {
		return "", err
	} else if fs != "" {
		return fmt.Sprintf("a filesystem (%s, UUID %s)", fs, uuid), nil
	}
	head := make([]byte, min(size, 64<<10))
	if _, err := r.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read the device's start: %w", err)
	}
	at := func(off int, s string) bool {
		return off+len(s) <= len(head) && string(head[off:off+len(s)]) == s
	}
	if _, err := ParseHeader(head); !errors.Is(err, ErrNoHeader) {
		return "a dmsnap store (dmsnap store up brings it back)", nil
	}
	for sector := 0; sector < 4; sector++ {
		if at(sector*512, "LABELONE") && at(sector*512+24, "LVM2") {
			return "an LVM physical volume", nil
		}
	}
	switch {
	case at(0, "LUKS\xba\xbe"):
		return "a LUKS encrypted volume", nil
	case at(4096-10, "SWAPSPACE2") || at(4096-10, "SWAP-SPACE"):
		return "a swap area", nil
	case at(512, "EFI PART"):
		return "a GPT partition table", nil
	case len(head) >= 512 && head[510] == 0x55 && head[511] == 0xaa:
		return "a partition table or boot sector (MBR)", nil
	}
	md := []int64{0, 4096} // md 1.1, 1.2
	if size >= 128<<10 {
		md = append(md, size&^(64<<10-1)-64<<10, (size-8192)&^4095) // md 0.90, 1.0
	}
	for _, off := range md {
		var b [4]byte
		if off < 0 || off+4 > size {
			continue
		}
		if _, err := r.ReadAt(b[:], off); err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("read at %d: %w", off, err)
		}
		if binary.LittleEndian.Uint32(b[:]) == mdMagic {
			return "an md RAID member", nil
		}
	}
	return "", nil
}
