//go:build vm

package snapstore_test

// These tests run inside the test guest (hack/vm/exec) against the real
// kernel: a COW file written by the kernel's snapshot target, through the
// dm package's stack, converted by Convert, checked chunk by chunk against
// a copy of the device taken before the session.

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/vmtest"
	"github.com/dmsnap/dmsnap/snapstore"
	"golang.org/x/sys/unix"
)

// kernelSession is one session recorded by the real kernel.
type kernelSession struct {
	dir      string // converted session directory
	cowCopy  string // copy of cow.img taken before conversion ("" unless asked)
	pre, cur []byte // the device before and after the session
}

// workload changes the mounted filesystem at mnt.
type workload func(t *testing.T, mnt string)

// recordSession makes an ext4 filesystem of devSize bytes on a loop device,
// lets prepare fill it (unprotected), copies the device (the pre-image),
// stacks it with dmsnap's dm package, arms a session with snapstore's own
// CreateSession, mounts the origin, runs work, unmounts, removes the
// snapshot and tears the stack down, then converts the session.
func recordSession(t *testing.T, name string, devSize int64, chunkSectors uint32, prepare, work workload, keepCow bool) kernelSession {
	t.Helper()
	tmp := t.TempDir()
	img := vmtest.TempFile(t, tmp, "dev.img", devSize)
	base, err := dm.AttachLoop(img, dm.LoopOptions{})
	if err != nil {
		t.Fatalf("AttachLoop: %v", err)
	}
	t.Cleanup(func() {
		base.Close()
		dm.DetachLoop(base.Path)
	})
	vmtest.Run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", base.Path)
	mnt := filepath.Join(tmp, "mnt")
	os.Mkdir(mnt, 0o755)
	mount(t, base.Path, mnt)
	prepare(t, mnt)
	unmount(t, mnt)
	// The device's bytes are read from its backing file: writes that went
	// through device-mapper bypass /dev/loopN's own page cache, so reading
	// the loop device afterwards could return stale pages.
	pre := readDevice(t, img)

	s := dm.Stack{Name: name, Device: base.Path}
	if err := s.Build(); err != nil {
		t.Fatalf("Build: %v", err)
	}
	torn := false
	t.Cleanup(func() {
		if !torn {
			s.Teardown()
		}
	})

	var st unix.Stat_t
	if err := unix.Stat(base.Path, &st); err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(tmp, "store")
	dir, err := snapstore.CreateSession(store, snapstore.State{
		Name:      snapstore.SanitizeName(base.Path),
		Device:    snapstore.Device{Path: base.Path, Size: devSize, DevNum: snapstore.DevNum{Major: unix.Major(st.Rdev), Minor: unix.Minor(st.Rdev)}},
		ChunkSize: chunkSectors * snapstore.SectorSize,
		Times:     snapstore.Times{Armed: time.Now()},
	})
	if err != nil {
		t.Fatalf("CreateSession: %v", err)
	}
	cow, err := dm.AttachLoop(filepath.Join(dir, snapstore.CowFile), dm.LoopOptions{AutoClear: true, DirectIO: true})
	if err != nil {
		t.Fatalf("AttachLoop(cow): %v", err)
	}
	if err := s.AddSnapshot(1, cow.Path, chunkSectors); err != nil {
		cow.Close()
		t.Fatalf("AddSnapshot: %v", err)
	}
	cow.Close() // device-mapper holds it; auto-clear frees it with the snapshot

	mount(t, s.OriginPath(), mnt)
	if dir, err = snapstore.MarkMounted(dir, time.Now(), "ext4"); err != nil {
		t.Fatalf("MarkMounted: %v", err)
	}
	work(t, mnt)
	unmount(t, mnt)
	if err := snapstore.MarkUnmounted(dir, time.Now()); err != nil {
		t.Fatal(err)
	}
	ss, err := s.SnapshotStatus(1)
	if err != nil || !ss.Valid() {
		t.Fatalf("snapshot status %+v, %v", ss, err)
	}
	t.Logf("%s: kernel status %d/%d sectors, %d metadata", name, ss.Allocated, ss.Total, ss.Metadata)
	if err := s.RemoveSnapshot(1); err != nil {
		t.Fatalf("RemoveSnapshot: %v", err)
	}
	if err := s.Teardown(); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	torn = true
	waitLoopGone(t, filepath.Join(dir, snapstore.CowFile))
	cur := readDevice(t, img)

	ks := kernelSession{dir: dir, pre: pre, cur: cur}
	if keepCow {
		ks.cowCopy = filepath.Join(tmp, "cow-copy.img")
		vmtest.Run(t, "cp", filepath.Join(dir, snapstore.CowFile), ks.cowCopy)
	}
	res, err := snapstore.Convert(context.Background(), dir, snapstore.ConvertOptions{})
	if err != nil {
		t.Fatalf("Convert: %v", err)
	}
	if res.Meta.Dmsnap.State != snapstore.StateComplete {
		t.Fatalf("session state %s (%s)", res.Meta.Dmsnap.State, res.Meta.Dmsnap.InvalidReason)
	}
	// The kernel's own count: allocated minus metadata is the data chunks.
	if got, want := res.Meta.TotalBlocksSaved, int64(ss.DataSectors()/uint64(chunkSectors)); got != want {
		t.Errorf("%d records, the kernel reports %d data chunks", got, want)
	}
	return ks
}

