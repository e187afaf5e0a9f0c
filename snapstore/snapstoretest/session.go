// Package snapstoretest makes real finished sessions in a store, for the
// tests of the packages above snapstore.
package snapstoretest

import (
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/snapstore"
)

// KernelCOW is a COW file the kernel wrote: snapstore's golden test data
// (testdata/kernel/ext4-4k, see its README), an ext4 session of 147
// chunks of 4 KiB on a 16 MiB device.
func KernelCOW(t testing.TB) []byte {
	t.Helper()
	f, err := os.Open(kernelCOWPath(t))
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

// kernelCOWPath finds the test data from the test's directory upwards:
// the test runs in its package's directory, on the host and in the test
// guest alike (where the source tree is not where it was built).
func kernelCOWPath(t testing.TB) string {
	t.Helper()
	rel := filepath.Join("snapstore", "testdata", "kernel", "ext4-4k", "cow.img.gz")
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if p := filepath.Join(dir, rel); fileExists(p) {
			return p
		}
		up := filepath.Dir(dir)
		if up == dir {
			t.Fatalf("snapstoretest: %s not found in the test's directory or above", rel)
		}
		dir = up
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
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
