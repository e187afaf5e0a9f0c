//go:build !vm

package snapstore

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// cowSim emulates the kernel's snapshot target with a persistent store, as
// dm-snap.c and dm-snap-persistent.c behave: the first write to an origin
// chunk copies its old bytes (only up to the device end) into the next
// free data chunk, then the exception is committed to the current metadata
// area; a full area continues in the next one. Its files are written by
// CowWriter.
type cowSim struct {
	g      Geometry
	pre    []byte // the device before the session
	dev    []byte // the device now
	cow    map[int64][]byte
	list   []Exception // commit order
	copied map[uint64]bool
	next   int64 // allocations so far
	valid  bool
}

func newCowSim(chunkSectors uint32, dev []byte) *cowSim {
	return &cowSim{
		g:      Geometry{ChunkSectors: chunkSectors},
		pre:    bytes.Clone(dev),
		dev:    dev,
		cow:    map[int64][]byte{},
		copied: map[uint64]bool{},
		valid:  true,
	}
}

// write is an origin write of data at off.
func (c *cowSim) write(off int64, data []byte) {
	cb := c.g.ChunkBytes()
	for ch := off / cb; ch*cb < off+int64(len(data)); ch++ {
		c.copyChunk(uint64(ch))
	}
	copy(c.dev[off:], data)
}

func (c *cowSim) copyChunk(old uint64) {
	if c.copied[old] {
		return
	}
	cb := c.g.ChunkBytes()
	start := int64(old) * cb
	end := min(start+cb, int64(len(c.dev)))
	nc := c.g.DataChunk(c.next)
	c.next++
	c.cow[nc] = bytes.Clone(c.dev[start:end])
	c.list = append(c.list, Exception{OldChunk: old, NewChunk: uint64(nc)})
	c.copied[old] = true
}

// shuffleCommits swaps neighbouring commits now and then, as concurrent
// copies completing out of order do: list order then differs from chunk
// allocation order.
func (c *cowSim) shuffleCommits(r *rand.Rand) {
	for i := 0; i+1 < len(c.list); i += 2 {
		if r.IntN(2) == 0 {
			c.list[i], c.list[i+1] = c.list[i+1], c.list[i]
		}
	}
}

// bytes renders the COW file (size from CowFileSize).
func (c *cowSim) bytes() []byte {
	size := c.g.CowFileSize(int64(len(c.dev)))
	last := int64(0)
	for nc := range c.cow {
		last = max(last, nc)
	}
	size = max(size, (last+2)*c.g.ChunkBytes())
	b := make([]byte, size)
	c.render(b)
	return b
}

// render writes the COW file into b through CowWriter, so the format is
// written in one place: the list in commit order, each exception's data in
// the chunk the simulated kernel allocated for it.
func (c *cowSim) render(b []byte) {
	w := &fixedCow{b: b}
	cw, err := NewCowWriter(w, c.g.ChunkBytes(), CowWriterOptions{Invalid: !c.valid})
	if err != nil {
		panic(err)
	}
	for _, ex := range c.list {
		if err := cw.AddAt(ex, c.cow[int64(ex.NewChunk)]); err != nil {
			panic(err)
		}
	}
	if _, err := cw.Close(); err != nil {
		panic(err)
	}
}

// fixedCow is an io.WriterAt over a byte slice that does not grow.
type fixedCow struct{ b []byte }

func (f *fixedCow) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(f.b)) {
		return 0, fmt.Errorf("write of %d bytes at %d outside the %d-byte buffer", len(p), off, len(f.b))
	}
	return copy(f.b[off:], p), nil
}

func putU64(b []byte, v uint64) {
	for i := 0; i < 8; i++ {
		b[i] = byte(v >> (8 * i))
	}
}

