package session

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

// extSuper builds the first bytes of an ext superblock with the given
// magic and feature_compat word.
func extSuper(magic uint16, compat uint32) []byte {
	b := make([]byte, extCompatOff+4)
	binary.LittleEndian.PutUint16(b[extMagicOff:], magic)
	binary.LittleEndian.PutUint32(b[extCompatOff:], compat)
	return b
}

func TestProbeExtJournal(t *testing.T) {
	for _, c := range []struct {
		name string
		b    []byte
		want ExtJournal
		err  string
	}{
		// mkfs.ext4's defaults: has_journal, ext_attr, resize_inode, dir_index (0x3c).
		{"default", extSuper(0xEF53, 0x3c), ExtJournal{Journal: true}, ""},
		{"fast_commit", extSuper(0xEF53, 0x43c), ExtJournal{Journal: true, FastCommit: true}, ""},
		{"ext2", extSuper(0xEF53, 0x38), ExtJournal{}, ""},
		{"bad magic", extSuper(0x1234, 0x43c), ExtJournal{}, "magic 0x1234"},
		{"short", extSuper(0xEF53, 0x3c)[:extCompatOff], ExtJournal{}, "read ext superblock"},
	} {
		img := append(make([]byte, extSuperblock), c.b...)
		got, err := ProbeExtJournal(bytes.NewReader(img))
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: error %v, want one containing %q", c.name, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: got %+v, %v; want %+v", c.name, got, err, c.want)
		}
	}
}

// FuzzExtJournal: any bytes give features or an error, never a panic;
// features only under the ext magic, and exactly the two compat bits.
func FuzzExtJournal(f *testing.F) {
	f.Add(extSuper(0xEF53, 0x43c))
	f.Add(extSuper(0xEF53, 0x3c)[:50])
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parseExtJournal(b)
		if err != nil {
			return
		}
		if len(b) < extCompatOff+4 || binary.LittleEndian.Uint16(b[extMagicOff:]) != extMagic {
			t.Fatalf("accepted %x as %+v", b, got)
		}
		compat := binary.LittleEndian.Uint32(b[extCompatOff:])
		if got.Journal != (compat&extHasJournal != 0) || got.FastCommit != (compat&extFastCommit != 0) {
			t.Fatalf("%+v from compat %#x", got, compat)
		}
	})
}
