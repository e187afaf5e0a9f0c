//go:build vm

package dm_test

// These tests run inside the test guest (hack/vm/exec) against the real
// kernel: device-mapper, dm-snapshot and loop, with no udev. Each test builds
// what it needs on sparse files in /tmp and must leave no dmsnap device and
// no loop device behind.

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/vmtest"
	"golang.org/x/sys/unix"
)

const chunk = 8 // 4 KiB

// requireKernel fails without device-mapper and registers the final check
// that the test left nothing behind (cleanups run last-in first-out, so this
// one runs after the test's own).
func requireKernel(t *testing.T) {
	t.Helper()
	vmtest.RequireDM(t)
	v, err := dm.EnsureControl()
	if err != nil {
		t.Fatalf("EnsureControl: %v", err)
	}
	if v[0] != 4 {
		t.Fatalf("device-mapper interface version %s, want 4.x", v)
	}
	t.Cleanup(func() { assertClean(t) })
}

// assertClean fails when a dmsnap device, its /dev/mapper node or a bound
// loop device is left.
func assertClean(t *testing.T) {
	t.Helper()
	items, err := dm.List()
	if err != nil {
		t.Errorf("list: %v", err)
	}
	for _, it := range items {
		if strings.HasPrefix(it.Name, dm.Prefix) {
			t.Errorf("device-mapper device %s (%s) left behind", it.Name, it.Dev)
		}
	}
	nodes, _ := filepath.Glob("/dev/mapper/" + dm.Prefix + "*")
	for _, n := range nodes {
		t.Errorf("device node %s left behind", n)
	}
	// Auto-clear happens at the last close; give the kernel a moment.
	var loops []*dm.Loop
	for range 20 {
		if loops, err = dm.BoundLoops(); err != nil || len(loops) == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Errorf("bound loops: %v", err)
	}
	for _, l := range loops {
		t.Errorf("loop device %s still bound to %s", l.Path, l.Backing)
	}
}

// attach binds a file to a loop device and detaches it at cleanup.
func attach(t *testing.T, file string, opts dm.LoopOptions) *dm.Loop {
	t.Helper()
	l, err := dm.AttachLoop(file, opts)
	if err != nil {
		t.Fatalf("AttachLoop(%s): %v", file, err)
	}
	if !opts.AutoClear {
		t.Cleanup(func() {
			l.Close()
			if err := dm.DetachLoop(l.Path); err != nil && !errors.Is(err, dm.ErrNotFound) {
				t.Errorf("detach %s: %v", l.Path, err)
			}
		})
	} else {
		t.Cleanup(func() { l.Close() })
	}
	return l
}

// kernelCOW makes a sparse COW file and attaches it the way sessions do:
// auto-clear, direct I/O requested.
func kernelCOW(t *testing.T, dir, name string, size int64) (*dm.Loop, string) {
	t.Helper()
	p := vmtest.TempFile(t, dir, name, size)
	return attach(t, p, dm.LoopOptions{AutoClear: true, DirectIO: true}), p
}

