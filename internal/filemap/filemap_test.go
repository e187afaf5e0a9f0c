package filemap

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// reply builds a FIEMAP reply holding exts (the kernel's layout, see the
// constants).
func reply(exts ...Extent) []byte {
	b := make([]byte, fiemapHeader+len(exts)*fiemapExtent)
	binary.LittleEndian.PutUint32(b[20:], uint32(len(exts)))
	binary.LittleEndian.PutUint32(b[24:], uint32(len(exts)))
	for i, e := range exts {
		x := b[fiemapHeader+i*fiemapExtent:]
		binary.LittleEndian.PutUint64(x[0:], e.Logical)
		binary.LittleEndian.PutUint64(x[8:], e.Physical)
		binary.LittleEndian.PutUint64(x[16:], e.Length)
		binary.LittleEndian.PutUint32(x[40:], e.Flags)
	}
	return b
}

func TestParseFiemap(t *testing.T) {
	want := []Extent{
		{Logical: 0, Physical: 1 << 20, Length: 8 << 20},
		{Logical: 8 << 20, Physical: 64 << 20, Length: 4096, Flags: FlagUnwritten},
		{Logical: 16 << 20, Physical: 128 << 20, Length: 1 << 20, Flags: FlagLast | FlagMerged},
	}
	got, err := parseFiemap(reply(want...))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("got %d extents, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("extent %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if !got[0].Plain() || got[1].Plain() || !got[2].Plain() {
		t.Errorf("Plain: %v %v %v, want true false true", got[0].Plain(), got[1].Plain(), got[2].Plain())
	}
	if got[0].End() != 8<<20 {
		t.Errorf("End %d", got[0].End())
	}
}

func TestParseFiemapRejects(t *testing.T) {
	short := reply(Extent{Length: 4096}, Extent{Logical: 4096, Length: 4096})
	binary.LittleEndian.PutUint32(short[20:], 3)
	for name, tc := range map[string]struct {
		buf  []byte
		want string
	}{
		"no header":      {make([]byte, 8), "shorter than its"},
		"claims more":    {short, "claims 3 extents"},
		"empty extent":   {reply(Extent{Logical: 0, Length: 0}), "empty"},
		"past 2^64":      {reply(Extent{Logical: ^uint64(0) - 10, Length: 4096}), "past 2^64"},
		"device wraps":   {reply(Extent{Physical: ^uint64(0) - 10, Length: 4096}), "past 2^64"},
		"overlap":        {reply(Extent{Logical: 0, Length: 8192}, Extent{Logical: 4096, Length: 4096}), "overlaps"},
		"goes backwards": {reply(Extent{Logical: 8192, Length: 4096}, Extent{Logical: 0, Length: 4096}), "overlaps or precedes"},
	} {
		_, err := parseFiemap(tc.buf)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", name, err, tc.want)
		}
	}
}

// FuzzParseFiemap: any reply either fails or gives sorted, disjoint,
// non-empty extents that fit the buffer.
func FuzzParseFiemap(f *testing.F) {
	f.Add(reply(Extent{Length: 4096}, Extent{Logical: 4096, Physical: 1 << 30, Length: 1 << 20, Flags: FlagLast}))
	f.Add(reply())
	f.Add(make([]byte, fiemapHeader-1))
	f.Fuzz(func(t *testing.T, b []byte) {
		exts, err := parseFiemap(b)
		if err != nil {
			return
		}
		if fiemapHeader+len(exts)*fiemapExtent > len(b) {
			t.Fatalf("%d extents from %d bytes", len(exts), len(b))
		}
		for i, e := range exts {
			if e.Length == 0 || e.End() <= e.Logical {
				t.Fatalf("extent %d: %+v", i, e)
			}
			if i > 0 && e.Logical < exts[i-1].End() {
				t.Fatalf("extent %d overlaps %d: %+v %+v", i, i-1, exts[i-1], e)
			}
		}
	})
}

func TestBadMountOption(t *testing.T) {
	for opts, want := range map[string]string{
		"rw,relatime":                    "",
		"rw,relatime,data=ordered":       "",
		"rw,data=journal":                "data=journal",
		"rw,dax":                         "dax",
		"rw,dax=always":                  "dax=always",
		"rw,dax=never,data=writeback":    "",
		"rw,dax=inode,errors=remount-ro": "dax=inode",
	} {
		if got := badMountOption(strings.Split(opts, ",")); got != want {
			t.Errorf("badMountOption(%q) = %q, want %q", opts, got, want)
		}
	}
}

// TestDropCache reads a file into the page cache, then drops it: DropCache
// must leave none of the file's pages cached, and firstCached must have
// seen them before.
func TestDropCache(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(make([]byte, len(data)), 0); err != nil {
		t.Fatal(err)
	}
	at, err := firstCached(f)
	if err != nil {
		t.Fatal(err)
	}
	if at != 0 {
		t.Fatalf("after reading the file, its first cached page is at %d, want 0", at)
	}
	err = DropCache(f)
	if errors.Is(err, ErrCached) {
		// A filesystem whose pages cannot be dropped (tmpfs: the page cache
		// is the file) must say so, and then firstCached still sees them.
		if at, ferr := firstCached(f); ferr != nil || at < 0 {
			t.Fatalf("DropCache says pages stay cached, firstCached says %d (%v)", at, ferr)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if at, err := firstCached(f); err != nil || at >= 0 {
		t.Fatalf("after DropCache the page at %d is cached (%v)", at, err)
	}
}

// TestFirstCachedSkipsHoles: a sparse file's cached hole pages do not
// count (SEEK_DATA), its cached data pages do.
func TestFirstCachedSkipsHoles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sparse")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("data"), 32<<20); err != nil {
		t.Fatal(err)
	}
	at, err := firstCached(f)
	if err != nil {
		t.Fatal(err)
	}
	if at != 32<<20 {
		t.Fatalf("first cached page at %d, want %d (the written one)", at, 32<<20)
	}
}
