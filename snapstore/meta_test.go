//go:build !vm

package snapstore

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

func sampleMeta() Meta {
	at := time.Date(2024, 3, 1, 12, 0, 2, 123456789, time.UTC)
	return Meta{
		Device:           "/dev/sdb1",
		Timestamp:        at.UnixNano(),
		BlockSize:        4096,
		FsType:           "ext4",
		TotalBlocksSaved: 3,
		SnapshotType:     SnapshotTypeCOW,
		Dmsnap: &DmsnapMeta{
			FormatVersion: MetaFormatVersion,
			Name:          "sdb1",
			Sequence:      7,
			Device:        Device{Path: "/dev/sdb1", Size: 64 << 20, DevNum: DevNum{Major: 8, Minor: 17}, FSUUID: "0b2c5b8e-9e55-4a4f-8f0e-2f6a3c1d9e01"},
			ChunkSize:     4096,
			Layout:        LayoutCOW,
			Times: Times{
				Armed:     at.Add(-2 * time.Second),
				Mounted:   at,
				Unmounted: at.Add(time.Hour),
				Closed:    at.Add(time.Hour + time.Second),
			},
			State: StateComplete,
			Checksums: Checksums{
				RecordCRC: CRCAlgorithm,
				BlocksMap: strings.Repeat("ab", 32),
				BlocksCRC: strings.Repeat("cd", 32),
			},
		},
	}
}

func TestMetaRoundTrip(t *testing.T) {
	m := sampleMeta()
	b, err := EncodeMeta(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseMeta(b, "meta.json")
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if !isHexSum(got.Dmsnap.Checksums.Meta) {
		t.Fatalf("meta_sha256 %q", got.Dmsnap.Checksums.Meta)
	}
	got.Dmsnap.Checksums.Meta = ""
	if !reflect.DeepEqual(got, m) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", *got.Dmsnap, *m.Dmsnap)
	}
	again, _ := EncodeMeta(got)
	if !bytes.Equal(again, b) {
		t.Fatal("encoding is not deterministic")
	}
	// The seed's keys come first, in the seed's order.
	if !bytes.HasPrefix(b, []byte("{\n  \"device\": \"/dev/sdb1\",\n  \"timestamp\": ")) {
		t.Fatalf("meta.json starts\n%s", b[:60])
	}
}

func TestMetaDetectsEveryFlippedBit(t *testing.T) {
	b, err := EncodeMeta(sampleMeta())
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		for bit := 0; bit < 8; bit++ {
			c := bytes.Clone(b)
			c[i] ^= 1 << bit
			m, err := ParseMeta(c, "s/meta.json")
			if err == nil {
				t.Fatalf("bit %d of byte %d (%q) flipped: parsed fine as %+v", bit, i, b[i], m)
			}
			var fe *FormatError
			if !errors.As(err, &fe) || fe.File != "s/meta.json" {
				t.Fatalf("bit %d of byte %d: error %v does not name meta.json", bit, i, err)
			}
		}
	}
}

func TestMetaUnknownVersion(t *testing.T) {
	m := sampleMeta()
	m.Dmsnap.FormatVersion = MetaFormatVersion + 1
	b, _ := EncodeMeta(m)
	_, err := ParseMeta(b, "meta.json")
	if !errors.Is(err, ErrUnsupportedVersion) || !strings.Contains(err.Error(), fmt.Sprintf("session format %d", MetaFormatVersion+1)) || !strings.Contains(err.Error(), "upgrade dmsnap") {
		t.Fatalf("err = %v", err)
	}
}

// Format 1 (before sequence numbers) is still read; format 2 requires a
// sequence, format 1 allows none.
func TestMetaSequenceByVersion(t *testing.T) {
	for _, tc := range []struct {
		version, seq int
		ok           bool
	}{{1, 0, true}, {1, 3, false}, {2, 3, true}, {2, 0, false}} {
		m := sampleMeta()
		m.Dmsnap.FormatVersion, m.Dmsnap.Sequence = tc.version, tc.seq
		b, err := EncodeMeta(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseMeta(b, "meta.json")
		if (err == nil) != tc.ok {
			t.Errorf("format %d sequence %d: %v, want ok=%v", tc.version, tc.seq, err, tc.ok)
		}
		if err == nil && got.Dmsnap.Sequence != tc.seq {
			t.Errorf("format %d: sequence read back as %d", tc.version, got.Dmsnap.Sequence)
		}
	}
}

// seedMeta is meta.json exactly as the seed's kernel module printed it.
func seedMeta(dev string, ts int64, blocks int) []byte {
	return fmt.Appendf(nil, "{\n  \"device\": \"%s\",\n  \"timestamp\": %d,\n  \"block_size\": %d,\n  \"fs_type\": \"%s\",\n  \"total_blocks_saved\": %d,\n  \"snapshot_type\": \"COW\"\n}\n",
		dev, ts, 4096, "singlefilefs", blocks)
}

func TestMetaSeed(t *testing.T) {
	m, err := ParseMeta(seedMeta("/dev/loop0", 1700000000123456789, 3), "meta.json")
	if err != nil {
		t.Fatal(err)
	}
	want := Meta{Device: "/dev/loop0", Timestamp: 1700000000123456789, BlockSize: 4096, FsType: "singlefilefs", TotalBlocksSaved: 3, SnapshotType: "COW"}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("got %+v, want %+v", m, want)
	}
}

func TestMetaRejects(t *testing.T) {
	seed := string(seedMeta("/dev/loop0", 1, 0))
	for _, tc := range []struct {
		name, json string
		kind       error
		msg        string
	}{
		{"not json", "{\n  \"device\": ", ErrCorrupt, "not valid JSON"},
		{"unknown key", strings.Replace(seed, `"fs_type"`, `"fs_typf"`, 1), ErrCorrupt, `unknown top-level key "fs_typf"`},
		{"missing key", strings.Replace(seed, ",\n  \"snapshot_type\": \"COW\"", "", 1), ErrCorrupt, `"snapshot_type" is missing`},
		{"type", strings.Replace(seed, `"COW"`, `"ROW"`, 1), ErrCorrupt, `snapshot_type is "ROW"`},
		{"float timestamp", strings.Replace(seed, `"timestamp": 1`, `"timestamp": 1.5`, 1), ErrCorrupt, "timestamp"},
		{"dmsnap without version", strings.Replace(seed, "\n}", ",\n  \"dmsnap\": {}\n}", 1), ErrCorrupt, "format_version is missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseMeta([]byte(tc.json), "meta.json")
			if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %v saying %q", err, tc.kind, tc.msg)
			}
		})
	}
}

func TestDevNumText(t *testing.T) {
	var d DevNum
	if err := d.UnmarshalText([]byte("253:4")); err != nil || d != (DevNum{Major: 253, Minor: 4}) {
		t.Fatalf("%v %v", d, err)
	}
	for _, bad := range []string{"", "8", "8:", ":1", "a:b", "8:99999999999"} {
		if err := d.UnmarshalText([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
