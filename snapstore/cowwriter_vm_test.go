//go:build vm

package snapstore_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/vmtest"
	"github.com/dmsnap/dmsnap/snapstore"
)

// TestKernelLoadsCowWriterStore stacks a snapshot over an origin of known
// content with a store CowWriter made, holding other bytes for some chunks
// (over several metadata areas): the snapshot device must read our chunks
// where the store has exceptions and the origin elsewhere, the kernel must
// count exactly our data chunks, and a later origin write must be appended
// to our list at the next free chunk, which the reader then finds.
func TestKernelLoadsCowWriterStore(t *testing.T) {
	vmtest.RequireDM(t)
	for _, sectors := range []uint32{8, 1} {
		t.Run(fmt.Sprintf("%dB", sectors*snapstore.SectorSize), func(t *testing.T) {
			kernelLoadsCow(t, sectors)
		})
	}
}

func kernelLoadsCow(t *testing.T, sectors uint32) {
	const devSize = 32 << 20
	g := snapstore.Geometry{ChunkSectors: sectors}
	cb := g.ChunkBytes()
	chunks := devSize / cb
	r := rand.New(rand.NewPCG(uint64(sectors), 77))
	tmp := t.TempDir()

	origin := make([]byte, devSize)
	for i := 0; i < len(origin); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			origin[i+j] = byte(v >> (8 * j))
		}
	}
	img := filepath.Join(tmp, "origin.img")
	if err := os.WriteFile(img, origin, 0o600); err != nil {
		t.Fatal(err)
	}
	base, err := dm.AttachLoop(img, dm.LoopOptions{})
	if err != nil {
		t.Fatalf("AttachLoop: %v", err)
	}
	t.Cleanup(func() {
		base.Close()
		dm.DetachLoop(base.Path)
	})

	// Exceptions over a bit more than two metadata areas, in random order,
	// each holding bytes the origin does not have.
	n := int(2*g.PerArea() + 9)
	ours := map[int64][]byte{}
	var order []int64
	for _, c := range r.Perm(int(chunks))[:n] {
		d := make([]byte, cb)
		for i := range d {
			d[i] = byte(r.Uint32())
		}
		d[0] = ^origin[int64(c)*cb] // never equal to the origin's chunk
		ours[int64(c)] = d
		order = append(order, int64(c))
	}
	cowPath := filepath.Join(tmp, snapstore.CowFile)
	f, err := os.Create(cowPath)
	if err != nil {
		t.Fatal(err)
	}
	w, err := snapstore.NewCowWriter(f, cb, snapstore.CowWriterOptions{Reserve: 64})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range order {
		if err := w.Add(uint64(c), ours[c]); err != nil {
			t.Fatal(err)
		}
	}
	st, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	s := dm.Stack{Name: fmt.Sprintf("cw%d", sectors), Device: base.Path}
	if err := s.Build(); err != nil {
		t.Fatalf("Build: %v", err)
	}
	torn := false
	t.Cleanup(func() {
		if !torn {
			s.Teardown()
		}
	})
	cow, err := dm.AttachLoop(cowPath, dm.LoopOptions{AutoClear: true})
	if err != nil {
		t.Fatalf("AttachLoop(cow): %v", err)
	}
	if err := s.ReattachSnapshot(1, cow.Path, sectors); err != nil {
		cow.Close()
		t.Fatalf("ReattachSnapshot: %v", err)
	}
	cow.Close()

	ss, err := s.SnapshotStatus(1)
	if err != nil || !ss.Valid() {
		t.Fatalf("snapshot status %+v, %v", ss, err)
	}
	if got := ss.DataSectors(); got != uint64(n)*uint64(sectors) {
		t.Errorf("kernel holds %d data sectors, our store has %d chunks of %d sectors", got, n, sectors)
	}
	snap := readAll(t, s.SnapshotPath(1), devSize)
	for c := int64(0); c < chunks; c++ {
		want := origin[c*cb : (c+1)*cb]
		if d, ok := ours[c]; ok {
			want = d
		}
		if !bytes.Equal(snap[c*cb:(c+1)*cb], want) {
			_, mine := ours[c]
			t.Fatalf("snapshot chunk %d (in our store: %v) differs from what it should read", c, mine)
		}
	}

	// An origin write of one page (4 KiB: the page cache writes whole
	// pages) to chunks outside our set: the kernel copies the origin's
	// bytes into our store, after our list, from our next free chunk on.
	const page = 4096
	per := max(page/cb, 1)
	var fresh int64 // first chunk of a page none of whose chunks we hold
	for p := int64(0); ; p++ {
		free := true
		for c := p * per; c < (p+1)*per; c++ {
			if _, ok := ours[c]; ok {
				free = false
			}
		}
		if free {
			fresh = p * per
			break
		}
	}
	of, err := os.OpenFile(s.OriginPath(), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := of.WriteAt(bytes.Repeat([]byte{0xa5}, int(per*cb)), fresh*cb); err != nil {
		t.Fatal(err)
	}
	if err := of.Sync(); err != nil {
		t.Fatal(err)
	}
	of.Close()
	snap = readAll(t, s.SnapshotPath(1), devSize)
	if !bytes.Equal(snap[fresh*cb:(fresh+per)*cb], origin[fresh*cb:(fresh+per)*cb]) {
		t.Fatalf("after the origin write, snapshot chunks %d..%d no longer read the origin's old bytes", fresh, fresh+per-1)
	}
	if err := s.RemoveSnapshot(1); err != nil {
		t.Fatalf("RemoveSnapshot: %v", err)
	}
	if err := s.Teardown(); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	torn = true

	b, err := os.ReadFile(cowPath)
	if err != nil {
		t.Fatal(err)
	}
	c, err := snapstore.OpenCow(bytes.NewReader(b), int64(len(b)), cowPath)
	if err != nil {
		t.Fatal(err)
	}
	var list []snapstore.Exception
	if _, err := c.Walk(func(e snapstore.CowEntry) error { list = append(list, e.Exception); return nil }); err != nil {
		t.Fatal(err)
	}
	if int64(len(list)) != int64(n)+per {
		t.Fatalf("store lists %d exceptions after the kernel used it, want our %d and its %d", len(list), n, per)
	}
	for k, c := range order {
		if list[k] != (snapstore.Exception{OldChunk: uint64(c), NewChunk: uint64(g.DataChunk(int64(k)))}) {
			t.Fatalf("exception %d changed to %+v", k, list[k])
		}
	}
	// The kernel's copies complete in any order; as sets, they are the
	// page's chunks in the chunks it allocates after ours.
	olds, news := map[uint64]bool{}, map[uint64]bool{}
	for _, e := range list[n:] {
		olds[e.OldChunk], news[e.NewChunk] = true, true
		if e.OldChunk < uint64(fresh) || e.OldChunk >= uint64(fresh+per) {
			t.Fatalf("the kernel's exception %+v is not for the written page (chunks %d..%d)", e, fresh, fresh+per-1)
		}
		got := b[int64(e.NewChunk)*cb : (int64(e.NewChunk)+1)*cb]
		if !bytes.Equal(got, origin[int64(e.OldChunk)*cb:(int64(e.OldChunk)+1)*cb]) {
			t.Fatalf("the kernel's copy %+v in our store is not the origin's old chunk", e)
		}
	}
	for k := int64(0); k < per; k++ {
		if !news[uint64(g.DataChunk(int64(n)+k))] {
			t.Fatalf("the kernel did not allocate chunk %d (our next free ones from %d); its exceptions: %v", g.DataChunk(int64(n)+k), st.NextFree, list[n:])
		}
	}
	if len(olds) != int(per) {
		t.Fatalf("the kernel's exceptions %v repeat an origin chunk", list[n:])
	}
}

func readAll(t *testing.T, path string, size int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, size)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return b
}