// writeCowFile writes the COW file at path through CowWriter, sparse (only
// the header, entries and data chunks are written), sized as CreateSession
// sizes a new store.
func (c *cowSim) writeCowFile(t testing.TB, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(c.g.CowFileSize(int64(len(c.dev)))); err != nil {
		t.Fatal(err)
	}
	cw, err := NewCowWriter(f, c.g.ChunkBytes(), CowWriterOptions{Invalid: !c.valid})
	if err != nil {
		t.Fatal(err)
	}
	for _, ex := range c.list {
		if err := cw.AddAt(ex, c.cow[int64(ex.NewChunk)]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cw.Close(); err != nil {
		t.Fatal(err)
	}
}

// randomDevice returns size bytes of reproducible noise with some zero
// runs (as a filesystem image has).
func randomDevice(r *rand.Rand, size int64) []byte {
	b := make([]byte, size)
	fillRandom(r, b)
	for k := 0; k < 4 && size > 0; k++ {
		off := r.Int64N(size)
		n := min(size-off, 1+r.Int64N(size/8+1))
		clear(b[off : off+n])
	}
	return b
}

func fillRandom(r *rand.Rand, b []byte) {
	for i := 0; i < len(b); i += 8 {
		v := r.Uint64()
		for j := i; j < min(i+8, len(b)); j++ {
			b[j] = byte(v)
			v >>= 8
		}
	}
}

// randomWrites makes n writes of random sizes, with rewrites of the same
// places (which must not be copied twice).
func randomWrites(c *cowSim, r *rand.Rand, n int) {
	size := int64(len(c.dev))
	for i := 0; i < n; i++ {
		off := r.Int64N(size)
		ln := min(size-off, 1+r.Int64N(3*c.g.ChunkBytes()))
		data := make([]byte, ln)
		fillRandom(r, data)
		c.write(off, data)
		if i%5 == 0 { // overwrite what was just written
			c.write(off, data[:ln/2])
		}
	}
}

// sessionFixture is a closed session directory ready for Convert, and what
// its device looked like before and after.
type sessionFixture struct {
	store, dir string
	sim        *cowSim
	state      State
}

type fixtureOpts struct {
	chunkSectors uint32
	devSize      int64
	writes       int
	seed         uint64
	shuffle      bool
	invalid      bool // kernel marked the store invalid
	noCow        bool // leave cow.img as CreateSession made it (all zeros)
	prealloc     int64
}

var fixtureTime = time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)

// makeClosedSession arms a session through the package's own API, fills
// its cow.img the way the kernel would, mounts and unmounts it.
func makeClosedSession(t testing.TB, store string, o fixtureOpts) *sessionFixture {
	t.Helper()
	r := rand.New(rand.NewPCG(o.seed, 7))
	dev := randomDevice(r, o.devSize)
	sim := newCowSim(o.chunkSectors, dev)
	randomWrites(sim, r, o.writes)
	if o.shuffle {
		sim.shuffleCommits(r)
	}
	sim.valid = !o.invalid
	st := State{
		Name:      "loop7",
		Device:    Device{Path: "/dev/loop7", Size: o.devSize, DevNum: DevNum{Major: 7, Minor: 7}, FSUUID: "0b2c5b8e-9e55-4a4f-8f0e-2f6a3c1d9e01"},
		ChunkSize: o.chunkSectors * SectorSize,
		Times:     Times{Armed: fixtureTime},
		Prealloc:  o.prealloc,
	}
	dir, err := CreateSession(store, st)
	if err != nil {
		t.Fatal(err)
	}
	if !o.noCow {
		sim.writeCowFile(t, filepath.Join(dir, CowFile))
	}
	if dir, err = MarkMounted(dir, fixtureTime.Add(2*time.Second), "ext4"); err != nil {
		t.Fatal(err)
	}
	if err := MarkUnmounted(dir, fixtureTime.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if o.invalid {
		if err := MarkInvalid(dir, "snapshot Invalid: COW store full"); err != nil {
			t.Fatal(err)
		}
	}
	st, err = ReadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	return &sessionFixture{store: store, dir: dir, sim: sim, state: st}
}

func fixedNow() time.Time { return fixtureTime.Add(2 * time.Minute) }

// convertFixture converts and verifies a fixture, failing the test on error.
func convertFixture(t testing.TB, fx *sessionFixture, opts ConvertOptions) ConvertResult {
	t.Helper()
	if opts.Now == nil {
		opts.Now = fixedNow
	}
	res, err := Convert(context.Background(), fx.dir, opts)
	if err != nil {
		t.Fatalf("Convert: %v", err)
	}
	return res
}

// checkPreImages checks that the session rebuilds the pre-session device
// from the current one, byte for byte, and that every chunk the session
// holds equals the pre-image's bytes.
func checkPreImages(t testing.TB, dir string, sim *cowSim) {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	entries, err := s.AllEntries()
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(sim.copied) {
		t.Errorf("%d records, the kernel copied %d chunks", len(entries), len(sim.copied))
	}
	var buf []byte
	for _, e := range entries {
		if buf, err = s.ReadData(e, buf); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, sim.pre[e.Start():e.End()]) {
			t.Fatalf("record %d (sector %d): pre-image differs from the device before the session", e.Index, e.Sector)
		}
	}
	rc, err := NewReconstructor(bytes.NewReader(sim.dev), int64(len(sim.dev)), s)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(sim.dev))
	if _, err := rc.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, sim.pre) {
		t.Fatal("reconstructed device differs from the device before the session")
	}
}
