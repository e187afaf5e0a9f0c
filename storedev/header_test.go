package storedev

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/internal/crc32c"
)

func sampleHeader() Header {
	return Header{UUID: [16]byte{0xde, 0xad, 15: 1}, DataOffset: DataOffset, DataLength: 512 << 20, FS: "ext4", Created: 1765000000}
}

func TestHeaderRoundTrip(t *testing.T) {
	h := sampleHeader()
	b, err := h.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != HeaderSize || string(b[:8]) != Magic {
		t.Fatalf("header bytes %x", b[:16])
	}
	got, err := ParseHeader(b)
	if err != nil || got != h {
		t.Fatalf("parsed %+v, %v; want %+v", got, err, h)
	}
	if h.UUIDString() != "dead0000000000000000000000000001" {
		t.Fatal(h.UUIDString())
	}
}

func TestHeaderRefuses(t *testing.T) {
	good, _ := sampleHeader().Marshal()
	resum := func(b []byte) []byte {
		binary.LittleEndian.PutUint32(b[offCRC:], crc32cOf(b[:offCRC]))
		return b
	}
	cases := []struct {
		name string
		b    []byte
		want string
	}{
		{"short", good[:100], "no dmsnap store header"},
		{"no magic", make([]byte, HeaderSize), "no dmsnap store header"},
		{"flipped bit", func() []byte { b := bytes.Clone(good); b[40] ^= 1; return b }(), "checksum"},
		{"version", func() []byte { b := bytes.Clone(good); b[offVersion] = 2; return resum(b) }(), "version 2"},
		{"flags", func() []byte { b := bytes.Clone(good); b[offFlags] = 1; return resum(b) }(), "flags"},
		{"odd offset", func() []byte { b := bytes.Clone(good); b[offData] = 1; return resum(b) }(), "data offset"},
		{"fs", func() []byte { b := bytes.Clone(good); copy(b[offFS:], "zfs\x00"); return resum(b) }(), `filesystem "zfs"`},
	}
	for _, c := range cases {
		if _, err := ParseHeader(c.b); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	if _, err := (Header{}).Marshal(); err == nil {
		t.Error("a header without a UUID was marshalled")
	}
}

func TestSignature(t *testing.T) {
	const size = 4 << 20
	cases := []struct {
		name string
		at   int64
		put  string
		want string
	}{
		{"blank", 0, "", ""},
		{"xfs", 0, "XFSB", "a filesystem (xfs"},
		{"LUKS", 0, "LUKS\xba\xbe", "LUKS"},
		{"swap", 4096 - 10, "SWAPSPACE2", "swap"},
		{"GPT", 512, "EFI PART", "GPT"},
		{"MBR", 510, "\x55\xaa", "MBR"},
		{"md 1.2", 4096, "\xfc\x4e\x2b\xa9", "md RAID"},
		{"md 0.90", size&^(64<<10-1) - 64<<10, "\xfc\x4e\x2b\xa9", "md RAID"},
		{"md 1.0", (size - 8192) &^ 4095, "\xfc\x4e\x2b\xa9", "md RAID"},
	}
	for _, c := range cases {
		b := make([]byte, size)
		copy(b[c.at:], c.put)
		got, err := Signature(bytes.NewReader(b), size)
		if err != nil || (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("%s: %q, %v; want %q", c.name, got, err, c.want)
		}
	}
}

func TestParseRecords(t *testing.T) {
	const u = "0123456789abcdef0123456789abcdef"
	ok := `{"version":1,"stores":[{"path":"/snapshot","uuid":"` + u + `","fs":"xfs","device":"/dev/sdb1","dev":"8:17","created":1}]}`
	rs, err := ParseRecords([]byte(ok), "t")
	if err != nil || len(rs.Stores) != 1 || rs.ByPath("/snapshot") == nil || rs.ByUUID(u).Dev.Minor != 17 {
		t.Fatalf("%+v %v", rs, err)
	}
	for _, bad := range []string{
		`{"version":2,"stores":[]}`,
		`{"version":1,"stores":[],"x":1}`,
		strings.Replace(ok, `"/snapshot"`, `"snapshot"`, 1),
		strings.Replace(ok, `"/snapshot"`, `"/a/../snapshot"`, 1),
		strings.Replace(ok, u, "XYZ", 1),
		strings.Replace(ok, `"xfs"`, `"vfat"`, 1),
		strings.Replace(ok, `}]}`, `},{"path":"/snapshot","uuid":"`+u+`","fs":"xfs","dev":"8:1"}]}`, 1),
	} {
		if _, err := ParseRecords([]byte(bad), "t"); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

func FuzzParseHeader(f *testing.F) {
	good, _ := sampleHeader().Marshal()
	f.Add(good)
	f.Add(make([]byte, HeaderSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err != nil {
			if errors.Is(err, ErrNoHeader) && len(b) >= HeaderSize && string(b[:8]) == Magic {
				t.Fatal("a header with the magic reported as no header")
			}
			return
		}
		out, err := h.Marshal()
		if err != nil || !bytes.Equal(out, b[:HeaderSize]) {
			t.Fatalf("accepted header does not round-trip: %v", err)
		}
	})
}

func FuzzParseRecords(f *testing.F) {
	f.Add([]byte(`{"version":1,"stores":[{"path":"/snapshot","uuid":"0123456789abcdef0123456789abcdef","fs":"ext4","device":"/dev/sdb1","dev":"8:17","created":1}]}`))
	f.Add([]byte(`{"version":1,"stores":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		rs, err := ParseRecords(b, "fuzz")
		if err != nil {
			return
		}
		for _, r := range rs.Stores {
			if len(r.UUID) != 32 || !knownFS(r.FS) || rs.ByPath(r.Path) == nil {
				t.Fatalf("accepted a bad record %+v", r)
			}
		}
	})
}

func crc32cOf(b []byte) uint32 { return crc32c.Checksum(b) }
