//go:build !vm

package snapstore

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func walkAll(t testing.TB, c *Cow) ([]Exception, CowStats, error) {
	t.Helper()
	var got []Exception
	st, err := c.Walk(func(e CowEntry) error {
		if e.Index != int64(len(got)) {
			t.Fatalf("entry index %d, want %d", e.Index, len(got))
		}
		got = append(got, e.Exception)
		return nil
	})
	return got, st, err
}

func TestCowHeaderLayout(t *testing.T) {
	// The header as FORMAT.md draws it: "SnAp", valid 1, version 1, 8 sectors.
	want := []byte{'S', 'n', 'A', 'p', 1, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0}
	h := CowHeader{Magic: CowMagic, Valid: 1, Version: CowVersion, ChunkSectors: 8}
	if got := h.Append(nil); !bytes.Equal(got, want) {
		t.Fatalf("header bytes % x, want % x", got, want)
	}
	back, err := ParseCowHeader(want)
	if err != nil || back != h {
		t.Fatalf("ParseCowHeader = %+v, %v; want %+v", back, err, h)
	}
	if err := back.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestGeometryMatchesKernelAllocation(t *testing.T) {
	// Replays persistent_prepare_exception: next_free starts at 2 and
	// skips a chunk whenever next_free % (E+1) == 1 (skip_metadata).
	for _, sectors := range []uint32{1, 8, 128} {
		g := Geometry{ChunkSectors: sectors}
		e := g.PerArea()
		if e != int64(sectors)*SectorSize/16 {
			t.Fatalf("PerArea(%d sectors) = %d", sectors, e)
		}
		next := int64(2)
		for k := int64(0); k < 5*e+3; k++ {
			if got := g.DataChunk(k); got != next {
				t.Fatalf("%d sectors: DataChunk(%d) = %d, kernel allocates %d", sectors, k, got, next)
			}
			if g.IsMetadataChunk(uint64(next)) {
				t.Fatalf("%d sectors: data chunk %d reported as metadata", sectors, next)
			}
			next++
			if next%(e+1) == 1 {
				if !g.IsMetadataChunk(uint64(next)) || g.AreaChunk((next-1)/(e+1)) != next {
					t.Fatalf("%d sectors: chunk %d should be metadata area %d", sectors, next, (next-1)/(e+1))
				}
				next++
			}
		}
	}
}

func TestCowFileSizeHoldsEveryChunk(t *testing.T) {
	// Copy every chunk of the device, as the kernel would, and check that
	// neither the kernel's room test (size >= (next_free+1)*chunk) nor the
	// zeroing of the next area after a full one would run past the end.
	for _, sectors := range []uint32{1, 8} {
		g := Geometry{ChunkSectors: sectors}
		cb, e := g.ChunkBytes(), g.PerArea()
		for _, chunks := range []int64{0, 1, e - 1, e, e + 1, 2 * e, 3*e + 5} {
			for _, tail := range []int64{0, 1} { // device size a multiple of the chunk or not
				devSize := chunks*cb + tail*SectorSize
				size := g.CowFileSize(devSize)
				total := (devSize + cb - 1) / cb
				for k := int64(0); k < total; k++ {
					nc := g.DataChunk(k)
					if size < (nc+1)*cb {
						t.Fatalf("%d sectors, %d bytes: chunk %d (k=%d) does not fit in %d", sectors, devSize, nc, k, size)
					}
					if (k+1)%e == 0 { // area k/e is full: the kernel zeroes the next one
						if next := g.AreaChunk(k/e + 1); size < (next+1)*cb {
							t.Fatalf("%d sectors, %d bytes: next area %d does not fit in %d", sectors, devSize, next, size)
						}
					}
				}
			}
		}
	}
}

func TestCowWalkChunkSizes(t *testing.T) {
	for _, sectors := range []uint32{1, 8, 128, 1024} {
		for _, shuffle := range []bool{false, true} {
			t.Run(fmt.Sprintf("%dB/shuffle=%v", sectors*SectorSize, shuffle), func(t *testing.T) {
				r := rand.New(rand.NewPCG(uint64(sectors), 1))
				cb := int64(sectors) * SectorSize
				chunks := int64(200)
				if sectors >= 1024 {
					chunks = 40
				}
				sim := newCowSim(sectors, randomDevice(r, chunks*cb+3*SectorSize))
				randomWrites(sim, r, 120)
				if shuffle {
					sim.shuffleCommits(r)
				}
				b := sim.bytes()
				c, err := OpenCow(bytes.NewReader(b), int64(len(b)), "cow.img")
				if err != nil {
					t.Fatal(err)
				}
				if !c.Header.IsValid() || c.ChunkBytes() != cb {
					t.Fatalf("header %+v", c.Header)
				}
				got, st, err := walkAll(t, c)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(got, sim.list) {
					t.Fatalf("walk yielded %d exceptions, differing from the %d committed", len(got), len(sim.list))
				}
				if wantLast := int64(len(sim.list)) / c.PerArea(); st.LastArea != wantLast {
					t.Fatalf("last area %d, want %d", st.LastArea, wantLast)
				}
			})
		}
	}
}

func TestCowWalkFullAreas(t *testing.T) {
	// Exactly E and 2E exceptions: the terminator is slot 0 of the next,
	// zeroed, area.
	g := Geometry{ChunkSectors: 1} // E = 32
	for _, n := range []int{0, 1, 31, 32, 33, 64} {
		dev := make([]byte, 100*g.ChunkBytes())
		sim := newCowSim(1, dev)
		for i := 0; i < n; i++ {
			sim.write(int64(i)*g.ChunkBytes(), []byte{1})
		}
		b := sim.bytes()
		c, err := OpenCow(bytes.NewReader(b), int64(len(b)), "cow.img")
		if err != nil {
			t.Fatal(err)
		}
		got, st, err := walkAll(t, c)
		if err != nil {
			t.Fatalf("%d exceptions: %v", n, err)
		}
		if len(got) != n || st.LastArea != int64(n/32) {
			t.Fatalf("%d exceptions: walked %d, last area %d", n, len(got), st.LastArea)
		}
	}
}

func TestCowWalkHugeChunk(t *testing.T) {
	// The largest chunk the kernel allows, 1 GiB: a sparse 4 GiB file with
	// the header, area 0 at 1 GiB and two data chunks. Walk must not read
	// (or allocate) a whole area.
	g := Geometry{ChunkSectors: MaxChunkSectors}
	cb := g.ChunkBytes()
	path := filepath.Join(t.TempDir(), "cow.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(4 * cb); err != nil {
		t.Fatal(err)
	}
	hdr := CowHeader{Magic: CowMagic, Valid: 1, Version: CowVersion, ChunkSectors: MaxChunkSectors}.Append(nil)
	ents := make([]byte, 32)
	putU64(ents, 5)
	putU64(ents[8:], 2)
	putU64(ents[16:], 0)
	putU64(ents[24:], 3)
	for _, w := range []struct {
		b   []byte
		off int64
	}{{hdr, 0}, {ents, cb}, {[]byte("chunk2"), 2 * cb}, {[]byte("chunk3"), 3 * cb}} {
		if _, err := f.WriteAt(w.b, w.off); err != nil {
			t.Fatal(err)
		}
	}
	c, err := OpenCow(f, 4*cb, path)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := walkAll(t, c)
	if err != nil {
		t.Fatal(err)
	}
	want := []Exception{{OldChunk: 5, NewChunk: 2}, {OldChunk: 0, NewChunk: 3}}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestOpenCowRejects(t *testing.T) {
	good := CowHeader{Magic: CowMagic, Valid: 1, Version: CowVersion, ChunkSectors: 8}
	for _, tc := range []struct {
		name string
		hdr  []byte
		kind error
		msg  string
	}{
		{"short", []byte("SnAp"), ErrTruncated, "shorter than the 16-byte header"},
		{"zero magic", make([]byte, 4096), ErrUninitialized, "magic is zero"},
		{"bad magic", CowHeader{Magic: 0x12345678, Valid: 1, Version: 1, ChunkSectors: 8}.Append(nil), ErrCorrupt, "not a persistent snapshot store"},
		{"version 2", CowHeader{Magic: CowMagic, Valid: 1, Version: 2, ChunkSectors: 8}.Append(nil), ErrUnsupportedVersion, "store version 2"},
		{"chunk 0", CowHeader{Magic: CowMagic, Valid: 1, Version: 1}.Append(nil), ErrCorrupt, "chunk size 0"},
		{"chunk 3", CowHeader{Magic: CowMagic, Valid: 1, Version: 1, ChunkSectors: 3}.Append(nil), ErrCorrupt, "not a power of two"},
		{"chunk 2 GiB", CowHeader{Magic: CowMagic, Valid: 1, Version: 1, ChunkSectors: 1 << 22}.Append(nil), ErrCorrupt, "not a power of two between"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := OpenCow(bytes.NewReader(tc.hdr), int64(len(tc.hdr)), "x/cow.img")
			var fe *FormatError
			if !errors.As(err, &fe) || !errors.Is(err, tc.kind) || fe.Offset != 0 || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want a %v at offset 0 saying %q", err, tc.kind, tc.msg)
			}
			if !strings.HasPrefix(err.Error(), "x/cow.img") {
				t.Fatalf("error %q does not name the file", err)
			}
		})
	}
	if _, err := OpenCow(bytes.NewReader(good.Append(nil)), 16, "cow.img"); err != nil {
		t.Fatalf("good header: %v", err)
	}
}

