//go:build !vm

package snapstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/internal/crc32c"
)

// goodSession converts a small session and returns its fixture.
func goodSession(t testing.TB, layout string) *sessionFixture {
	t.Helper()
	fx := makeClosedSession(t, t.TempDir(), fixtureOpts{chunkSectors: 8, devSize: 128<<10 + 1024, writes: 12, seed: 11})
	convertFixture(t, fx, ConvertOptions{Copy: layout == LayoutPacked})
	if _, err := Verify(context.Background(), fx.dir); err != nil {
		t.Fatal(err)
	}
	return fx
}

// reseal rewrites meta.json after fn changed it, with fresh checksums of
// blocks.map and blocks.crc: only what fn broke is broken.
func reseal(t testing.TB, dir string, fn func(*Meta)) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, MetaFile))
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseMeta(b, MetaFile)
	if err != nil {
		t.Fatal(err)
	}
	for name, dst := range map[string]*string{MapFile: &m.Dmsnap.Checksums.BlocksMap, CRCFile: &m.Dmsnap.Checksums.BlocksCRC} {
		c, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(c)
		*dst = hex.EncodeToString(sum[:])
	}
	fn(&m)
	if b, err = EncodeMeta(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, MetaFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func verifyProblems(t testing.TB, dir string) []*FormatError {
	t.Helper()
	_, err := Verify(context.Background(), dir)
	if err == nil {
		return nil
	}
	var ve *VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("Verify: %v (not a VerifyError)", err)
	}
	return ve.Problems
}

// TestVerifyFlippedBits flips single bits in every file of a session:
// Verify must catch each one and name the file (and in blocks.dat, the
// record and its sector).
func TestVerifyFlippedBits(t *testing.T) {
	for _, layout := range []string{LayoutCOW, LayoutPacked} {
		t.Run(layout, func(t *testing.T) {
			fx := goodSession(t, layout)
			s, err := Open(fx.dir)
			if err != nil {
				t.Fatal(err)
			}
			entries, err := s.AllEntries()
			s.Close()
			if err != nil || len(entries) < 5 {
				t.Fatalf("%d entries, %v", len(entries), err)
			}

			flip := func(name string, off int64, bit uint, check func([]*FormatError)) {
				t.Helper()
				p := filepath.Join(fx.dir, name)
				orig, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				b := []byte(string(orig))
				b[off] ^= 1 << bit
				if err := os.WriteFile(p, b, 0o644); err != nil {
					t.Fatal(err)
				}
				defer os.WriteFile(p, orig, 0o644)
				probs := verifyProblems(t, fx.dir)
				if len(probs) == 0 {
					t.Fatalf("%s: bit %d of byte %d flipped, Verify found nothing", name, bit, off)
				}
				if probs[0].File != p {
					t.Fatalf("%s: bit %d of byte %d flipped, first problem names %s: %v", name, bit, off, probs[0].File, probs[0])
				}
				if check != nil {
					check(probs)
				}
			}

			r := rand.New(rand.NewPCG(1, 2))
			for _, e := range entries {
				for _, off := range []int64{0, int64(e.Size) - 1, r.Int64N(int64(e.Size))} {
					flip(DataFile, int64(e.Offset)+off, uint(r.IntN(8)), func(p []*FormatError) {
						chunk := fmt.Sprintf("origin chunk %d", e.Start()/4096)
						if len(p) != 1 || !errors.Is(p[0], ErrChecksum) || p[0].Record != e.Index ||
							!strings.Contains(p[0].Msg, fmt.Sprintf("sector %d", e.Sector)) || !strings.Contains(p[0].Msg, chunk) {
							t.Fatalf("blocks.dat flip in record %d (sector %d): problems %v", e.Index, e.Sector, p)
						}
					})
				}
			}
			for _, name := range []string{MapFile, CRCFile, MetaFile} {
				fi, err := os.Stat(filepath.Join(fx.dir, name))
				if err != nil {
					t.Fatal(err)
				}
				// Every byte, one bit each, cycling through the bit
				// positions (meta.json's every bit is TestMetaDetectsEveryFlippedBit's).
				for off := int64(0); off < fi.Size(); off++ {
					flip(name, off, uint(off%8), nil)
				}
			}
			if _, err := Verify(context.Background(), fx.dir); err != nil {
				t.Fatalf("restored files do not verify: %v", err)
			}
		})
	}
}

