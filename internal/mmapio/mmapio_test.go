package mmapio

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

func tempFile(t *testing.T, data []byte) *os.File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestReadAt: reads anywhere in the mapping give the file's bytes, with
// io.ReaderAt's rules at the end.
func TestReadAt(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	want := make([]byte, 3*4096+100)
	for i := range want {
		want[i] = byte(rng.Uint32())
	}
	r, err := Open(tempFile(t, want), int64(len(want)))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Size() != int64(len(want)) {
		t.Fatalf("Size %d, want %d", r.Size(), len(want))
	}
	for _, c := range []struct {
		off, n, got int
		err         error
	}{
		{0, 4096, 4096, nil},
		{4000, 200, 200, nil},
		{len(want) - 100, 100, 100, nil},
		{len(want) - 50, 100, 50, io.EOF},
		{len(want), 10, 0, io.EOF},
		{len(want) + 5, 10, 0, io.EOF},
		{len(want), 0, 0, nil},
	} {
		p := make([]byte, c.n)
		n, err := r.ReadAt(p, int64(c.off))
		if n != c.got || err != c.err {
			t.Errorf("ReadAt(%d bytes at %d) = %d, %v; want %d, %v", c.n, c.off, n, err, c.got, c.err)
			continue
		}
		if n > 0 && !bytes.Equal(p[:n], want[c.off:c.off+n]) {
			t.Errorf("ReadAt(%d bytes at %d): wrong bytes", c.n, c.off)
		}
	}
	if _, err := r.ReadAt(make([]byte, 1), -1); err == nil {
		t.Error("a negative offset read without error")
	}
}

// TestShrunkFile: a file cut short after it was mapped faults on the pages
// past its new end; ReadAt reports ErrFault instead of crashing, and the
// pages still in the file read as before.
func TestShrunkFile(t *testing.T) {
	want := bytes.Repeat([]byte{0xa5}, 4*4096)
	f := tempFile(t, want)
	r, err := Open(f, int64(len(want)))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := f.Truncate(4096); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4096)
	n, err := r.ReadAt(p, 2*4096)
	if !errors.Is(err, ErrFault) {
		t.Fatalf("reading past the new end: %d bytes, %v; want ErrFault", n, err)
	}
	if n, err := r.ReadAt(p, 0); n != 4096 || err != nil || !bytes.Equal(p, want[:4096]) {
		t.Fatalf("reading the first page after the fault: %d bytes, %v", n, err)
	}
}

// TestEmpty: an empty file maps nothing and reads at its end.
func TestEmpty(t *testing.T) {
	r, err := Open(tempFile(t, nil), 0)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := r.ReadAt(make([]byte, 1), 0); n != 0 || err != io.EOF {
		t.Errorf("ReadAt on an empty mapping = %d, %v; want 0, EOF", n, err)
	}
	if err := r.Close(); err != nil {
		t.Error(err)
	}
}

// TestPopulate: a range inside the mapping populates; one past its end is
// refused; on a file cut short after it was mapped, populating past the new
// end reports ErrFault, and reading there afterwards still faults into an
// error, not a crash.
func TestPopulate(t *testing.T) {
	want := bytes.Repeat([]byte("0123456789abcdef"), 4*4096/16)
	f := tempFile(t, want)
	r, err := Open(f, int64(len(want)))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	err = r.Populate(100, 2*4096)
	if errors.Is(err, ErrNoPopulate) {
		t.Fatalf("this kernel cannot populate (Linux 5.14 and later can): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Populate(3*4096, 4097); err == nil {
		t.Error("a range past the end populated")
	}
	if err := f.Truncate(4096); err != nil {
		t.Fatal(err)
	}
	if err := r.Populate(2*4096, 4096); !errors.Is(err, ErrFault) {
		t.Errorf("populating past a shrunk file's end: %v, want ErrFault", err)
	}
	if _, err := r.ReadAt(make([]byte, 10), 3*4096); !errors.Is(err, ErrFault) {
		t.Errorf("reading past a shrunk file's end: %v, want ErrFault", err)
	}
}