// build stacks name over dev and tears it down at cleanup.
func build(t *testing.T, name, dev string) dm.Stack {
	t.Helper()
	s := dm.Stack{Name: name, Device: dev}
	if err := s.Build(); err != nil {
		t.Fatalf("Build: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Teardown(); err != nil {
			t.Errorf("Teardown: %v", err)
		}
	})
	return s
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// writeAt writes to a block device and makes it durable.
func writeAt(t *testing.T, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatalf("write %s at %d: %v", path, off, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("sync %s: %v", path, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func readAt(t *testing.T, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil && err != io.EOF {
		t.Fatalf("read %s at %d: %v", path, off, err)
	}
	return b
}

func status(t *testing.T, s dm.Stack, n int) dm.SnapshotStatus {
	t.Helper()
	st, err := s.SnapshotStatus(n)
	if err != nil {
		t.Fatalf("status of snapshot %d: %v", n, err)
	}
	return st
}

// rawBase makes a loop device over a sparse file whose first MiB holds a
// pattern, so that snapshot comparisons are not of zeros only.
func rawBase(t *testing.T, dir string, size int64) *dm.Loop {
	t.Helper()
	lo := attach(t, vmtest.TempFile(t, dir, "base.img", size), dm.LoopOptions{})
	writeAt(t, lo.Path, 0, randomBytes(99, 1<<20))
	return lo
}

// (a) linear + snapshot-origin + snapshot over an ext4 device: the snapshot
// keeps the image from before the mount, byte for byte.
func TestStackKeepsPreMountImage(t *testing.T) {
	requireKernel(t)
	dir := t.TempDir()
	base := attach(t, vmtest.TempFile(t, dir, "base.img", 64<<20), dm.LoopOptions{})
	vmtest.Run(t, "mkfs.ext4", "-q", "-F", base.Path)
	before := vmtest.SHA256(t, base.Path)

	s := build(t, "vma", base.Path)
	cow, _ := kernelCOW(t, dir, "cow.img", 80<<20)
	t.Logf("COW %s: direct I/O took: %v", cow.Path, cow.DirectIO)
	if err := s.AddSnapshot(1, cow.Path, chunk); err != nil {
		t.Fatal(err)
	}
	cow.Close() // device-mapper holds it now; auto-clear frees it with the snapshot

	// Without udev the /dev/mapper nodes are ours.
	for _, name := range []string{s.OriginName(), s.RealName(), s.SnapshotName(1)} {
		info, err := dm.Info(name)
		if err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Stat(dm.MapperPath(name), &st); err != nil {
			t.Fatalf("node of %s: %v", name, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFBLK || dm.DevFromNumber(st.Rdev) != info.Dev {
			t.Errorf("%s is not block device %s", dm.MapperPath(name), info.Dev)
		}
	}
	if got := vmtest.SHA256(t, s.OriginPath()); got != before {
		t.Fatalf("origin differs from the device before any write")
	}

	// Device-mapper holds the raw device: mounting it behind the stack fails.
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(base.Path, mnt, "ext4", 0, ""); err == nil {
		unix.Unmount(mnt, 0)
		t.Fatal("mounting the raw device under an active stack succeeded")
	}

	if err := unix.Mount(s.OriginPath(), mnt, "ext4", 0, ""); err != nil {
		t.Fatalf("mount origin: %v", err)
	}
	for i := range 4 {
		if err := os.WriteFile(filepath.Join(mnt, "file"+string(rune('0'+i))), randomBytes(uint64(i), 1<<20), 0o644); err != nil {
			unix.Unmount(mnt, 0)
			t.Fatal(err)
		}
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatalf("unmount: %v", err)
	}

	if got := vmtest.SHA256(t, s.OriginPath()); got == before {
		t.Fatal("origin unchanged after writing 4 MiB of files")
	}
	if got := vmtest.SHA256(t, s.SnapshotPath(1)); got != before {
		t.Fatalf("snapshot SHA-256 %s, want the pre-mount %s", got, before)
	}
	st := status(t, s, 1)
	if !st.Valid() || st.DataSectors() < 4<<20/512 {
		t.Errorf("status %s: want at least 4 MiB of pre-images", st)
	}
	t.Logf("after the session: %s", st)

	if err := s.Teardown(); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.Active(); ok || err != nil {
		t.Errorf("Active after teardown = %v, %v", ok, err)
	}
}

// (b) the kernel's own status strings parse, and match the persistent
// store's arithmetic: 2c/T 2c fresh, one chunk per first write.
func TestStatusFromKernel(t *testing.T) {
	requireKernel(t)
	dir := t.TempDir()
	base := rawBase(t, dir, 32<<20)
	s := build(t, "vmb", base.Path)
	cow, cowFile := kernelCOW(t, dir, "cow.img", 16<<20)
	if err := s.AddSnapshot(1, cow.Path, chunk); err != nil {
		t.Fatal(err)
	}
	cow.Close()
	raw, err := dm.Status(s.SnapshotName(1))
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != 1 || raw[0].Type != "snapshot" || raw[0].Params != "16/32768 16" {
		t.Fatalf("fresh snapshot status %q, want one snapshot target \"16/32768 16\"", raw)
	}

	// Tables read back (DM_STATUS_TABLE_FLAG) are what we loaded.
	real, err := dm.Info(s.RealName())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]dm.Target{
		s.RealName():      dm.Linear{Length: 65536, Device: base.Dev},
		s.OriginName():    dm.SnapshotOrigin{Length: 65536, Origin: real.Dev},
		s.SnapshotName(1): dm.Snapshot{Length: 65536, Origin: real.Dev, COW: cow.Dev, ChunkSectors: chunk},
	}
	for name, w := range want {
		tbl, err := dm.Table(name)
		if err != nil {
			t.Fatal(err)
		}
		if len(tbl) != 1 {
			t.Fatalf("%s table %q", name, tbl)
		}
		got, err := dm.ParseTarget(tbl[0])
		if err != nil || got != w {
			t.Errorf("%s table %q = %#v (%v), want %#v", name, tbl[0], got, err, w)
		}
	}
	if st, err := dm.Status(s.OriginName()); err != nil || len(st) != 1 || st[0].Params != "" {
		t.Errorf("origin status %q, %v: want one empty status", st, err)
	}

	writeAt(t, s.OriginPath(), 0, randomBytes(1, 4096))
	if st := status(t, s, 1); st != (dm.SnapshotStatus{State: dm.SnapshotActive, Allocated: 24, Total: 32768, Metadata: 16}) {
		t.Errorf("after one chunk: %s, want 24/32768 16", st)
	}
	writeAt(t, s.OriginPath(), 512, randomBytes(2, 512)) // same chunk again: no copy
	writeAt(t, s.OriginPath(), 8192, randomBytes(3, 8192))
	if st := status(t, s, 1); st.Allocated != 40 || st.Metadata != 16 {
		t.Errorf("after three chunks: %s, want 40/32768 16", st)
	}

	// A second snapshot with 8 KiB chunks: fresh is 2c/T 2c with c = 16.
	cow2, _ := kernelCOW(t, dir, "cow2.img", 4<<20)
	if err := s.AddSnapshot(2, cow2.Path, 16); err != nil {
		t.Fatal(err)
	}
	cow2.Close()
	if st := status(t, s, 2); st.String() != "32/8192 32" {
		t.Errorf("fresh 8 KiB-chunk snapshot: %s, want 32/8192 32", st)
	}
	snaps, err := s.Snapshots()
	if err != nil || len(snaps) != 2 || snaps[0].N != 1 || snaps[1].N != 2 || snaps[1].Target.ChunkSectors != 16 {
		t.Errorf("Snapshots = %+v, %v", snaps, err)
	}

	// The COW's loop device is found by its file, also after the session
	// directory is renamed (as sessions are at mount).
	moved := filepath.Join(dir, "renamed")
	if err := os.Mkdir(moved, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(cowFile, filepath.Join(moved, "cow.img")); err != nil {
		t.Fatal(err)
	}
	l, err := dm.FindLoop(filepath.Join(moved, "cow.img"))
	if err != nil || l.Path != cow.Path || !l.AutoClear {
		t.Errorf("FindLoop after rename = %+v, %v; want %s with auto-clear", l, err, cow.Path)
	}
	if _, err := dm.FindLoop(filepath.Join(dir, "base.img")); err != nil {
		t.Errorf("FindLoop(base): %v", err)
	}
	if _, err := dm.FindLoop(filepath.Join(moved)); !errors.Is(err, dm.ErrNotFound) {
		t.Errorf("FindLoop of an unbound path: %v, want ErrNotFound", err)
	}
}

// (c) a COW too small for the writes: the kernel drops the snapshot
// (Invalid) and the origin stays writable.
func TestSmallCOWInvalidatesAndOriginStaysWritable(t *testing.T) {
	requireKernel(t)
	dir := t.TempDir()
	base := rawBase(t, dir, 32<<20)
	s := build(t, "vmc", base.Path)
	cow, _ := kernelCOW(t, dir, "cow.img", 64<<10) // header, one area, 14 data chunks
	if err := s.AddSnapshot(1, cow.Path, chunk); err != nil {
		t.Fatal(err)
	}
	cow.Close()
	if st := status(t, s, 1); st.String() != "16/128 16" {
		t.Fatalf("fresh: %s, want 16/128 16", st)
	}
	writeAt(t, s.OriginPath(), 0, randomBytes(4, 1<<20)) // 256 chunks
	st := status(t, s, 1)
	if st.State != dm.SnapshotInvalid {
		t.Fatalf("after overflowing the COW: %s, want Invalid", st)
	}
	data := randomBytes(5, 256<<10)
	writeAt(t, s.OriginPath(), 4<<20, data)
	if got := readAt(t, s.OriginPath(), 4<<20, len(data)); !bytes.Equal(got, data) {
		t.Fatal("origin does not read back what was written after the snapshot went invalid")
	}
	// Reads of an invalid snapshot fail rather than return wrong data.
	f, err := os.Open(s.SnapshotPath(1))
	if err != nil {
		t.Fatal(err)
	}
	_, rerr := f.ReadAt(make([]byte, 4096), 0)
	f.Close()
	if rerr == nil {
		t.Error("reading an invalid snapshot succeeded")
	}
	if err := s.RemoveSnapshot(1); err != nil {
		t.Fatalf("removing the invalid snapshot: %v", err)
	}
}

// (d) growing the COW file and its loop device: the kernel sees the new size
// at once and uses it.
func TestCOWGrowth(t *testing.T) {
	requireKernel(t)
	dir := t.TempDir()
	base := rawBase(t, dir, 32<<20)
	before := vmtest.SHA256(t, base.Path)
	s := build(t, "vmd", base.Path)
	cow, cowFile := kernelCOW(t, dir, "cow.img", 256<<10)
	if err := s.AddSnapshot(1, cow.Path, chunk); err != nil {
		t.Fatal(err)
	}
	cow.Close()
	if st := status(t, s, 1); st.String() != "16/512 16" {
		t.Fatalf("fresh: %s, want 16/512 16", st)
	}
	if err := os.Truncate(cowFile, 8<<20); err != nil {
		t.Fatal(err)
	}
	sectors, err := dm.SetLoopCapacity(cow.Path)
	if err != nil {
		t.Fatal(err)
	}
	if sectors != 16384 {
		t.Errorf("loop size after growth: %d sectors, want 16384", sectors)
	}
	if st := status(t, s, 1); st.String() != "16/16384 16" {
		t.Fatalf("after growth: %s, want 16/16384 16", st)
	}
	// 2 MiB of new writes: 512 chunks, far more than the old 512 sectors.
	writeAt(t, s.OriginPath(), 0, randomBytes(6, 2<<20))
	st := status(t, s, 1)
	if !st.Valid() || st.Allocated <= 512 || st.DataSectors() != 2<<20/512 {
		t.Fatalf("after 2 MiB of writes: %s, want valid with 4096 data sectors", st)
	}
	if got := vmtest.SHA256(t, s.SnapshotPath(1)); got != before {
		t.Fatal("snapshot does not show the device as it was before the writes")
	}
}

// (e) no stack over a mounted device, nor over one another stack holds.
func TestRefuseBusyDevice(t *testing.T) {
	requireKernel(t)
	dir := t.TempDir()
	base := attach(t, vmtest.TempFile(t, dir, "base.img", 32<<20), dm.LoopOptions{})
	vmtest.Run(t, "mkfs.ext4", "-q", "-F", base.Path)
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(base.Path, mnt, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	s := dm.Stack{Name: "vme", Device: base.Path}
	err := s.Build()
	unix.Unmount(mnt, 0)
	if !errors.Is(err, dm.ErrBusy) {
		t.Fatalf("Build over a mounted device: %v, want ErrBusy", err)
	}
	if msg := err.Error(); !strings.Contains(msg, base.Path+" is mounted on "+mnt) || !strings.Contains(msg, "umount "+mnt) {
		t.Errorf("message %q does not say where it is mounted and what to do", msg)
	}
	t.Logf("refusal: %v", err)
	if ok, _ := s.Active(); ok {
		t.Fatal("a device was created despite the refusal")
	}

	// Held by another stack: O_EXCL says so, sysfs names the holder.
	build(t, "vme", base.Path)
	other := dm.Stack{Name: "vme2", Device: base.Path}
	err = other.Build()
	if !errors.Is(err, dm.ErrBusy) || !strings.Contains(err.Error(), "dmsnap-vme-real") {
		t.Fatalf("Build over a device another stack holds: %v, want ErrBusy naming dmsnap-vme-real", err)
	}
	// Not a block device at all.
	notDev := dm.Stack{Name: "vme3", Device: filepath.Join(dir, "base.img")}
	if err := notDev.Build(); !errors.Is(err, dm.ErrNotBlockDevice) {
		t.Fatalf("Build over a regular file: %v, want ErrNotBlockDevice", err)
	}
	// A mounted origin cannot be torn down.
	s2 := dm.Stack{Name: "vme"}
	if err := unix.Mount(s2.OriginPath(), mnt, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	err = s2.Teardown()
	unix.Unmount(mnt, 0)
	if !errors.Is(err, dm.ErrBusy) || !strings.Contains(err.Error(), "is open or mounted") {
		t.Fatalf("Teardown of a mounted origin: %v, want ErrBusy", err)
	}
	if ok, _ := s2.Active(); !ok {
		t.Fatal("the refused teardown removed the origin")
	}
}

// (f) a COW file with an old "SnAp" header and exceptions is never reused
// by AddSnapshot; ReattachSnapshot, by design, does bring them back.
func TestStaleCOWHeaderNotReused(t *testing.T) {
	requireKernel(t)
	dir := t.TempDir()
	base := rawBase(t, dir, 32<<20)
	before := vmtest.SHA256(t, base.Path)
	s := build(t, "vmf", base.Path)

	cow, cowFile := kernelCOW(t, dir, "cow.img", 8<<20)
	if err := s.AddSnapshot(1, cow.Path, chunk); err != nil {
		t.Fatal(err)
	}
	cow.Close()
	writeAt(t, s.OriginPath(), 1<<20, randomBytes(7, 64<<10)) // 16 chunks
	used := status(t, s, 1)
	if used.DataSectors() != 128 {
		t.Fatalf("after 64 KiB: %s, want 128 data sectors", used)
	}
	if err := s.RemoveSnapshot(1); err != nil {
		t.Fatal(err)
	}
	stale, err := os.ReadFile(cowFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(stale, []byte("SnAp\x01\x00\x00\x00\x01\x00\x00\x00\x08\x00\x00\x00")) {
		t.Fatalf("COW header % x, want the kernel's valid SnAp header", stale[:16])
	}
	copyFile := filepath.Join(dir, "stale-copy.img")
	if err := os.WriteFile(copyFile, stale, 0o600); err != nil {
		t.Fatal(err)
	}

	// Reattaching the copy loads its exceptions: the device before the
	// writes reappears. This is what makes the zeroing necessary.
	cl := attach(t, copyFile, dm.LoopOptions{AutoClear: true})
	if err := s.ReattachSnapshot(2, cl.Path, chunk); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	if st := status(t, s, 2); st.Allocated != used.Allocated {
		t.Errorf("reattached store: %s, want the old %s", st, used)
	}
	if got := vmtest.SHA256(t, s.SnapshotPath(2)); got != before {
		t.Error("reattached snapshot does not show the pre-write device")
	}
	if err := s.RemoveSnapshot(2); err != nil {
		t.Fatal(err)
	}

	// A new snapshot on the stale file starts empty and shows the origin as
	// it is now.
	cow3 := attach(t, cowFile, dm.LoopOptions{AutoClear: true})
	if err := s.AddSnapshot(3, cow3.Path, chunk); err != nil {
		t.Fatal(err)
	}
	cow3.Close()
	if st := status(t, s, 3); st.String() != "16/16384 16" {
		t.Fatalf("new snapshot over a stale store: %s, want 16/16384 16", st)
	}
	if a, b := vmtest.SHA256(t, s.SnapshotPath(3)), vmtest.SHA256(t, s.OriginPath()); a != b {
		t.Fatal("new snapshot over a stale store differs from the origin: old exceptions came back")
	}
}

// Rotation: the next session's snapshot is added and the old one removed in
// one suspension; a write before lands in the old, a write after in the new.
func TestRotateInKernel(t *testing.T) {
	requireKernel(t)
	dir := t.TempDir()
	base := rawBase(t, dir, 32<<20)
	s := build(t, "vmr", base.Path)
	cow1, _ := kernelCOW(t, dir, "cow1.img", 4<<20)
	if err := s.AddSnapshot(1, cow1.Path, chunk); err != nil {
		t.Fatal(err)
	}
	cow1.Close()
	writeAt(t, s.OriginPath(), 0, randomBytes(8, 64<<10))
	afterFirst := vmtest.SHA256(t, s.OriginPath())

	cow2, _ := kernelCOW(t, dir, "cow2.img", 4<<20)
	if err := s.Rotate(1, 2, cow2.Path, chunk); err != nil {
		t.Fatal(err)
	}
	cow2.Close()
	if _, err := dm.Info(s.SnapshotName(1)); !errors.Is(err, dm.ErrNotFound) {
		t.Errorf("old snapshot still there: %v", err)
	}
	if st := status(t, s, 2); st.String() != "16/8192 16" {
		t.Errorf("new snapshot after rotation: %s, want 16/8192 16", st)
	}
	writeAt(t, s.OriginPath(), 0, randomBytes(9, 64<<10))
	if got := vmtest.SHA256(t, s.SnapshotPath(2)); got != afterFirst {
		t.Error("new snapshot does not show the device as it was at rotation")
	}
	if st := status(t, s, 2); st.DataSectors() != 128 {
		t.Errorf("new snapshot: %s, want 128 data sectors", st)
	}
	// Rotating away from a snapshot that is open is refused, nothing changes.
	f, err := os.Open(s.SnapshotPath(2))
	if err != nil {
		t.Fatal(err)
	}
	cow3, _ := kernelCOW(t, dir, "cow3.img", 4<<20)
	err = s.Rotate(2, 3, cow3.Path, chunk)
	f.Close()
	if !errors.Is(err, dm.ErrBusy) {
		t.Fatalf("rotate from an open snapshot: %v, want ErrBusy", err)
	}
	if _, err := dm.Info(s.SnapshotName(3)); !errors.Is(err, dm.ErrNotFound) {
		t.Errorf("refused rotation left %s: %v", s.SnapshotName(3), err)
	}
}

// Direct I/O is reported as the kernel decided it: not on tmpfs (no
// O_DIRECT in 6.1), yes on ext4.
func TestLoopDirectIOReported(t *testing.T) {
	requireKernel(t)
	dir := t.TempDir()
	onTmpfs, _ := kernelCOW(t, dir, "tmpfs.img", 1<<20)
	if onTmpfs.DirectIO {
		t.Log("direct I/O took on tmpfs (kernel >= 6.6)")
	}
	base := attach(t, vmtest.TempFile(t, dir, "ext4.img", 64<<20), dm.LoopOptions{})
	vmtest.Run(t, "mkfs.ext4", "-q", "-F", base.Path)
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(base.Path, mnt, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(mnt, 0)
	file := vmtest.TempFile(t, mnt, "cow.img", 4<<20)
	l, err := dm.AttachLoop(file, dm.LoopOptions{DirectIO: true, BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer dm.DetachLoop(l.Path)
	defer l.Close()
	if !l.DirectIO {
		t.Errorf("direct I/O did not take on ext4 with 4 KiB blocks (sysfs dio = 0)")
	}
	sysDIO, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(l.Path), "loop/dio"))
	if err != nil || strings.TrimSpace(string(sysDIO)) != map[bool]string{true: "1", false: "0"}[l.DirectIO] {
		t.Errorf("Loop.DirectIO = %v but sysfs dio = %q (%v)", l.DirectIO, sysDIO, err)
	}
	var bs uint64
	if f, err := os.Open(l.Path); err == nil {
		v, ierr := unix.IoctlGetInt(int(f.Fd()), unix.BLKSSZGET)
		f.Close()
		if ierr != nil {
			t.Fatal(ierr)
		}
		bs = uint64(v)
	}
	if bs != 4096 {
		t.Errorf("loop logical block size %d, want 4096", bs)
	}
}

// A table of many targets: the load encoding (next relative to each spec,
// 8-byte aligned) is accepted, and the table read back is larger than the
// first status buffer (16 KiB), so DM_BUFFER_FULL_FLAG forces a retry.
func TestManyTargetTable(t *testing.T) {
	requireKernel(t)
	dir := t.TempDir()
	base := rawBase(t, dir, 8<<20)
	const name = dm.Prefix + "vmt-many"
	const n = 700
	targets := make([]dm.Target, n)
	for i := range targets {
		// Reverse the 8-sector pieces so that the mapping is not the identity.
		targets[i] = dm.Linear{Start: uint64(i) * 8, Length: 8, Device: base.Dev, Offset: uint64(n-1-i) * 8}
	}
	if _, err := dm.Create(name, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dm.Remove(name); err != nil {
			t.Errorf("remove %s: %v", name, err)
		}
	})
	if err := dm.Load(name, targets...); err != nil {
		t.Fatal(err)
	}
	if err := dm.Resume(name); err != nil {
		t.Fatal(err)
	}
	tbl, err := dm.Table(name)
	if err != nil {
		t.Fatal(err)
	}
	if len(tbl) != n {
		t.Fatalf("read back %d targets, want %d", len(tbl), n)
	}
	size := 0
	for i, spec := range tbl {
		got, err := dm.ParseTarget(spec)
		if err != nil || got != targets[i] {
			t.Fatalf("target %d = %q (%v), want %#v", i, spec, err, targets[i])
		}
		size += 40 + len(spec.Params) + 8
	}
	if size <= 16<<10 {
		t.Fatalf("table reply of about %d bytes does not exceed the first buffer", size)
	}
	st, err := dm.Status(name)
	if err != nil || len(st) != n || st[n-1].Start != (n-1)*8 || st[n-1].Type != "linear" {
		t.Fatalf("status: %d targets, %v", len(st), err)
	}
	// The mapping is real: sector 0 of the device is the base's last piece.
	if !bytes.Equal(readAt(t, dm.MapperPath(name), 0, 4096), readAt(t, base.Path, (n-1)*4096, 4096)) {
		t.Error("first piece of the mapped device is not the base's last piece")
	}
}

// Repair after a crash in the middle of AddSnapshot: a snapshot device with
// only an inactive table, the origin reloaded and suspended.
func TestRepairInKernel(t *testing.T) {
	requireKernel(t)
	dir := t.TempDir()
	base := rawBase(t, dir, 32<<20)
	s := build(t, "vmp", base.Path)
	cow, _ := kernelCOW(t, dir, "cow.img", 4<<20)
	real, err := dm.Info(s.RealName())
	if err != nil {
		t.Fatal(err)
	}
	if err := dm.ZeroCOWHeader(cow.Path); err != nil {
		t.Fatal(err)
	}
	if _, err := dm.Create(s.SnapshotName(1), ""); err != nil {
		t.Fatal(err)
	}
	if err := dm.Load(s.SnapshotName(1), dm.Snapshot{Length: 65536, Origin: real.Dev, COW: cow.Dev, ChunkSectors: chunk}); err != nil {
		t.Fatal(err)
	}
	if err := dm.Load(s.OriginName(), dm.SnapshotOrigin{Length: 65536, Origin: real.Dev}); err != nil {
		t.Fatal(err)
	}
	if err := dm.Suspend(s.OriginName()); err != nil {
		t.Fatal(err)
	}
	if info, _ := dm.Info(s.OriginName()); !info.Suspended || !info.Inactive {
		t.Fatalf("origin %+v: want suspended with an inactive table", info)
	}
	if err := s.Repair(); err != nil {
		t.Fatal(err)
	}
	info, err := dm.Info(s.OriginName())
	if err != nil || info.Suspended || info.Inactive {
		t.Fatalf("origin after repair %+v, %v", info, err)
	}
	if _, err := dm.Info(s.SnapshotName(1)); !errors.Is(err, dm.ErrNotFound) {
		t.Fatalf("half-made snapshot still there: %v", err)
	}
	data := randomBytes(10, 4096)
	writeAt(t, s.OriginPath(), 0, data)
	if !bytes.Equal(readAt(t, s.OriginPath(), 0, 4096), data) {
		t.Fatal("origin not writable after repair")
	}
	// The COW device was released with the half-made snapshot and works for
	// a real one now.
	if err := s.AddSnapshot(1, cow.Path, chunk); err != nil {
		t.Fatal(err)
	}
	cow.Close()
	if st := status(t, s, 1); st.String() != "16/8192 16" {
		t.Errorf("snapshot after repair: %s", st)
	}
}

// Without udev and with a sparse /dev, the nodes dmsnap needs are made from
// the device numbers: /dev/mapper/control and /dev/loopN.
func TestNodesRecreated(t *testing.T) {
	requireKernel(t)
	if err := os.Remove(dm.ControlPath); err != nil {
		t.Fatal(err)
	}
	v, err := dm.EnsureControl()
	if err != nil {
		t.Fatalf("EnsureControl with the node missing: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(dm.ControlPath, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR ||
		dm.DevFromNumber(st.Rdev) != (dm.Dev{Major: 10, Minor: 236}) {
		t.Fatalf("control node after EnsureControl: mode %o rdev %v (%v)", st.Mode, dm.DevFromNumber(st.Rdev), err)
	}
	t.Logf("device-mapper %s", v)

	dir := t.TempDir()
	file := vmtest.TempFile(t, dir, "f.img", 1<<20)
	l, err := dm.AttachLoop(file, dm.LoopOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if err := dm.DetachLoop(l.Path); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(l.Path); err != nil {
		t.Fatal(err)
	}
	// The lowest free loop device is handed out again; its node is gone.
	l2 := attach(t, file, dm.LoopOptions{})
	if l2.Path != l.Path {
		t.Fatalf("got %s instead of %s: the recreation of the removed node is not exercised", l2.Path, l.Path)
	}
	if err := unix.Stat(l2.Path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK || dm.DevFromNumber(st.Rdev) != l2.Dev {
		t.Fatalf("%s after attach: rdev %v (%v), want block device %s", l2.Path, dm.DevFromNumber(st.Rdev), err, l2.Dev)
	}
	if got := readAt(t, l2.Path, 0, 16); len(got) != 16 {
		t.Fatal("recreated loop node not readable")
	}
}

// TestLoopBackingByNumbers: LoopBacking names the file the kernel holds by
// its device and inode (LOOP_GET_STATUS64), also after the file was
// renamed.
func TestLoopBackingByNumbers(t *testing.T) {
	requireKernel(t)
	dir := t.TempDir()
	file := vmtest.TempFile(t, dir, "dev.img", 1<<20)
	l := attach(t, file, dm.LoopOptions{})
	moved := filepath.Join(dir, "moved.img")
	if err := os.Rename(file, moved); err != nil {
		t.Fatal(err)
	}
	var want unix.Stat_t
	if err := unix.Stat(moved, &want); err != nil {
		t.Fatal(err)
	}
	d, i, ok, err := dm.LoopBacking(l.Dev)
	if err != nil || !ok || d != want.Dev || i != want.Ino {
		t.Fatalf("LoopBacking(%s): %d, %d, %v, %v; want %d, %d", l.Dev, d, i, ok, err, want.Dev, want.Ino)
	}
}
