//go:build !vm

package snapstore

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/internal/filemap"
)

// mappable reports whether files in dir could be mapped to their device
// (filemap.Probe): ext4 or xfs with page-sized blocks. The host's temporary
// directory usually is; the tests check both outcomes.
func mappable(t *testing.T, dir string) bool {
	t.Helper()
	f, err := os.CreateTemp(dir, "probe")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	_, err = filemap.Probe(f)
	if err != nil && !errors.Is(err, filemap.ErrUnsupported) {
		t.Fatal(err)
	}
	return err == nil
}

// dataEnd returns where the first hole of the file starts (SEEK_HOLE from 0)
// and whether it has data at 0.
func dataEnd(t *testing.T, path string) (int64, bool) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_DATA); errors.Is(err, unix.ENXIO) {
		return 0, false
	} else if err != nil {
		t.Fatal(err)
	}
	end, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_HOLE)
	if err != nil {
		t.Fatal(err)
	}
	return end, true
}

// TestCreateSessionPrealloc: where the store can be mapped, the first
// Prealloc bytes of cow.img are written (zeros, to whole MiB, at most the
// file less its last block) and state.json says how many; elsewhere none
// are and state.json says 0. The kernel sees a new store either way.
func TestCreateSessionPrealloc(t *testing.T) {
	store := t.TempDir()
	ok := mappable(t, store)
	for _, tc := range []struct {
		name          string
		devSize, want int64
		mapped        int64 // what a mappable store gets
	}{
		{"2.5 MiB asked, 2 MiB written", 8 << 20, 5 << 19, 2 << 20},
		{"more than the file", 2 << 20, 64 << 20, 2 << 20},
		{"less than a MiB", 8 << 20, 1 << 19, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, err := CreateSession(t.TempDir(), State{Name: "p", Device: Device{Path: "/dev/p", Size: tc.devSize}, ChunkSize: 4096,
				Times: Times{Armed: fixtureTime}, Prealloc: tc.want})
			if err != nil {
				t.Fatal(err)
			}
			want := int64(0)
			if ok {
				want = tc.mapped
			}
			st, err := ReadState(dir)
			if err != nil {
				t.Fatal(err)
			}
			cow := filepath.Join(dir, CowFile)
			end, data := dataEnd(t, cow)
			if st.Prealloc != want || (want > 0 && (!data || end != want)) || (want == 0 && data) {
				t.Fatalf("state says %d bytes written ahead, the file has data up to %d (%v); want %d (store mappable: %v)", st.Prealloc, end, data, want, ok)
			}
			b, err := os.ReadFile(cow)
			if err != nil {
				t.Fatal(err)
			}
			for i, c := range b {
				if c != 0 {
					t.Fatalf("cow.img byte %d is %d: a new store must read as zeros", i, c)
				}
			}
		})
	}
}

// TestConvertUnpinsAndCuts: a session whose cow.img was written ahead and
// pinned, as dm.AttachCOW leaves it, converts to the same files as any
// other: the pin is cleared (blocks.dat can be punched and pruned), the
// zeros it did not use are cut off, every pre-image reads back.
func TestConvertUnpinsAndCuts(t *testing.T) {
	store := t.TempDir()
	fx := makeClosedSession(t, store, fixtureOpts{chunkSectors: 8, devSize: 4 << 20, writes: 40, seed: 11, prealloc: 2 << 20})
	cow := filepath.Join(fx.dir, CowFile)
	if mappable(t, store) {
		if fx.state.Prealloc != 2<<20 {
			t.Fatalf("prealloc %d", fx.state.Prealloc)
		}
		f, err := os.Open(cow)
		if err != nil {
			t.Fatal(err)
		}
		err = filemap.Pin(f, true)
		f.Close()
		switch {
		case errors.Is(err, unix.EPERM) && os.Geteuid() != 0:
			// Pinning takes CAP_LINUX_IMMUTABLE (make unit runs without
			// root): the conversion is checked unpinned.
		case err != nil:
			t.Fatal(err)
		default:
			if err := os.Truncate(cow, 0); !errors.Is(err, unix.EPERM) {
				t.Fatalf("truncating the pinned cow.img: %v, want EPERM", err)
			}
		}
	}
	res := convertFixture(t, fx, ConvertOptions{})
	dat := filepath.Join(fx.dir, DataFile)
	f, err := os.Open(dat)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if pinned, err := filemap.Pinned(f); err != nil && !errors.Is(err, unix.ENOTTY) || pinned {
		t.Fatalf("blocks.dat pinned: %v (%v)", pinned, err)
	}
	fi, _ := f.Stat()
	if conv := res.Meta.Dmsnap; fi.Size() >= 2<<20 || conv.State != StateComplete {
		t.Fatalf("blocks.dat of %d bytes (the 2 MiB written ahead must be cut to the last record), state %s", fi.Size(), conv.State)
	}
	checkPreImages(t, fx.dir, fx.sim)
}

// TestFillCow: where the store can be mapped, FillCow writes zeros over
// [from, to) to whole MiB, never into the file's last block, counts them in
// state.json and leaves the rest of the file as it was; elsewhere it writes
// nothing and says so by returning from. A bad range is refused.
func TestFillCow(t *testing.T) {
	store := t.TempDir()
	ok := mappable(t, store)
	dir, err := CreateSession(store, State{Name: "g", Device: Device{Path: "/dev/g", Size: 8 << 20}, ChunkSize: 4096,
		Times: Times{Armed: fixtureTime}, Prealloc: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	cow := filepath.Join(dir, CowFile)
	fi, err := os.Stat(cow)
	if err != nil {
		t.Fatal(err)
	}
	size := fi.Size()
	end, err := FillCow(dir, 3<<20, 5<<20)
	if err != nil {
		t.Fatal(err)
	}
	st, err := ReadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(cow)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data, derr := unix.Seek(int(f.Fd()), 2<<20, unix.SEEK_DATA)
	if !ok {
		if end != 3<<20 || st.Prealloc != 0 || !errors.Is(derr, unix.ENXIO) {
			t.Fatalf("unmappable store: end %d, prealloc %d, data at %d (%v)", end, st.Prealloc, data, derr)
		}
		return
	}
	hole, err := unix.Seek(int(f.Fd()), 3<<20, unix.SEEK_HOLE)
	if err != nil {
		t.Fatal(err)
	}
	if end != 5<<20 || st.Prealloc != 3<<20 || derr != nil || data != 3<<20 || hole != 5<<20 {
		t.Fatalf("end %d, prealloc %d, data from %d (%v) to %d", end, st.Prealloc, data, derr, hole)
	}
	// Up to the file's last block, to a whole MiB.
	last := (size - 4096) / (1 << 20) * (1 << 20)
	if end, err := FillCow(dir, 5<<20, size); err != nil || end != last {
		t.Fatalf("to the end: %d, %v; want %d", end, err, last)
	}
	if end, err := FillCow(dir, last, size); err != nil || end != last {
		t.Fatalf("no room: %d, %v", end, err)
	}
	if _, err := FillCow(dir, 4096, 1<<20); err == nil {
		t.Fatal("a range off a MiB was taken")
	}
	b, err := os.ReadFile(cow)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range b {
		if c != 0 {
			t.Fatalf("cow.img byte %d is %d", i, c)
		}
	}
}
