//go:build !vm

package snapstore

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkConvert converts sessions of 1 MiB and 64 MiB of pre-images
// (4 KiB chunks, every chunk of the device changed, in random order), in
// both layouts; 1 GiB too when DMSNAP_BENCH_1G=1. It reports MB/s of
// session data. The COW file is copied into place and fsync'd before the
// timer starts, so the time is Convert's own: the CRC pass, the writes of
// blocks.map and blocks.crc, the punching and the fsyncs (and, packed, the
// copy). Compare with cp(1) of cow.img.
func BenchmarkConvert(b *testing.B) {
	sizes := []int64{1 << 20, 64 << 20}
	if os.Getenv("DMSNAP_BENCH_1G") == "1" {
		sizes = append(sizes, 1<<30)
	}
	for _, size := range sizes {
		tmpl := benchCow(b, size)
		for _, layout := range []string{LayoutCOW, LayoutPacked} {
			b.Run(fmt.Sprintf("%dMiB/%s", size>>20, layout), func(b *testing.B) {
				var elapsed time.Duration
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					dir := benchSessionDir(b, size, tmpl)
					b.StartTimer()
					start := time.Now()
					if _, err := Convert(context.Background(), dir, ConvertOptions{Copy: layout == LayoutPacked}); err != nil {
						b.Fatal(err)
					}
					elapsed += time.Since(start)
					b.StopTimer()
					os.RemoveAll(filepath.Dir(dir))
					b.StartTimer()
				}
				b.ReportMetric(float64(size)*float64(b.N)/1e6/elapsed.Seconds(), "MB/s")
			})
		}
	}
}

// benchCow writes a COW file (through CowWriter) in which every 4 KiB
// chunk of a device of size bytes was copied once, in random order.
func benchCow(b *testing.B, size int64) string {
	b.Helper()
	g := Geometry{ChunkSectors: 8}
	cb := g.ChunkBytes()
	chunks := size / cb
	path := filepath.Join(b.TempDir(), "cow.img")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(g.CowFileSize(size)); err != nil {
		b.Fatal(err)
	}
	w, err := NewCowWriter(f, cb, CowWriterOptions{})
	if err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 1))
	order := r.Perm(int(chunks))
	data := make([]byte, cb)
	for _, old := range order {
		fillRandom(r, data)
		if err := w.Add(uint64(old), data); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := w.Close(); err != nil {
		b.Fatal(err)
	}
	return path
}

// benchSessionDir makes a closed session holding a copy of tmpl.
func benchSessionDir(b *testing.B, size int64, tmpl string) string {
	b.Helper()
	dir, err := CreateSession(b.TempDir(), State{Name: "bench", Device: Device{Path: "/dev/bench", Size: size}, ChunkSize: 4096, Times: Times{Armed: fixtureTime}})
	if err != nil {
		b.Fatal(err)
	}
	if err := MarkClosing(dir); err != nil {
		b.Fatal(err)
	}
	src, err := os.Open(tmpl)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(filepath.Join(dir, CowFile), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer dst.Close()
	if _, err := io.Copy(dst, src); err != nil {
		b.Fatal(err)
	}
	if err := dst.Sync(); err != nil {
		b.Fatal(err)
	}
	return dir
}
