package restore

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/dmsnap/dmsnap/snapstore"
)

// viewOf reads the store in path back through snapstore.OpenCow and returns
// what a snapshot target with it shows over dev, and the chunks it holds.
func viewOf(t *testing.T, path string, dev []byte) ([]byte, map[uint64]bool) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	c, err := snapstore.OpenCow(f, fi.Size(), path)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Header.IsValid() {
		t.Fatal("view store is marked invalid")
	}
	cb := uint64(c.ChunkBytes())
	out := bytes.Clone(dev)
	held := map[uint64]bool{}
	if _, err := c.Walk(func(e snapstore.CowEntry) error {
		if held[e.OldChunk] {
			t.Fatalf("chunk %d stored twice", e.OldChunk)
		}
		held[e.OldChunk] = true
		start := e.OldChunk * cb
		if start >= uint64(len(dev)) {
			t.Fatalf("exception for chunk %d past the device end", e.OldChunk)
		}
		n := min(cb, uint64(len(dev))-start)
		if _, err := f.ReadAt(out[start:start+n], int64(e.NewChunk*cb)); err != nil {
			t.Fatal(err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out, held
}

func touchedChunks(ms []*memSession, cb uint64) map[uint64]bool {
	m := map[uint64]bool{}
	for _, s := range ms {
		for _, r := range s.recs {
			for c := uint64(r.Start()) / cb; c*cb < uint64(r.End()); c++ {
				m[c] = true
			}
		}
	}
	return m
}

func checkView(t *testing.T, rng *rand.Rand, ms []*memSession, dev []byte, cb int64) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "view.cow")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := mustPlan(t, ms).WriteViewCow(context.Background(), f, bytes.NewReader(dev), int64(len(dev)), cb)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	got, held := viewOf(t, path, dev)
	want := modelRestore(dev, ms)
	if !bytes.Equal(got, want) {
		i := firstDiff(got, want)
		t.Fatalf("chunk %d %d B: view differs from the model at byte %d", cb, len(dev), i)
	}
	touched := touchedChunks(ms, uint64(cb))
	if len(held) != len(touched) || st.Chunks != int64(len(touched)) {
		t.Fatalf("view holds %d chunks (stats %d), plan touches %d", len(held), st.Chunks, len(touched))
	}
	for c := range touched {
		if !held[c] {
			t.Fatalf("chunk %d touched by the plan is not in the view", c)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	g := snapstore.Geometry{ChunkSectors: uint32(cb / SectorSize)}
	if want := g.CowFileSize(int64(len(dev))); fi.Size() != want {
		t.Fatalf("view store is %d bytes, want %d (room for every chunk once)", fi.Size(), want)
	}
}

func TestWriteViewCowSeedChunks(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	dev := randomBytes(rng, 1<<20)
	checkView(t, rng, threeSessions(rng, uint64(len(dev))), dev, 4096)
	// Larger chunks: the 4 KiB records cover only parts of a chunk, the
	// rest comes from the device.
	checkView(t, rng, threeSessions(rng, uint64(len(dev))), dev, 64<<10)
}

func TestWriteViewCowMatchesModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 9))
	for i := range 60 {
		size := uint64(64<<10 + rng.IntN(512<<10))
		size = size / SectorSize * SectorSize // devices are whole sectors; the last chunk may be short
		dev := randomBytes(rng, int(size))
		var ms []*memSession
		for k := range 1 + rng.IntN(4) {
			ms = append(ms, newMemSession(rng, "s"+string(rune('a'+k)), randomRecords(rng, size)))
		}
		cb := int64(512) << rng.IntN(9)
		t.Logf("case %d: %d B, %d sessions, chunk %d", i, size, len(ms), cb)
		checkView(t, rng, ms, dev, cb)
	}
}

func TestWriteViewCowOutOfBounds(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	ms := []*memSession{newMemSession(rng, "s", []Record{{Sector: 8, Size: 4096}})}
	f, err := os.Create(filepath.Join(t.TempDir(), "v"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := mustPlan(t, ms).WriteViewCow(context.Background(), f, bytes.NewReader(make([]byte, 4096)), 4096, 4096); err == nil {
		t.Fatal("record past the device end accepted")
	}
}