func TestCowWalkInvalidStore(t *testing.T) {
	// valid = 0: reported, and the exceptions are still yielded.
	r := rand.New(rand.NewPCG(3, 3))
	sim := newCowSim(8, randomDevice(r, 64<<10))
	randomWrites(sim, r, 10)
	sim.valid = false
	b := sim.bytes()
	c, err := OpenCow(bytes.NewReader(b), int64(len(b)), "cow.img")
	if err != nil {
		t.Fatal(err)
	}
	if c.Header.IsValid() {
		t.Fatal("store reported valid")
	}
	got, _, err := walkAll(t, c)
	if err != nil || !slices.Equal(got, sim.list) || len(got) == 0 {
		t.Fatalf("walk of an invalid store: %d exceptions, %v", len(got), err)
	}
}

func TestCowWalkDamage(t *testing.T) {
	g := Geometry{ChunkSectors: 1} // 512-byte chunks, E = 32
	cb := g.ChunkBytes()
	build := func(n int) (*cowSim, []byte) {
		sim := newCowSim(1, make([]byte, 80*cb))
		for i := 0; i < n; i++ {
			sim.write(int64(i)*cb, []byte{byte(i + 1)})
		}
		return sim, sim.bytes()
	}
	entryOff := func(i int64) int64 { return g.AreaChunk(i/32)*cb + (i%32)*CowExceptionSize }

	for _, tc := range []struct {
		name   string
		n      int
		mutate func([]byte) []byte
		kind   error
		offset int64
		before int // exceptions yielded before the error
	}{
		{"points at metadata area", 5, func(b []byte) []byte { putU64(b[entryOff(3)+8:], uint64(g.AreaChunk(1))); return b }, ErrCorrupt, entryOff(3), 3},
		{"points at area 0", 5, func(b []byte) []byte { putU64(b[entryOff(2)+8:], 1); return b }, ErrCorrupt, entryOff(2), 2},
		{"points past the end", 5, func(b []byte) []byte { putU64(b[entryOff(4)+8:], 1<<40+2); return b }, ErrTruncated, entryOff(4), 4},
		{"file cut inside area 0", 5, func(b []byte) []byte { return b[:g.AreaChunk(0)*cb+100] }, ErrTruncated, g.AreaChunk(0) * cb, 0},
		{"full area, next one missing", 32, func(b []byte) []byte { return b[:g.AreaChunk(1)*cb] }, ErrTruncated, g.AreaChunk(1) * cb, 32},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, b := build(tc.n)
			b = tc.mutate(b)
			c, err := OpenCow(bytes.NewReader(b), int64(len(b)), "s/cow.img")
			if err != nil {
				t.Fatal(err)
			}
			got, _, err := walkAll(t, c)
			var fe *FormatError
			if !errors.As(err, &fe) || !errors.Is(err, tc.kind) {
				t.Fatalf("err = %v, want %v", err, tc.kind)
			}
			if fe.Offset != tc.offset || len(got) != tc.before {
				t.Fatalf("error at offset %d after %d exceptions, want offset %d after %d: %v", fe.Offset, len(got), tc.offset, tc.before, err)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("offset %d", tc.offset)) {
				t.Fatalf("error %q does not name offset %d", err, tc.offset)
			}
		})
	}
}
