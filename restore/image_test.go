package restore

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// sparseDevice returns an 8 MiB device image that is zero except for a few
// data regions, some of them not block-aligned.
func sparseDevice(rng *rand.Rand) []byte {
	dev := make([]byte, 8<<20)
	for _, r := range [][2]int{{0, 4096}, {1 << 20, 1<<20 + 100}, {3<<20 + 4000, 3<<20 + 9000}, {8<<20 - 512, 8 << 20}} {
		copy(dev[r[0]:r[1]], randomBytes(rng, r[1]-r[0]))
	}
	return dev
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestCopyImageSparse(t *testing.T) {
	rng := rand.New(rand.NewPCG(41, 42))
	dev := sparseDevice(rng)
	path := filepath.Join(t.TempDir(), "img")
	// A file with old content: CopyImage must not leave any of it.
	if err := os.WriteFile(path, bytes.Repeat([]byte{0xAA}, 10<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := &recProgress{}
	st, err := CopyImage(context.Background(), f, bytes.NewReader(dev), int64(len(dev)), p)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, dev) {
		t.Fatalf("copy differs from the source (len %d vs %d) at byte %d", len(got), len(dev), firstDiff(got, dev))
	}
	// Data regions touch 1 + 1 + 3 + 1 blocks of 4 KiB.
	if st.DataBytes != 6*4096 || st.HoleBytes != 8<<20-6*4096 || st.Bytes != 8<<20 {
		t.Errorf("stats %+v", st)
	}
	if a := allocated(t, path); a > 1<<20 {
		t.Errorf("%d bytes allocated for an image with 20 KiB of data: holes were written", a)
	}
	if p.added["copy"] != 8<<20 || len(p.events) != 2 {
		t.Errorf("progress %v %v", p.events, p.added)
	}
}

func TestCopyImageShortSource(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = CopyImage(context.Background(), f, bytes.NewReader(make([]byte, 1000)), 4096, nil)
	if err == nil || !strings.Contains(err.Error(), "reading 4096 bytes at byte 0 of the source") {
		t.Fatalf("error %v", err)
	}
}

// TestApplyToImage is `restore --to FILE` end to end on the host: the file
// gets the model's restored image, the source is untouched, and a damaged
// record stops everything before the file is written.
func TestApplyToImage(t *testing.T) {
	rng := rand.New(rand.NewPCG(43, 44))
	dev := sparseDevice(rng)
	orig := bytes.Clone(dev)
	ms := threeSessions(rng, 2<<20)
	want := modelRestore(dev, ms)
	dir := t.TempDir()
	path := filepath.Join(dir, "restored.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, cs, err := mustPlan(t, ms).ApplyToImage(context.Background(), f, bytes.NewReader(dev), int64(len(dev)), ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("image differs from the model at byte %d", firstDiff(got, want))
	}
	if !bytes.Equal(dev, orig) {
		t.Fatalf("the source changed")
	}
	if res.Bytes != 2<<20 || cs.Bytes != 8<<20 {
		t.Errorf("result %+v, copy %+v", res, cs)
	}

	// Damage: nothing is written, not even the copy.
	ms[2].bad = map[uint64]bool{ms[2].recs[1].Offset: true}
	path2 := filepath.Join(dir, "damaged.img")
	f2, err := os.Create(path2)
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	_, _, err = mustPlan(t, ms).ApplyToImage(context.Background(), f2, bytes.NewReader(dev), int64(len(dev)), ApplyOptions{})
	var re *RecordError
	if !errors.As(err, &re) || re.Session != "sdb1_1700000200" || re.Index != 1 {
		t.Fatalf("error %v", err)
	}
	if fi, err := f2.Stat(); err != nil || fi.Size() != 0 {
		t.Errorf("the image file was touched: %v %v", fi.Size(), err)
	}

	// A plan reaching past the source is refused before anything is written.
	ms[2].bad = nil
	_, _, err = mustPlan(t, ms).ApplyToImage(context.Background(), f2, bytes.NewReader(dev[:1<<20]), 1<<20, ApplyOptions{})
	if !errors.Is(err, ErrOutOfBounds) {
		t.Fatalf("error %v", err)
	}
	if fi, err := f2.Stat(); err != nil || fi.Size() != 0 {
		t.Errorf("the image file was touched: %v %v", fi.Size(), err)
	}
}

// TestApplyToBlockImage: a block device destination (here a file standing
// for one) is written whole, zeros too, over what it held; what lies past
// the image is left alone; one too small is refused before a byte is
// written. A failure after the destination began to change is an
// *IncompleteImageError, one before it is not.
func TestApplyToBlockImage(t *testing.T) {
	rng := rand.New(rand.NewPCG(45, 46))
	dev := sparseDevice(rng)
	ms := threeSessions(rng, 2<<20)
	want := modelRestore(dev, ms)
	path := filepath.Join(t.TempDir(), "blockdev")
	old := bytes.Repeat([]byte{0xAA}, len(dev)+4096)
	if err := os.WriteFile(path, old, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, cs, err := mustPlan(t, ms).ApplyToImage(context.Background(), BlockImage{F: f, Size: int64(len(old))}, bytes.NewReader(dev), int64(len(dev)), ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if !bytes.Equal(got[:len(dev)], want) || !bytes.Equal(got[len(dev):], old[len(dev):]) || cs.HoleBytes != 0 {
		t.Fatalf("device differs from the image at byte %d (or past it); copy %+v", firstDiff(got[:len(dev)], want), cs)
	}

	if err := os.WriteFile(path, old, 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = mustPlan(t, ms).ApplyToImage(context.Background(), BlockImage{F: f, Size: int64(len(dev)) - 1}, bytes.NewReader(dev), int64(len(dev)), ApplyOptions{})
	if err == nil || errors.As(err, new(*IncompleteImageError)) {
		t.Fatalf("a device too small: %v", err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, old) {
		t.Fatal("a device too small was written")
	}

	// A source shorter than it claims fails the copy: the file was changed.
	img, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	_, _, err = mustPlan(t, ms).ApplyToImage(context.Background(), img, bytes.NewReader(dev[:4<<20]), int64(len(dev)), ApplyOptions{})
	if !errors.As(err, new(*IncompleteImageError)) {
		t.Fatalf("a failed copy: %v, want an IncompleteImageError", err)
	}
}
