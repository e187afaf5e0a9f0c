//go:build !vm

package snapstore

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// goldenMap is the example of FORMAT.md: a 4 KiB-chunk session of a device
// of 64 MiB + 1536 bytes, whose last chunk is clamped to the device end.
// Offsets are new_chunk × 4096 (layout "cow"): out of sector order, since
// the COW allocates chunks in write order.
var goldenMap = []Record{
	{Sector: 0, Size: 4096, Offset: 2 * 4096},
	{Sector: 8, Size: 4096, Offset: 4 * 4096},
	{Sector: 1024, Size: 4096, Offset: 3 * 4096},
	{Sector: 131072, Size: 1536, Offset: 5 * 4096},
}

func TestBlocksMapGolden(t *testing.T) {
	path := filepath.Join("testdata", "golden", "blocks.map")
	got := EncodeMap(goldenMap)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("EncodeMap differs from %s:\n got % x\nwant % x", path, got, want)
	}
	// Field by field, as FORMAT.md's table says.
	rec := want[RecordSize*3 : RecordSize*4]
	if !bytes.Equal(rec[0:8], []byte{0x00, 0x00, 0x02, 0x00, 0, 0, 0, 0}) || // sector 131072 = 0x20000
		!bytes.Equal(rec[8:12], []byte{0x00, 0x06, 0, 0}) || // size 1536 = 0x600
		!bytes.Equal(rec[12:20], []byte{0x00, 0x50, 0, 0, 0, 0, 0, 0}) { // offset 20480 = 0x5000
		t.Fatalf("record 3 bytes % x", rec)
	}
	back, err := ReadMap(bytes.NewReader(want), path)
	if err != nil || !slices.Equal(back, goldenMap) {
		t.Fatalf("ReadMap = %v, %v", back, err)
	}
}

func TestReadMapRejects(t *testing.T) {
	good := EncodeMap(goldenMap)
	for _, tc := range []struct {
		name   string
		b      []byte
		kind   error
		record int64
		offset int64
	}{
		{"cut in a record", good[:2*RecordSize+7], ErrTruncated, 2, 40},
		{"zero size", EncodeMap([]Record{goldenMap[0], {Sector: 16, Size: 0, Offset: 0}}), ErrCorrupt, 1, 20},
		{"sector overflow", EncodeMap([]Record{{Sector: 1 << 62, Size: 512}}), ErrCorrupt, 0, 0},
		{"offset overflow", EncodeMap([]Record{{Sector: 0, Size: 512, Offset: 1<<64 - 100}}), ErrCorrupt, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := ReadMap(bytes.NewReader(tc.b), "blocks.map")
			var fe *FormatError
			if !errors.As(err, &fe) || !errors.Is(err, tc.kind) || fe.Record != tc.record || fe.Offset != tc.offset {
				t.Fatalf("err = %v, want %v at record %d offset %d", err, tc.kind, tc.record, tc.offset)
			}
			if int64(len(recs)) != tc.record {
				t.Fatalf("%d records before the error, want %d", len(recs), tc.record)
			}
		})
	}
}

func TestSortAndCheck(t *testing.T) {
	idx := func(recs ...Record) []IndexedRecord {
		out := make([]IndexedRecord, len(recs))
		for i, r := range recs {
			out[i] = IndexedRecord{Record: r, Index: int64(i)}
		}
		return out
	}
	// Write order, touching but not overlapping: fine, and sorted after.
	ir := idx(Record{Sector: 16, Size: 4096}, Record{Sector: 0, Size: 4096}, Record{Sector: 8, Size: 4096, Offset: 8192})
	if err := SortAndCheck(ir, "blocks.map"); err != nil {
		t.Fatal(err)
	}
	if ir[0].Sector != 0 || ir[1].Sector != 8 || ir[2].Sector != 16 || ir[1].Index != 2 {
		t.Fatalf("sorted %v", ir)
	}
	// Overlap by one sector, named with both records.
	ir = idx(Record{Sector: 0, Size: 4096}, Record{Sector: 100, Size: 512}, Record{Sector: 7, Size: 1024})
	err := SortAndCheck(ir, "blocks.map")
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "record 2") || !strings.Contains(err.Error(), "overlaps record 0") {
		t.Fatalf("err = %v", err)
	}
	// The same sector twice.
	ir = idx(Record{Sector: 8, Size: 512}, Record{Sector: 8, Size: 512, Offset: 512})
	if err := SortAndCheck(ir, "blocks.map"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("duplicate sector: %v", err)
	}
}