func TestVerifyBrokenFixtures(t *testing.T) {
	for _, tc := range []struct {
		name   string
		break_ func(t *testing.T, fx *sessionFixture)
		file   string
		kind   error
		msg    string
	}{
		{
			name: "truncated blocks.dat",
			break_: func(t *testing.T, fx *sessionFixture) {
				p := filepath.Join(fx.dir, DataFile)
				fi, _ := os.Stat(p)
				if err := os.Truncate(p, fi.Size()-100); err != nil {
					t.Fatal(err)
				}
			},
			file: DataFile, kind: ErrTruncated, msg: "blocks.dat ends at",
		},
		{
			name: "map pointing past the end of blocks.dat",
			break_: func(t *testing.T, fx *sessionFixture) {
				p := filepath.Join(fx.dir, MapFile)
				b, _ := os.ReadFile(p)
				recs, _ := ReadMap(strings.NewReader(string(b)), p)
				recs[len(recs)-1].Offset = 1 << 40
				os.WriteFile(p, EncodeMap(recs), 0o644)
				reseal(t, fx.dir, func(*Meta) {})
			},
			file: DataFile, kind: ErrTruncated, msg: "needs bytes 1099511627776-",
		},
		{
			name: "unknown meta version",
			break_: func(t *testing.T, fx *sessionFixture) {
				reseal(t, fx.dir, func(m *Meta) { m.Dmsnap.FormatVersion = 7 })
			},
			file: MetaFile, kind: ErrUnsupportedVersion, msg: "session format 7",
		},
		{
			name: "record count disagrees with meta",
			break_: func(t *testing.T, fx *sessionFixture) {
				reseal(t, fx.dir, func(m *Meta) { m.TotalBlocksSaved++ })
			},
			file: MapFile, kind: ErrCorrupt, msg: "need",
		},
		{
			name: "record not on a chunk boundary",
			break_: func(t *testing.T, fx *sessionFixture) {
				p := filepath.Join(fx.dir, MapFile)
				b, _ := os.ReadFile(p)
				recs, _ := ReadMap(strings.NewReader(string(b)), p)
				recs[0].Sector++
				os.WriteFile(p, EncodeMap(recs), 0o644)
				reseal(t, fx.dir, func(*Meta) {})
			},
			file: MapFile, kind: ErrCorrupt, msg: "chunk boundary",
		},
		{
			name: "overlapping records",
			break_: func(t *testing.T, fx *sessionFixture) {
				p := filepath.Join(fx.dir, MapFile)
				b, _ := os.ReadFile(p)
				recs, _ := ReadMap(strings.NewReader(string(b)), p)
				recs[1].Sector = recs[0].Sector
				os.WriteFile(p, EncodeMap(recs), 0o644)
				reseal(t, fx.dir, func(*Meta) {})
			},
			file: MapFile, kind: ErrCorrupt, msg: "overlaps record 0",
		},
		{
			name: "missing blocks.crc entries",
			break_: func(t *testing.T, fx *sessionFixture) {
				p := filepath.Join(fx.dir, CRCFile)
				fi, _ := os.Stat(p)
				os.Truncate(p, fi.Size()-CRCSize)
				reseal(t, fx.dir, func(*Meta) {})
			},
			file: CRCFile, kind: ErrCorrupt, msg: "need",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := goodSession(t, LayoutCOW)
			tc.break_(t, fx)
			probs := verifyProblems(t, fx.dir)
			if len(probs) == 0 {
				t.Fatal("Verify found nothing")
			}
			p := probs[0]
			if filepath.Base(p.File) != tc.file || !errors.Is(p, tc.kind) || !strings.Contains(p.Msg, tc.msg) {
				t.Fatalf("first problem %v; want %s, %v, %q (all: %v)", p, tc.file, tc.kind, tc.msg, probs)
			}
		})
	}
}

func TestVerifyIncomplete(t *testing.T) {
	fx := makeClosedSession(t, t.TempDir(), fixtureOpts{chunkSectors: 8, devSize: 64 << 10, writes: 3, seed: 1})
	if _, err := Verify(context.Background(), fx.dir); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("Verify of an unconverted session: %v, want ErrIncomplete", err)
	}
}

func TestRecordIterCatchesMapDamage(t *testing.T) {
	// Reading without Verify: a damaged map cannot pass silently.
	fx := goodSession(t, LayoutCOW)
	p := filepath.Join(fx.dir, MapFile)
	b, _ := os.ReadFile(p)
	b[len(b)-1] ^= 0x80 // last record's offset, high byte
	os.WriteFile(p, b, 0o644)
	s, err := Open(fx.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = s.AllEntries()
	if err == nil {
		t.Fatal("iterating a damaged map reported nothing")
	}
	if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrChecksum) && !errors.Is(err, ErrCorrupt) {
		t.Fatalf("err = %v", err)
	}
}

