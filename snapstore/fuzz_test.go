//go:build !vm

package snapstore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
)

// Small kernel-format COW files for the fuzzers' corpus: 512-byte chunks
// (E = 32), cut right after the last data chunk, so they stay a few KiB and
// the fuzzer's minimiser stays quick. (Full areas are the unit tests' job.)
func fuzzCowSeeds() map[string][]byte {
	out := map[string][]byte{}
	mk := func(name string, n int, valid bool, shuffle bool) {
		sim := newCowSim(1, make([]byte, 8*SectorSize))
		for i := 0; i < n; i++ {
			sim.write(int64((i*3)%8)*SectorSize, []byte{byte(i)})
		}
		if shuffle {
			for i := 0; i+1 < len(sim.list); i += 3 {
				sim.list[i], sim.list[i+1] = sim.list[i+1], sim.list[i]
			}
		}
		sim.valid = valid
		end := int64(2) // header and area 0
		for _, e := range sim.list {
			end = max(end, int64(e.NewChunk)+1)
		}
		out[name] = sim.bytes()[:end*SectorSize]
	}
	mk("empty", 0, true, false)
	mk("three", 3, true, false)
	mk("shuffled", 6, true, true)
	mk("invalid", 2, false, false)
	return out
}

func fuzzMapSeeds() map[string][]byte {
	return map[string][]byte{
		"golden":  EncodeMap(goldenMap),
		"seed":    EncodeMap([]Record{{Sector: 16, Size: 4096}, {Sector: 0, Size: 4096, Offset: 4096}}),
		"overlap": EncodeMap([]Record{{Sector: 0, Size: 4096}, {Sector: 7, Size: 512, Offset: 4096}}),
		"cut":     EncodeMap(goldenMap)[:30],
	}
}

func fuzzMetaSeeds() map[string][]byte {
	dm, _ := EncodeMeta(sampleMeta())
	m := sampleMeta()
	m.Dmsnap.State, m.Dmsnap.InvalidReason, m.Dmsnap.Notes = StateInvalid, "Invalid", []string{"a", "b"}
	inv, _ := EncodeMeta(m)
	return map[string][]byte{
		"dmsnap":  dm,
		"invalid": inv,
		"seed":    seedMeta("/dev/loop0", 1700000000123456789, 3),
	}
}

// TestFuzzCorpus keeps the checked-in corpus under testdata/fuzz in step
// with the generators above (go test -run TestFuzzCorpus -update rewrites it).
func TestFuzzCorpus(t *testing.T) {
	for target, seeds := range map[string]map[string][]byte{
		"FuzzCow":      fuzzCowSeeds(),
		"FuzzBlockMap": fuzzMapSeeds(),
		"FuzzMeta":     fuzzMetaSeeds(),
		"FuzzState":    fuzzStateSeeds(),
	} {
		for name, b := range seeds {
			path := filepath.Join("testdata", "fuzz", target, name)
			want := []byte("go test fuzz v1\n[]byte(" + strconv.Quote(string(b)) + ")\n")
			if *update {
				os.MkdirAll(filepath.Dir(path), 0o755)
				if err := os.WriteFile(path, want, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s is stale; run go test -run TestFuzzCorpus -update", path)
			}
		}
	}
}

// The fuzz targets run their corpus as ordinary tests. To fuzz, one at a
// time, keep the minimiser short (COW inputs are kilobytes):
//
//	go test ./snapstore -run XXX -fuzz '^FuzzCow$' -fuzztime 5m -fuzzminimizetime 3s
func FuzzCow(f *testing.F) {
	for _, b := range fuzzCowSeeds() {
		f.Add(b)
	}
	f.Fuzz(fuzzCowBody)
}

func fuzzCowBody(t *testing.T, data []byte) {
	{
		c, err := OpenCow(bytes.NewReader(data), int64(len(data)), "cow.img")
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("OpenCow error is not a FormatError: %v", err)
			}
			return
		}
		// Keep huge chunk sizes from walking gigabytes of nothing: the
		// reader is bounded by the input length anyway.
		var list []Exception
		st, err := c.Walk(func(e CowEntry) error {
			if c.IsMetadataChunk(e.NewChunk) || int64(e.NewChunk+1)*c.ChunkBytes() > int64(len(data)) {
				t.Fatalf("walk yielded %+v, not a data chunk inside the file", e)
			}
			list = append(list, e.Exception)
			return nil
		})
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) && !errors.Is(err, ErrTruncated) {
				t.Fatalf("Walk error is not a FormatError: %v", err)
			}
			return
		}
		if int64(len(list)) > int64(len(data))/CowExceptionSize {
			t.Fatalf("%d exceptions from %d bytes", len(list), len(data))
		}
		// Write the list back in the kernel's layout: it must read the same.
		b := make([]byte, len(data))
		copy(b, data[:CowHeaderSize])
		cb, e := c.ChunkBytes(), c.PerArea()
		for i, ex := range list {
			off := c.AreaChunk(int64(i)/e)*cb + (int64(i)%e)*CowExceptionSize
			putU64(b[off:], ex.OldChunk)
			putU64(b[off+8:], ex.NewChunk)
		}
		c2, err := OpenCow(bytes.NewReader(b), int64(len(b)), "cow.img")
		if err != nil {
			t.Fatal(err)
		}
		var again []Exception
		st2, err := c2.Walk(func(e CowEntry) error { again = append(again, e.Exception); return nil })
		if err != nil || !slices.Equal(list, again) || st != st2 {
			t.Fatalf("rewritten store reads differently: %v (%d vs %d exceptions)", err, len(again), len(list))
		}
	}
}

func FuzzBlockMap(f *testing.F) {
	for _, b := range fuzzMapSeeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, err := ReadMap(bytes.NewReader(data), "blocks.map")
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) || fe.Record != int64(len(recs)) || fe.Offset != int64(len(recs))*RecordSize {
				t.Fatalf("error %v after %d records", err, len(recs))
			}
			return
		}
		if !bytes.Equal(EncodeMap(recs), data) {
			t.Fatal("EncodeMap(ReadMap(b)) != b")
		}
		ir := make([]IndexedRecord, len(recs))
		for i, r := range recs {
			ir[i] = IndexedRecord{Record: r, Index: int64(i)}
		}
		if err := SortAndCheck(ir, "blocks.map"); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatal(err)
			}
			return
		}
		for i := 1; i < len(ir); i++ {
			if ir[i].Start() < ir[i-1].End() {
				t.Fatalf("accepted overlapping records %v and %v", ir[i-1], ir[i])
			}
		}
	})
}

func FuzzMeta(f *testing.F) {
	for _, b := range fuzzMetaSeeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseMeta(data, "meta.json")
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("ParseMeta error is not a FormatError: %v", err)
			}
			return
		}
		// What was accepted encodes, and reads back to the same encoding.
		b1, err := EncodeMeta(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := ParseMeta(b1, "meta.json")
		if err != nil {
			t.Fatalf("re-encoded meta.json does not parse: %v\n%s", err, b1)
		}
		b2, _ := EncodeMeta(m2)
		if !bytes.Equal(b1, b2) {
			t.Fatalf("encoding is not stable:\n%s\n%s", b1, b2)
		}
	})
}
