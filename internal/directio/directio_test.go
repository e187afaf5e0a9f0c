package directio

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestAlignedBuf(t *testing.T) {
	for _, n := range []int{1, 4095, 4096, 1 << 20} {
		b := AlignedBuf(n)
		if len(b) != n || cap(b) != n || uintptr(unsafe.Pointer(&b[0]))%Align != 0 {
			t.Fatalf("AlignedBuf(%d): len %d cap %d at %p", n, len(b), cap(b), &b[0])
		}
	}
}

// Writes and reads of every shape (aligned, unaligned offset, unaligned
// length, unaligned buffer) through Writer and Reader give the file the
// bytes written; aligned ones go around the page cache where the
// filesystem allows O_DIRECT.
func TestWriteReadBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 1 << 20
	want := make([]byte, size)
	r := rand.New(rand.NewPCG(3, 4))
	w := NewWriter(f)
	canDirect := w.direct.Load() != nil
	fill := func(p []byte) {
		for i := range p {
			p[i] = byte(r.Uint32())
		}
	}
	ops := []struct{ off, n, shift int }{
		{0, 64 << 10, 0},        // aligned
		{64 << 10, 4096, 0},     // aligned, one block
		{68<<10 + 512, 3584, 0}, // unaligned offset
		{72 << 10, 5000, 0},     // unaligned length
		{80 << 10, 8192, 1},     // unaligned buffer
		{size - 8192, 8192, 0},  // aligned, at the end
	}
	for _, o := range ops {
		buf := AlignedBuf(o.n + o.shift)[o.shift:]
		fill(buf)
		if n, err := w.WriteAt(buf, int64(o.off)); err != nil || n != o.n {
			t.Fatalf("WriteAt(%d bytes at %d): %d, %v", o.n, o.off, n, err)
		}
		copy(want[o.off:], buf)
	}
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if w.Direct() != canDirect {
		t.Fatalf("Direct() = %v, but O_DIRECT open gave %v", w.Direct(), canDirect)
	}
	t.Logf("O_DIRECT here: %v", canDirect)
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("file differs from the writes (err %v)", err)
	}

	rd := NewReader(f)
	defer rd.Close()
	for _, o := range append(ops, struct{ off, n, shift int }{0, size, 0}) {
		buf := AlignedBuf(o.n + o.shift)[o.shift:]
		if n, err := rd.ReadAt(buf, int64(o.off)); err != nil || n != o.n {
			t.Fatalf("ReadAt(%d bytes at %d): %d, %v", o.n, o.off, n, err)
		}
		if !bytes.Equal(buf, want[o.off:o.off+o.n]) {
			t.Fatalf("ReadAt(%d bytes at %d) differs", o.n, o.off)
		}
	}
	if rd.Direct() != canDirect {
		t.Fatalf("reader Direct() = %v, want %v", rd.Direct(), canDirect)
	}
}

// An O_DIRECT descriptor the kernel refuses with EINVAL is dropped (and
// closed), so every later operation goes through the page cache; an
// operation that finds it closed by such a refusal is done through the
// page cache too.
func TestRefusedFallsBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, bytes.Repeat([]byte{7}, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	other, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}

	rd := &Reader{pair{f: f}}
	rd.direct.Store(other)
	if rd.refused(unix.EIO) || rd.direct.Load() != other {
		t.Fatal("EIO dropped the O_DIRECT descriptor")
	}
	if !rd.refused(unix.EINVAL) || rd.direct.Load() != nil {
		t.Fatal("EINVAL kept the O_DIRECT descriptor")
	}
	if _, err := other.Stat(); err == nil {
		t.Fatal("the refused descriptor was not closed")
	}

	// A read racing with the refusal: its descriptor is closed under it.
	rd.direct.Store(other)
	buf := AlignedBuf(4096)
	n, err := rd.ReadAt(buf, 0)
	if err != nil || n != 4096 || buf[0] != 7 || buf[4095] != 7 {
		t.Fatalf("ReadAt on a closed O_DIRECT descriptor: %d, %v", n, err)
	}
	if rd.Direct() {
		t.Fatal("Direct() after no O_DIRECT read succeeded")
	}
}
