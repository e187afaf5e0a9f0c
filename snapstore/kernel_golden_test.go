//go:build !vm

package snapstore

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func gunzipFile(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestKernelCOWGolden reads and converts a COW file the kernel wrote
// (testdata/kernel/ext4-4k, see its README), in both layouts, and checks
// every pre-image against the device as it was before the session.
func TestKernelCOWGolden(t *testing.T) {
	dir := filepath.Join("testdata", "kernel", "ext4-4k")
	cow := gunzipFile(t, filepath.Join(dir, "cow.img.gz"))
	pre := gunzipFile(t, filepath.Join(dir, "pre.img.gz"))
	cur := gunzipFile(t, filepath.Join(dir, "cur.img.gz"))
	if len(pre) != 16<<20 || len(cur) != len(pre) {
		t.Fatalf("device images of %d and %d bytes", len(pre), len(cur))
	}

	c, err := OpenCow(bytes.NewReader(cow), int64(len(cow)), "cow.img")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Header.IsValid() || c.ChunkSectors != 8 {
		t.Fatalf("header %+v", c.Header)
	}
	var list []Exception
	st, err := c.Walk(func(e CowEntry) error { list = append(list, e.Exception); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 147 || st.LastArea != 0 {
		t.Fatalf("%d exceptions, last area %d; the kernel reported 147 data chunks in area 0", len(list), st.LastArea)
	}
	// The file is as large as CreateSession made it for a 16 MiB device.
	if want := (Geometry{ChunkSectors: 8}).CowFileSize(int64(len(pre))); int64(len(cow)) != want {
		t.Errorf("cow.img is %d bytes, CowFileSize says %d", len(cow), want)
	}
	seenNew := map[uint64]bool{}
	for _, e := range list {
		cb := c.ChunkBytes()
		if seenNew[e.NewChunk] {
			t.Fatalf("COW chunk %d used twice", e.NewChunk)
		}
		seenNew[e.NewChunk] = true
		if !bytes.Equal(cow[int64(e.NewChunk)*cb:int64(e.NewChunk+1)*cb], pre[int64(e.OldChunk)*cb:int64(e.OldChunk+1)*cb]) {
			t.Fatalf("COW chunk %d is not origin chunk %d's pre-image", e.NewChunk, e.OldChunk)
		}
	}

	for _, layout := range []string{LayoutCOW, LayoutPacked} {
		t.Run(layout, func(t *testing.T) {
			sdir, err := CreateSession(t.TempDir(), State{
				Name: "loop0", Device: Device{Path: "/dev/loop0", Size: int64(len(pre)), DevNum: DevNum{Major: 7}},
				ChunkSize: 4096, Times: Times{Armed: fixtureTime},
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(sdir, CowFile), cow, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := MarkClosing(sdir); err != nil {
				t.Fatal(err)
			}
			res, err := Convert(context.Background(), sdir, ConvertOptions{Copy: layout == LayoutPacked, Now: fixedNow})
			if err != nil {
				t.Fatal(err)
			}
			if res.Meta.TotalBlocksSaved != 147 || res.Meta.Dmsnap.State != StateComplete {
				t.Fatalf("meta %+v", res.Meta)
			}
			if _, err := Verify(context.Background(), sdir); err != nil {
				t.Fatal(err)
			}
			s, err := Open(sdir)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			rc, err := NewReconstructor(bytes.NewReader(cur), int64(len(cur)), s)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(io.NewSectionReader(rc, 0, rc.Size()))
			if err != nil || !bytes.Equal(got, pre) {
				t.Fatalf("device rebuilt from the kernel's session differs from the device before it (%v)", err)
			}
			dev := bytes.Clone(cur)
			seedRestore(t, sdir, dev)
			if !bytes.Equal(dev, pre) {
				t.Fatal("the seed's restore of the kernel's session differs from the device before it")
			}
		})
	}
}
