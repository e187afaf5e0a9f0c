//go:build !vm

package snapstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Fuzz targets over state.json and over whole session directories.

// encodeStateForFuzz renders s as WriteState does.
func encodeStateForFuzz(s State) ([]byte, error) {
	s.Times = s.Times.utc()
	b, err := json.MarshalIndent(s, "", "  ")
	return append(b, '\n'), err
}

func fuzzStateSeeds() map[string][]byte {
	dev := Device{Path: "/dev/loop7", Size: 64 << 20, DevNum: DevNum{Major: 7, Minor: 7}, FSUUID: "0b2c5b8e-9e55-4a4f-8f0e-2f6a3c1d9e01"}
	armed := State{FormatVersion: 1, Name: "loop7", Device: dev, ChunkSize: 4096, Phase: PhaseArmed,
		Times: Times{Armed: fixtureTime}, Prealloc: 8 << 20}
	closing := armed
	closing.Phase, closing.FsType, closing.Layout = PhaseClosing, "ext4", LayoutCOW
	closing.Times = Times{Armed: fixtureTime, Mounted: fixtureTime.Add(2 * time.Second), Unmounted: fixtureTime.Add(time.Minute), Closed: fixtureTime.Add(2 * time.Minute)}
	closing.Conversion = &Conversion{CowValid: true, ChunkSize: 4096, Records: 11, LastArea: 0, DataEnd: 53248,
		BlocksMap: "7e1ab9a8d2c58ceab64d563beb4b087d66527b1535c682c678c957e8ba261c39", BlocksCRC: "15a032747889707ce93621d5182f4d482746aa4266dd785c1aaa107d6a1a4e38",
		Notes: []string{"dropped 1 duplicate"}}
	invalid := armed
	invalid.Phase, invalid.InvalidReason, invalid.Device.FSUUID = PhaseInvalid, "snapshot Invalid: COW store full", ""
	out := map[string][]byte{}
	for name, s := range map[string]State{"armed": armed, "closing": closing, "invalid": invalid} {
		b, err := encodeStateForFuzz(s)
		if err != nil {
			panic(err)
		}
		out[name] = b
	}
	return out
}

// FuzzState: ParseState never panics; what it refuses is a FormatError
// naming the file; what it accepts re-encodes (as WriteState writes it) to
// bytes that parse again and encode the same.
func FuzzState(f *testing.F) {
	for _, b := range fuzzStateSeeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const name = "/snapshot/loop7_1709294402/state.json"
		s, err := ParseState(data, name)
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) || fe.File != name {
				t.Fatalf("ParseState error is not a FormatError naming %s: %v", name, err)
			}
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupportedVersion) {
				t.Fatalf("ParseState error of another kind: %v", err)
			}
			if !reflectZero(s) {
				t.Fatalf("ParseState returned %+v beside its error", s)
			}
			return
		}
		if err := s.check(name); err != nil {
			t.Fatalf("accepted a state that check refuses: %v", err)
		}
		b1, err := encodeStateForFuzz(s)
		if err != nil {
			t.Fatalf("accepted state does not encode: %v", err)
		}
		s2, err := ParseState(b1, name)
		if err != nil {
			t.Fatalf("re-encoded state.json does not parse: %v\n%s", err, b1)
		}
		if b2, _ := encodeStateForFuzz(s2); !bytes.Equal(b1, b2) {
			t.Fatalf("encoding is not stable:\n%s\n%s", b1, b2)
		}
	})
}

func reflectZero(s State) bool {
	return s.FormatVersion == 0 && s.Name == "" && s.Phase == "" && s.Conversion == nil && s.Times == (Times{})
}

// fuzzSession is a converted session's files, as the fuzzer's original.
type fuzzSession struct {
	mapB, crcB, metaB, datB []byte
	recs                    []Record
}

// fuzzSessions converts two small sessions (1 KiB chunks, an 8.5 KiB
// device, so every file is a few KiB): one in each layout.
func fuzzSessions(tb testing.TB) []fuzzSession {
	var out []fuzzSession
	for _, copyData := range []bool{false, true} {
		fx := makeClosedSession(tb, tb.TempDir(), fixtureOpts{chunkSectors: 2, devSize: 8<<10 + 512, writes: 6, seed: 5})
		convertFixture(tb, fx, ConvertOptions{Copy: copyData})
		var s fuzzSession
		for name, dst := range map[string]*[]byte{MapFile: &s.mapB, CRCFile: &s.crcB, MetaFile: &s.metaB, DataFile: &s.datB} {
			b, err := os.ReadFile(filepath.Join(fx.dir, name))
			if err != nil {
				tb.Fatal(err)
			}
			*dst = b
		}
		recs, err := ReadMap(bytes.NewReader(s.mapB), MapFile)
		if err != nil || len(recs) < 3 {
			tb.Fatalf("fixture map: %d records, %v", len(recs), err)
		}
		s.recs = recs
		out = append(out, s)
	}
	return out
}

// fuzzSessionMax bounds each fuzzed file, so that an input stays cheap.
const fuzzSessionMax = 64 << 10

