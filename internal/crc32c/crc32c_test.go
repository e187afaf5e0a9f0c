package crc32c

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

// Both implementations equal hash/crc32's Castagnoli CRC on every length
// around the 8-byte step and on large buffers, from any starting CRC, and
// chained updates equal one update over the whole.
func TestImplementationsAgree(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 70000)
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	for _, f := range []struct {
		name Impl
		fn   func(uint32, []byte) uint32
	}{{Stdlib, stdlibUpdate}, {Table, tableUpdate}} {
		for n := 0; n <= 300; n++ {
			p := buf[r.IntN(1000):][:n]
			seed := r.Uint32()
			if got, want := f.fn(seed, p), crc32.Update(seed, crc32.MakeTable(crc32.Castagnoli), p); got != want {
				t.Fatalf("%s: %d bytes from %#x: got %#x, want %#x", f.name, n, seed, got, want)
			}
		}
		whole := f.fn(0, buf)
		if want := crc32.Checksum(buf, crc32.MakeTable(crc32.Castagnoli)); whole != want {
			t.Fatalf("%s: 70000 bytes: got %#x, want %#x", f.name, whole, want)
		}
		var c uint32
		for p := buf; len(p) > 0; {
			k := min(len(p), 1+r.IntN(5000))
			c = f.fn(c, p[:k])
			p = p[k:]
		}
		if c != whole {
			t.Fatalf("%s: chained updates give %#x, one update %#x", f.name, c, whole)
		}
	}
}

// The known answer: CRC-32C("123456789") = 0xe3069283 (RFC 3720, B.4),
// through the chosen implementation.
func TestCheckValue(t *testing.T) {
	if got := Checksum([]byte("123456789")); got != 0xe3069283 {
		t.Fatalf("Checksum(123456789) = %#x with %s, want 0xe3069283", got, Chosen())
	}
	if c := Chosen(); c != Stdlib && c != Table {
		t.Fatalf("Chosen() = %q", c)
	}
}

func BenchmarkImpl(b *testing.B) {
	buf := make([]byte, 1<<20)
	for _, f := range []struct {
		name Impl
		fn   func(uint32, []byte) uint32
	}{{Stdlib, stdlibUpdate}, {Table, tableUpdate}} {
		b.Run(string(f.name), func(b *testing.B) {
			b.SetBytes(int64(len(buf)))
			for b.Loop() {
				f.fn(0, buf)
			}
		})
	}
}