// checkAgainstPreImage checks every chunk of the session against the device
// before the session, and rebuilds that device from the current one.
func checkAgainstPreImage(t *testing.T, ks kernelSession) {
	t.Helper()
	if _, err := snapstore.Verify(context.Background(), ks.dir); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	s, err := snapstore.Open(ks.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	entries, err := s.AllEntries()
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) == 0 {
		t.Fatal("the session holds no chunk: the workload changed nothing?")
	}
	var buf []byte
	changed := 0
	for _, e := range entries {
		if buf, err = s.ReadData(e, buf); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, ks.pre[e.Start():e.End()]) {
			t.Fatalf("record %d (sector %d): the kernel's pre-image differs from the device before the session", e.Index, e.Sector)
		}
		if !bytes.Equal(buf, ks.cur[e.Start():e.End()]) {
			changed++
		}
	}
	if changed == 0 {
		t.Fatal("no saved chunk differs from the device after the session")
	}
	rc, err := snapstore.NewReconstructor(bytes.NewReader(ks.cur), int64(len(ks.cur)), s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(io.NewSectionReader(rc, 0, rc.Size()))
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(ks.pre) {
		t.Fatal("device rebuilt from the session differs from the device before it")
	}
	// Chunks outside the session must be the ones the session did not touch.
	cb := int64(s.Meta.Dmsnap.ChunkSize)
	inSession := map[int64]bool{}
	for _, e := range entries {
		inSession[e.Start()/cb] = true
	}
	for c := int64(0); c*cb < int64(len(ks.pre)); c++ {
		end := min((c+1)*cb, int64(len(ks.pre)))
		if !inSession[c] && !bytes.Equal(ks.pre[c*cb:end], ks.cur[c*cb:end]) {
			t.Fatalf("origin chunk %d changed but is not in the session", c)
		}
	}
	t.Logf("%d records, %d with bytes that changed; layout %s", len(entries), changed, s.Meta.Dmsnap.Layout)
}

func TestKernelCOWConverts(t *testing.T) {
	vmtest.RequireDM(t)
	if _, err := dm.EnsureControl(); err != nil {
		t.Fatalf("EnsureControl: %v", err)
	}
	for _, chunk := range []uint32{8, 128} { // 4 KiB, 64 KiB
		t.Run(fmt.Sprintf("%dKiB", chunk/2), func(t *testing.T) {
			ks := recordSession(t, fmt.Sprintf("snapvm%d", chunk), 64<<20, chunk, prepareFiles, rewriteFiles, false)
			checkAgainstPreImage(t, ks)
		})
	}
}

// prepareFiles fills the filesystem before the session.
func prepareFiles(t *testing.T, mnt string) {
	r := rand.New(rand.NewPCG(1, 1))
	for i := 0; i < 4; i++ {
		writeFile(t, filepath.Join(mnt, fmt.Sprintf("base%d.bin", i)), randomData(r, 3<<20+i*1000))
	}
	os.Mkdir(filepath.Join(mnt, "small"), 0o755)
	for i := 0; i < 40; i++ {
		writeFile(t, filepath.Join(mnt, "small", fmt.Sprintf("f%02d.txt", i)), []byte(strings.Repeat(fmt.Sprintf("line %d\n", i), 50+i)))
	}
}