// FuzzVerify writes fuzzed blocks.map, blocks.crc, meta.json and
// blocks.dat into a session directory and verifies it. Verify must not
// panic or hang; damage is a *VerifyError whose every problem names a file
// of the session; and a session it passes as verified must be one of the
// originals in every byte a checksum covers: meta.json whole (its
// self-checksum), blocks.map and blocks.crc whole (their SHA-256 in
// meta.json), and every record's bytes of blocks.dat (their CRC-32C: it
// catches every change within 32 consecutive bits, and misses another with
// a 2^-32 chance). A session passed as unverified (a seed session: the
// mutation removed the dmsnap object) has records that are sorted, do not
// overlap and lie inside blocks.dat.
func FuzzVerify(f *testing.F) {
	origs := fuzzSessions(f)
	for _, o := range origs {
		f.Add(o.mapB, o.crcB, o.metaB, o.datB)
	}
	o := origs[0]
	flip := func(b []byte, i int) []byte { b = bytes.Clone(b); b[i%len(b)] ^= 0x10; return b }
	f.Add(flip(o.mapB, 8), o.crcB, o.metaB, o.datB)                                         // a size
	f.Add(o.mapB, flip(o.crcB, 2), o.metaB, o.datB)                                         // a CRC
	f.Add(o.mapB, o.crcB, flip(o.metaB, 40), o.datB)                                        // meta.json
	f.Add(o.mapB, o.crcB, o.metaB, flip(o.datB, int(o.recs[1].Offset)))                     // a pre-image
	f.Add(o.mapB[:RecordSize*2], o.crcB[:CRCSize*2], o.metaB, o.datB)                       // cut map and sidecar
	f.Add(o.mapB, o.crcB, seedMeta("/dev/loop7", 1709294402000000000, len(o.recs)), o.datB) // as a seed session
	f.Add(o.mapB, []byte{}, seedMeta("/dev/loop7", 1, len(o.recs)), o.datB[:len(o.datB)/2]) // a seed session cut short

	dir := filepath.Join(fuzzScratch(f), "loop7_1709294402")
	if err := os.Mkdir(dir, 0o755); err != nil {
		f.Fatal(err)
	}
	paths := map[string]bool{dir: true}
	for _, n := range []string{MapFile, CRCFile, MetaFile, DataFile} {
		paths[filepath.Join(dir, n)] = true
	}
	f.Fuzz(func(t *testing.T, mapB, crcB, metaB, datB []byte) {
		if len(mapB) > fuzzSessionMax || len(crcB) > fuzzSessionMax || len(metaB) > fuzzSessionMax || len(datB) > fuzzSessionMax {
			return
		}
		for name, b := range map[string][]byte{MapFile: mapB, CRCFile: crcB, MetaFile: metaB, DataFile: datB} {
			// A new file each time, not the old one truncated: ext4
			// (auto_da_alloc) writes a file truncated and rewritten back
			// to disk on close.
			p := filepath.Join(dir, name)
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		res, err := Verify(ctx, dir)
		if ctx.Err() != nil {
			t.Fatalf("Verify took over 10 s: %v", err)
		}
		if err != nil {
			var ve *VerifyError
			if !errors.As(err, &ve) || len(ve.Problems) == 0 {
				t.Fatalf("Verify error is not a VerifyError with problems: %v", err)
			}
			for _, p := range ve.Problems {
				if !paths[p.File] {
					t.Fatalf("problem names %q, not a file of the session: %v", p.File, p)
				}
			}
			return
		}
		if res.Unverified {
			recs, err := ReadMap(bytes.NewReader(mapB), MapFile)
			if err != nil {
				t.Fatalf("unverified session passed with an unreadable map: %v", err)
			}
			ir := make([]IndexedRecord, len(recs))
			for i, r := range recs {
				if r.Offset+uint64(r.Size) > uint64(len(datB)) {
					t.Fatalf("unverified session passed with record %d (%+v) outside the %d-byte blocks.dat", i, r, len(datB))
				}
				ir[i] = IndexedRecord{Record: r, Index: int64(i)}
			}
			if err := SortAndCheck(ir, MapFile); err != nil {
				t.Fatalf("unverified session passed with a bad map: %v", err)
			}
			if res.Records != int64(len(recs)) {
				t.Fatalf("%d records checked of %d", res.Records, len(recs))
			}
			return
		}
		i := slices.IndexFunc(origs, func(o fuzzSession) bool { return bytes.Equal(o.metaB, metaB) })
		if i < 0 {
			t.Fatalf("a modified meta.json verified:\n%s", metaB)
		}
		o := origs[i]
		if !bytes.Equal(o.mapB, mapB) || !bytes.Equal(o.crcB, crcB) {
			t.Fatal("a modified blocks.map or blocks.crc verified")
		}
		if len(datB) != len(o.datB) {
			t.Fatalf("a %d-byte blocks.dat verified, the session's is %d", len(datB), len(o.datB))
		}
		for j, r := range o.recs {
			if !bytes.Equal(datB[r.Offset:r.Offset+uint64(r.Size)], o.datB[r.Offset:r.Offset+uint64(r.Size)]) {
				t.Fatalf("record %d (sector %d): modified pre-image verified", j, r.Sector)
			}
		}
		if res.Records != int64(len(o.recs)) {
			t.Fatalf("%d records checked of %d", res.Records, len(o.recs))
		}
	})
}

// fuzzScratch is a directory for FuzzVerify's session, in memory where
// there is a tmpfs at /dev/shm: Verify reads blocks.dat with O_DIRECT, and
// on a disk filesystem each of those reads first writes the file just
// written back to the disk (tens of milliseconds an input, where the
// fuzzer needs well under one).
func fuzzScratch(f *testing.F) string {
	var st unix.Statfs_t
	if unix.Statfs("/dev/shm", &st) == nil && st.Type == unix.TMPFS_MAGIC {
		if dir, err := os.MkdirTemp("/dev/shm", "dmsnap-fuzz"); err == nil {
			f.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return f.TempDir()
}
