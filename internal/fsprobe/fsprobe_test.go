package fsprobe

import (
	"bytes"
	"encoding/binary"
	"testing"
)

var testUUID = []byte{0x0b, 0x9a, 0x4c, 0x8e, 0x11, 0x11, 0x4d, 0x7e, 0x9d, 0x43, 0x5a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f}

const testUUIDText = "0b9a4c8e-1111-4d7e-9d43-5a1b2c3d4e5f"

// image builds a device image of size bytes with patches applied.
func image(size int, patches map[int][]byte) *bytes.Reader {
	b := make([]byte, size)
	for off, p := range patches {
		copy(b[off:], p)
	}
	return bytes.NewReader(b)
}

func le16(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }
func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

func TestProbe(t *testing.T) {
	sb := extSuperblock
	cases := []struct {
		name     string
		img      *bytes.Reader
		typ, uid string
	}{
		{"ext2", image(8192, map[int][]byte{sb + extMagicOff: le16(extMagic), sb + extUUIDOff: testUUID}), "ext2", testUUIDText},
		{"ext3", image(8192, map[int][]byte{sb + extMagicOff: le16(extMagic), sb + extCompatOff: le32(extHasJournal), sb + extUUIDOff: testUUID}), "ext3", testUUIDText},
		{"ext4", image(8192, map[int][]byte{sb + extMagicOff: le16(extMagic), sb + extCompatOff: le32(extHasJournal),
			sb + extIncompatOff: le32(0x2c2), sb + extUUIDOff: testUUID}), "ext4", testUUIDText},
		{"xfs", image(8192, map[int][]byte{0: []byte("XFSB"), xfsUUIDOff: testUUID}), "xfs", testUUIDText},
		{"btrfs", image(0x11000, map[int][]byte{btrfsSuperblock + btrfsMagicOff: []byte("_BHRfS_M"), btrfsSuperblock + btrfsFSIDOff: testUUID}), "btrfs", testUUIDText},
		{"ext4 without UUID", image(4096, map[int][]byte{sb + extMagicOff: le16(extMagic), sb + extIncompatOff: le32(0x40)}), "ext4", ""},
		{"nothing", image(1<<20, nil), "", ""},
		{"tiny device", image(100, nil), "", ""},
		{"empty device", image(0, nil), "", ""},
	}
	for _, c := range cases {
		typ, uid, err := Probe(c.img)
		if err != nil || typ != c.typ || uid != c.uid {
			t.Errorf("%s: %q %q %v, want %q %q", c.name, typ, uid, err, c.typ, c.uid)
		}
	}
}