// rewriteFiles writes new files, overwrites parts of old ones in place,
// appends, truncates and deletes.
func rewriteFiles(t *testing.T, mnt string) {
	r := rand.New(rand.NewPCG(2, 2))
	writeFile(t, filepath.Join(mnt, "new.bin"), randomData(r, 5<<20))
	f, err := os.OpenFile(filepath.Join(mnt, "base0.bin"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 100000, 1 << 20, 3<<20 - 10} {
		if _, err := f.WriteAt(randomData(r, 9000), off); err != nil {
			t.Fatal(err)
		}
	}
	f.Sync()
	f.Close()
	f, err = os.OpenFile(filepath.Join(mnt, "base1.bin"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(randomData(r, 200000))
	f.Sync()
	f.Close()
	if err := os.Truncate(filepath.Join(mnt, "base2.bin"), 12345); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(mnt, "base3.bin"))
	for i := 0; i < 40; i += 3 {
		writeFile(t, filepath.Join(mnt, "small", fmt.Sprintf("f%02d.txt", i)), []byte(strings.Repeat("changed\n", 10+i)))
	}
	unix.Sync()
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func randomData(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := i; j < min(i+8, n); j++ {
			b[j] = byte(v)
			v >>= 8
		}
	}
	return b
}

func mount(t *testing.T, dev, dir string) {
	t.Helper()
	if err := unix.Mount(dev, dir, "ext4", 0, ""); err != nil {
		t.Fatalf("mount %s on %s: %v", dev, dir, err)
	}
}

func unmount(t *testing.T, dir string) {
	t.Helper()
	if err := unix.Unmount(dir, 0); err != nil {
		t.Fatalf("unmount %s: %v", dir, err)
	}
}

func readDevice(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return b
}

// waitLoopGone waits for the auto-cleared loop device over file to go.
func waitLoopGone(t *testing.T, file string) {
	t.Helper()
	for range 50 {
		if l, err := dm.FindLoop(file); err != nil || l == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("loop device over %s still bound", file)
}

// TestKernelCOWGoldenCapture records a small session whose COW file and
// device images compress well (ext4 metadata and text), checks it like the
// others, and with DMSNAP_CAPTURE=1 prints them gzip'd and base64'd between
// markers so that hack/ or a developer can store them as
// testdata/kernel/ext4-4k/ (see TestKernelCOWGolden on the host).
func TestKernelCOWGoldenCapture(t *testing.T) {
	vmtest.RequireDM(t)
	if _, err := dm.EnsureControl(); err != nil {
		t.Fatalf("EnsureControl: %v", err)
	}
	text := func(seed int) workload {
		return func(t *testing.T, mnt string) {
			for i := 0; i < 12; i++ {
				writeFile(t, filepath.Join(mnt, fmt.Sprintf("doc%02d.txt", i)), []byte(strings.Repeat(fmt.Sprintf("seed %d doc %d: the quick brown fox\n", seed, i), 300+40*i)))
			}
			if seed == 2 {
				os.Remove(filepath.Join(mnt, "doc03.txt"))
				os.Truncate(filepath.Join(mnt, "doc07.txt"), 100)
			}
			unix.Sync()
		}
	}
	ks := recordSession(t, "golden", 16<<20, 8, text(1), text(2), true)
	checkAgainstPreImage(t, ks)
	if os.Getenv("DMSNAP_CAPTURE") != "1" {
		return
	}
	cow, err := os.ReadFile(ks.cowCopy)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		name string
		b    []byte
	}{{"cow.img.gz", cow}, {"pre.img.gz", ks.pre}, {"cur.img.gz", ks.cur}} {
		var gz bytes.Buffer
		w, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
		w.Write(f.b)
		w.Close()
		fmt.Printf("\n==BEGIN %s %d==\n%s\n==END %s==\n", f.name, len(f.b), base64.StdEncoding.EncodeToString(gz.Bytes()), f.name)
	}
}