func TestReadRecord(t *testing.T) {
	fx := goodSession(t, LayoutCOW)
	s, err := Open(fx.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	entries, err := s.AllEntries()
	if err != nil {
		t.Fatal(err)
	}
	// In order (the hint path), then backwards (binary search).
	order := append(slices.Clone(entries), entries...)
	slices.Reverse(order[len(entries):])
	for _, e := range order {
		p := make([]byte, e.Size)
		if err := s.ReadRecord(e.Record, p); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, fx.sim.pre[e.Start():e.End()]) {
			t.Fatalf("record at sector %d: wrong bytes", e.Sector)
		}
	}
	// A record the session does not have.
	bogus := entries[0].Record
	bogus.Offset += 4096
	if err := s.ReadRecord(bogus, make([]byte, bogus.Size)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("unknown record: %v", err)
	}
	// Damage in blocks.dat is caught and named.
	e := entries[len(entries)/2]
	f, _ := os.OpenFile(filepath.Join(fx.dir, DataFile), os.O_RDWR, 0)
	f.WriteAt([]byte{^fx.sim.pre[e.Start()+7]}, int64(e.Offset)+7)
	f.Close()
	err = s.ReadRecord(e.Record, make([]byte, e.Size))
	var fe *FormatError
	if !errors.As(err, &fe) || !errors.Is(err, ErrChecksum) || fe.Record != e.Index {
		t.Fatalf("damaged record: %v", err)
	}
}

// VerifyStructure checks everything but the data: a flipped bit in
// blocks.dat is for the caller's own data check to find, a flipped bit in
// blocks.map or a short blocks.dat is not.
func TestVerifyStructure(t *testing.T) {
	ctx := context.Background()
	fx := goodSession(t, LayoutCOW)
	s, err := Open(fx.dir)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := s.AllEntries()
	s.Close()
	if err != nil || len(entries) < 2 {
		t.Fatalf("%d entries, %v", len(entries), err)
	}
	full, err := VerifyStructure(ctx, fx.dir)
	if err != nil || full.Records != int64(len(entries)) || full.Bytes == 0 {
		t.Fatalf("good session: %+v, %v", full, err)
	}
	change := func(name string, fn func([]byte) []byte) (restore func()) {
		p := filepath.Join(fx.dir, name)
		orig, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, fn(bytes.Clone(orig)), 0o644); err != nil {
			t.Fatal(err)
		}
		return func() { os.WriteFile(p, orig, 0o644) }
	}

	e := entries[len(entries)/2]
	undo := change(DataFile, func(b []byte) []byte { b[int64(e.Offset)+5] ^= 0x10; return b })
	if _, err := Verify(ctx, fx.dir); err == nil {
		t.Fatal("Verify missed a flipped data bit")
	}
	if res, err := VerifyStructure(ctx, fx.dir); err != nil || res.Records != full.Records || res.Bytes != full.Bytes {
		t.Fatalf("VerifyStructure read the data: %+v, %v", res, err)
	}
	undo()

	undo = change(MapFile, func(b []byte) []byte { b[3] ^= 1; return b })
	if _, err := VerifyStructure(ctx, fx.dir); err == nil || !strings.Contains(err.Error(), "SHA-256") {
		t.Fatalf("flipped map bit: %v", err)
	}
	undo()

	undo = change(DataFile, func(b []byte) []byte { return b[:len(b)-1] })
	if _, err := VerifyStructure(ctx, fx.dir); err == nil || !strings.Contains(err.Error(), "blocks.dat") {
		t.Fatalf("short blocks.dat: %v", err)
	}
	undo()
}

