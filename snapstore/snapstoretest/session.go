// Package snapstoretest makes real finished sessions in a store, for the
// tests of the packages above snapstore.
package snapstoretest

import (
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/snapstore"
)

// KernelCOW is a COW file the kernel wrote: snapstore's golden test data
// (testdata/kernel/ext4-4k, see its README), an ext4 session of 147
// chunks of 4 KiB on a 16 MiB device.
func KernelCOW(t testing.TB) []byte {
	t.Helper()
	_, here, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("snapstoretest: cannot find its own source")
	}
	f, err := os.Open(filepath.Join(filepath.Dir(here), "..", "testdata", "kernel", "ext4-4k", "cow.img.gz"))
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

// Finished makes a finished session of device name in store from
// KernelCOW, armed a second before mount, mounted at mount, unmounted a
// minute later and converted, and returns its directory. With
// invalidReason, the session is flagged invalid before its conversion, as
// when the kernel dropped its snapshot.
func Finished(t testing.TB, store, name string, mount time.Time, invalidReason string) string {
	t.Helper()
	dir, err := snapstore.CreateSession(store, snapstore.State{
		Name: name, Device: snapstore.Device{Path: "/dev/" + name, Size: 16 << 20}, ChunkSize: 4096,
		Times: snapstore.Times{Armed: mount.Add(-time.Second)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, snapstore.CowFile), KernelCOW(t), 0o600); err != nil {
		t.Fatal(err)
	}
	if dir, err = snapstore.MarkMounted(dir, mount, "ext4"); err != nil {
		t.Fatal(err)
	}
	if err := snapstore.MarkUnmounted(dir, mount.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if invalidReason != "" {
		if err := snapstore.MarkInvalid(dir, invalidReason); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := snapstore.Convert(context.Background(), dir, snapstore.ConvertOptions{Salvage: invalidReason != ""}); err != nil {
		t.Fatal(err)
	}
	return dir
}
