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
	"testing"
)

// memCow is a growable in-memory io.WriterAt that records every write, so
// tests can check the writer touched only what it must.
type memCow struct {
	b      []byte
	writes [][2]int64 // offset, length
}

func (m *memCow) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if end := off + int64(len(p)); end > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, end-int64(len(m.b)))...)
	}
	m.writes = append(m.writes, [2]int64{off, int64(len(p))})
	return copy(m.b[off:], p), nil
}

// cowInput is one exception to write: origin chunk and its pre-image.
type cowInput struct {
	old  uint64
	data []byte
}

// randomInputs picks n distinct origin chunks below span in random order,
// with random data; the last may be short when short is set.
func randomInputs(r *rand.Rand, n int, span uint64, cb int64, short bool) []cowInput {
	seen := map[uint64]bool{}
	var in []cowInput
	for len(in) < n {
		old := r.Uint64N(span)
		if seen[old] {
			continue
		}
		seen[old] = true
		d := make([]byte, cb)
		fillRandom(r, d)
		in = append(in, cowInput{old: old, data: d})
	}
	if short && n > 0 {
		in[n-1].data = in[n-1].data[:1+r.Int64N(cb)]
	}
	return in
}

// writeCow writes in through a CowWriter into m.
func writeCow(t testing.TB, m *memCow, cb int64, in []cowInput, opts CowWriterOptions) CowWriteStats {
	t.Helper()
	w, err := NewCowWriter(m, cb, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range in {
		if err := w.Add(x.old, x.data); err != nil {
			t.Fatal(err)
		}
	}
	st, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// checkCowRoundTrip reads b back with OpenCow/Walk and checks it holds
// exactly in, in order, at the kernel's allocation positions.
func checkCowRoundTrip(t testing.TB, b []byte, cb int64, in []cowInput, valid bool) CowStats {
	t.Helper()
	c, err := OpenCow(bytes.NewReader(b), int64(len(b)), "cow.img")
	if err != nil {
		t.Fatal(err)
	}
	if c.ChunkBytes() != cb || c.Header.IsValid() != valid || c.Header.Version != CowVersion {
		t.Fatalf("header %+v, want chunk %d bytes, valid %v", c.Header, cb, valid)
	}
	var got []CowEntry
	st, err := c.Walk(func(e CowEntry) error { got = append(got, e); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(in) {
		t.Fatalf("walk yields %d exceptions, wrote %d", len(got), len(in))
	}
	for k, e := range got {
		if e.OldChunk != in[k].old || e.NewChunk != uint64(c.DataChunk(int64(k))) {
			t.Fatalf("exception %d = %+v, want old %d new %d", k, e.Exception, in[k].old, c.DataChunk(int64(k)))
		}
		want := make([]byte, cb)
		copy(want, in[k].data)
		off := int64(e.NewChunk) * cb
		if !bytes.Equal(b[off:off+cb], want) {
			t.Fatalf("exception %d (old chunk %d): data in chunk %d differs", k, e.OldChunk, e.NewChunk)
		}
	}
	return st
}

func TestCowWriterRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 9))
	for _, sectors := range []uint32{1, 2, 8, 128} {
		cb := int64(sectors) * SectorSize
		e := int(cb / CowExceptionSize)
		// Around the area boundaries: empty, one, one short of full, full,
		// full plus one, several areas.
		for _, n := range []int{0, 1, e - 1, e, e + 1, 2 * e, 3*e + 5} {
			if int64(n)*cb > 64<<20 {
				continue // the boundaries of big chunks are covered by e-1 .. e+1
			}
			t.Run(fmt.Sprintf("%dB/%d", cb, n), func(t *testing.T) {
				in := randomInputs(r, n, uint64(4*n+10), cb, n%2 == 1)
				m := &memCow{}
				st := writeCow(t, m, cb, in, CowWriterOptions{})
				if int64(len(m.b)) > st.Size {
					t.Fatalf("wrote %d bytes past the size %d it reports", len(m.b), st.Size)
				}
				b := append(m.b, make([]byte, st.Size-int64(len(m.b)))...)
				ws := checkCowRoundTrip(t, b, cb, in, true)
				if ws.LastArea != st.LastArea || ws.Exceptions != st.Exceptions {
					t.Errorf("reader saw %+v, writer reports %+v", ws, st)
				}
				g := Geometry{ChunkSectors: sectors}
				if want := int64(n) / g.PerArea(); st.LastArea != want {
					t.Errorf("last area %d, want %d", st.LastArea, want)
				}
				// Exactly as large as needed: the terminator's area and the
				// last data chunk lie inside, nothing more.
				need := g.AreaChunk(st.LastArea) + 1
				if n > 0 {
					need = max(need, g.DataChunk(int64(n-1))+1)
				}
				if st.Size != need*cb {
					t.Errorf("size %d, want %d", st.Size, need*cb)
				}
				if st.NextFree != g.DataChunk(int64(n)) {
					t.Errorf("next free %d, want %d", st.NextFree, g.DataChunk(int64(n)))
				}
			})
		}
	}
}

// TestCowWriterSparse checks the writer writes only the header, the
// entries with their terminator, and the data: nothing else is allocated.
func TestCowWriterSparse(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	g := Geometry{ChunkSectors: 1}
	cb := g.ChunkBytes()
	e := g.PerArea()
	n := int(2*e + 3)
	in := randomInputs(r, n, 1000, cb, false)
	m := &memCow{}
	writeCow(t, m, cb, in, CowWriterOptions{})
	allowed := func(off, ln int64) bool {
		if off == 0 && ln == CowHeaderSize {
			return true
		}
		c := off / cb
		if (off+ln-1)/cb != c {
			return false // never across a chunk
		}
		if g.IsMetadataChunk(uint64(c)) {
			a := (c - CowHeaderChunks) / (e + 1)
			slot := (off - c*cb) / CowExceptionSize
			// entries 0..n (n is the terminator)
			return off%CowExceptionSize == 0 && a*e+slot+ln/CowExceptionSize <= int64(n)+1
		}
		return off%cb == 0 && ln == cb
	}
	var written int64
	for _, w := range m.writes {
		if !allowed(w[0], w[1]) {
			t.Errorf("write of %d bytes at %d is neither header, entry nor data chunk", w[1], w[0])
		}
		written += w[1]
	}
	if want := CowHeaderSize + int64(n+1)*CowExceptionSize + int64(n)*cb; written != want {
		t.Errorf("wrote %d bytes, want %d", written, want)
	}
	// The header is the last write: a store cut short reads as uninitialised.
	if last := m.writes[len(m.writes)-1]; last[0] != 0 || last[1] != CowHeaderSize {
		t.Errorf("last write %v is not the header", last)
	}
}

// TestCowWriterMetadataBlocks checks a chunk larger than the write block
// (1 MiB chunks, 64 KiB blocks) still yields one contiguous list. The
// store is a sparse file: its data chunks (mostly not written) span GiBs.
func TestCowWriterMetadataBlocks(t *testing.T) {
	cb := int64(1 << 20)
	n := 2*cowWriteBlock/CowExceptionSize + 7 // spans three blocks of area 0
	f, err := os.Create(filepath.Join(t.TempDir(), CowFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w, err := NewCowWriter(f, cb, CowWriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		var data []byte // entries only, but for the first
		if i == 0 {
			data = []byte{1, 2, 3}
		}
		if err := w.Add(uint64(n-i), data); err != nil {
			t.Fatal(err)
		}
	}
	st, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	c, err := OpenCow(f, st.Size, f.Name())
	if err != nil {
		t.Fatal(err)
	}
	k := 0
	if _, err := c.Walk(func(e CowEntry) error {
		if e.OldChunk != uint64(n-k) || e.NewChunk != uint64(c.DataChunk(int64(k))) {
			return fmt.Errorf("exception %d = %+v", k, e.Exception)
		}
		k++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if k != n {
		t.Fatalf("walk yields %d exceptions, wrote %d", k, n)
	}
	b := make([]byte, 4)
	if _, err := f.ReadAt(b, c.DataChunk(0)*cb); err != nil || !bytes.Equal(b, []byte{1, 2, 3, 0}) {
		t.Fatalf("data of exception 0 reads %v, %v", b, err)
	}
}

func TestCowWriterInvalidAndReserve(t *testing.T) {
	g := Geometry{ChunkSectors: 8}
	cb := g.ChunkBytes()
	r := rand.New(rand.NewPCG(1, 2))
	devChunks := int64(1000)
	in := randomInputs(r, 300, uint64(devChunks), cb, false)
	path := filepath.Join(t.TempDir(), CowFile)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Reserve room for every remaining chunk of the device: the file must
	// then be as large as a new store CreateSession makes for it.
	w, err := NewCowWriter(f, cb, CowWriterOptions{Invalid: true, Reserve: devChunks - int64(len(in))})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range in {
		if err := w.Add(x.old, x.data); err != nil {
			t.Fatal(err)
		}
	}
	st, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	if want := g.CowFileSize(devChunks * cb); st.Size != want {
		t.Errorf("reserved size %d, want %d (CowFileSize)", st.Size, want)
	}
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != st.Size {
		t.Errorf("file is %d bytes, writer says %d", fi.Size(), st.Size)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	checkCowRoundTrip(t, b, cb, in, false)

	// A reserve is counted from the next free chunk, across area
	// boundaries, for every count of written exceptions.
	for n := int64(0); n < 3*g.PerArea(); n += 17 {
		for _, res := range []int64{1, 2, g.PerArea() - 1, g.PerArea(), 2*g.PerArea() + 1} {
			w, _ := NewCowWriter(&memCow{}, cb, CowWriterOptions{Reserve: res})
			for i := int64(0); i < n; i++ {
				w.Add(uint64(i), nil)
			}
			if got, want := w.Stats().Size, (g.DataChunk(n+res-1)+2)*cb; got != want {
				t.Fatalf("%d exceptions, reserve %d: size %d, want %d", n, res, got, want)
			}
		}
	}
}

// TestCowWriterAddAt reproduces a list committed out of allocation order.
func TestCowWriterAddAt(t *testing.T) {
	g := Geometry{ChunkSectors: 1}
	cb := g.ChunkBytes()
	list := []Exception{{7, 3}, {5, 2}, {9, uint64(g.DataChunk(40))}, {1, 4}}
	m := &memCow{}
	w, err := NewCowWriter(m, cb, CowWriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range list {
		if err := w.AddAt(e, bytes.Repeat([]byte{byte(e.OldChunk)}, int(cb))); err != nil {
			t.Fatal(err)
		}
	}
	// Add continues after the highest chunk used.
	if err := w.Add(11, []byte{11}); err != nil {
		t.Fatal(err)
	}
	list = append(list, Exception{11, uint64(g.DataChunk(41))})
	for _, bad := range []uint64{0, 1, uint64(g.AreaChunk(1))} {
		if err := w.AddAt(Exception{OldChunk: 99, NewChunk: bad}, nil); err == nil {
			t.Errorf("AddAt to chunk %d (header or area) succeeded", bad)
		}
	}
	if err := w.Add(12, make([]byte, cb+1)); err == nil {
		t.Error("Add of more than a chunk of data succeeded")
	}
	st, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	b := append(m.b, make([]byte, st.Size-int64(len(m.b)))...)
	c, err := OpenCow(bytes.NewReader(b), int64(len(b)), "cow.img")
	if err != nil {
		t.Fatal(err)
	}
	var got []Exception
	if _, err := c.Walk(func(e CowEntry) error { got = append(got, e.Exception); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, list) {
		t.Fatalf("list %v, want %v", got, list)
	}
	if err := w.Add(13, nil); err == nil {
		t.Error("Add after Close succeeded")
	}
}

func TestNewCowWriterChunkSize(t *testing.T) {
	for _, cb := range []int64{0, 256, 1000, 3 * 512, 2 << 30, -512} {
		if _, err := NewCowWriter(&memCow{}, cb, CowWriterOptions{}); err == nil {
			t.Errorf("chunk size %d accepted", cb)
		}
	}
	for _, cb := range []int64{512, 4096, 1 << 30} {
		if _, err := NewCowWriter(&memCow{}, cb, CowWriterOptions{}); err != nil {
			t.Errorf("chunk size %d: %v", cb, err)
		}
	}
}

// FuzzCowWriter writes random chunk sets with random chunk sizes and reads
// them back: the reader must yield exactly what was written.
func FuzzCowWriter(f *testing.F) {
	f.Add(uint8(0), uint16(0), uint64(1))
	f.Add(uint8(0), uint16(32), uint64(2))  // exactly one full area of 512-byte chunks
	f.Add(uint8(1), uint16(65), uint64(3))  // area boundary of 1 KiB chunks plus one
	f.Add(uint8(3), uint16(300), uint64(4)) // 4 KiB chunks, two areas
	f.Fuzz(func(t *testing.T, shift uint8, n uint16, seed uint64) {
		sectors := uint32(1) << (shift % 4) // 512 B .. 4 KiB
		cb := int64(sectors) * SectorSize
		count := int(n % 600)
		r := rand.New(rand.NewPCG(seed, uint64(n)))
		in := randomInputs(r, count, uint64(count)+r.Uint64N(1<<40), cb, seed%2 == 1)
		for i := range in {
			in[i].data = in[i].data[:min(len(in[i].data), 1+int(seed%uint64(cb)))]
		}
		m := &memCow{}
		st := writeCow(t, m, cb, in, CowWriterOptions{Invalid: seed%3 == 0})
		if int64(len(m.b)) > st.Size {
			t.Fatalf("wrote past the reported size")
		}
		b := append(m.b, make([]byte, st.Size-int64(len(m.b)))...)
		checkCowRoundTrip(t, b, cb, in, seed%3 != 0)
	})
}