// hugeRecordSession writes in dir a session whose only record, at sector
// 0, has size bytes of zeros (blocks.dat is sparse): a seed session, or
// one of dmsnap's whose chunk (and device) is size bytes, so the record is
// a well-formed chunk and its checksums match.
func hugeRecordSession(t *testing.T, dir string, size uint32, seed bool) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(DataFile, nil)
	if err := os.Truncate(filepath.Join(dir, DataFile), int64(size)); err != nil {
		t.Fatal(err)
	}
	mp := EncodeMap([]Record{{Sector: 0, Size: size, Offset: 0}})
	write(MapFile, mp)
	if seed {
		write(MetaFile, seedMeta("/dev/loop0", 1700000000e9, 1))
		return
	}
	zeros := make([]byte, 1<<20)
	var c uint32
	for n := uint32(0); n < size; n += uint32(len(zeros)) {
		c = crc32c.Update(c, zeros[:min(uint32(len(zeros)), size-n)])
	}
	crc := binary.LittleEndian.AppendUint32(nil, c)
	write(CRCFile, crc)
	hm, hc := sha256.Sum256(mp), sha256.Sum256(crc)
	m := Meta{Device: "/dev/loop0", Timestamp: 1700000000e9, BlockSize: size, TotalBlocksSaved: 1, SnapshotType: SnapshotTypeCOW,
		Dmsnap: &DmsnapMeta{FormatVersion: MetaFormatVersion, Name: "loop0", Sequence: 1, Device: Device{Path: "/dev/loop0", Size: int64(size)},
			ChunkSize: size, Layout: LayoutPacked, State: StateComplete,
			Checksums: Checksums{RecordCRC: CRCAlgorithm, BlocksMap: hex.EncodeToString(hm[:]), BlocksCRC: hex.EncodeToString(hc[:])}}}
	b, err := EncodeMeta(m)
	if err != nil {
		t.Fatal(err)
	}
	write(MetaFile, b)
}

// TestVerifyRecordTooLarge: a record larger than MaxRecordSize, which a
// restore cannot write, is damage that Verify and VerifyStructure report,
// naming blocks.map and the record; so is it for the restore's reader. A
// chunk of 128 MiB is within what meta.json allows, so only the record
// size gives the dmsnap session away.
func TestVerifyRecordTooLarge(t *testing.T) {
	for _, tc := range []struct {
		name string
		size uint32
		seed bool
	}{
		{"seed record of 64 MiB + 1", MaxRecordSize + 1, true},
		{"dmsnap chunk of 128 MiB", 128 << 20, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "loop0_1700000000")
			hugeRecordSession(t, dir, tc.size, tc.seed)
			for name, verify := range map[string]func(context.Context, string) (VerifyResult, error){"Verify": Verify, "VerifyStructure": VerifyStructure} {
				_, err := verify(context.Background(), dir)
				var ve *VerifyError
				if !errors.As(err, &ve) {
					t.Fatalf("%s: %v, want the session reported damaged", name, err)
				}
				p := ve.Problems[0]
				if filepath.Base(p.File) != MapFile || p.Record != 0 || !errors.Is(p, ErrCorrupt) || !strings.Contains(p.Msg, "64 MiB") {
					t.Errorf("%s: first problem %v", name, p)
				}
			}
			s, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if _, err := s.AllEntries(); !errors.Is(err, ErrCorrupt) {
				t.Errorf("reading the records: %v, want ErrCorrupt", err)
			}
		})
	}
}

// VerifySession sorts a verification into its outcome: not finished
// before conversion, ok after, damaged once a pre-image changes.
func TestVerifySessionOutcomes(t *testing.T) {
	fx := makeClosedSession(t, t.TempDir(), fixtureOpts{chunkSectors: 8, devSize: 1 << 20, writes: 40, seed: 7})
	if v := VerifySession(context.Background(), fx.dir, Quiet{}); v.Outcome != VerifyNotFinished {
		t.Fatalf("before conversion: %+v", v)
	}
	convertFixture(t, fx, ConvertOptions{})
	v := VerifySession(context.Background(), fx.dir, Quiet{})
	if v.Outcome != VerifyOK || v.Records != int64(len(fx.sim.copied)) || v.Bytes != v.Records*4096 || v.ID != filepath.Base(fx.dir) {
		t.Fatalf("converted: %+v", v)
	}
	f, err := os.OpenFile(filepath.Join(fx.dir, DataFile), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The first record's first byte, flipped.
	s, err := Open(fx.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	it, err := s.Records()
	if err != nil {
		t.Fatal(err)
	}
	e, err := it.Next()
	it.Close()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	f.ReadAt(b, int64(e.Offset))
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, int64(e.Offset)); err != nil {
		t.Fatal(err)
	}
	if v := VerifySession(context.Background(), fx.dir, Quiet{}); v.Outcome != VerifyDamaged || len(v.Problems) != 1 {
		t.Fatalf("a flipped pre-image: %+v", v)
	}
}
