//go:build vm

package dm_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/directio"
	"github.com/dmsnap/dmsnap/internal/filemap"
	"github.com/dmsnap/dmsnap/internal/vmtest"
	"golang.org/x/sys/unix"
)

// prealloc makes a sparse COW file of size bytes in dir whose first n
// bytes are written zeros (what snapstore does at arming), around the page
// cache.
func prealloc(t *testing.T, dir string, size, n int64) string {
	t.Helper()
	p := vmtest.TempFile(t, dir, "cow.img", size)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := directio.NewWriter(f)
	defer w.Close()
	zero := directio.AlignedBuf(1 << 20)
	for off := int64(0); off < n; off += 1 << 20 {
		if _, err := w.WriteAt(zero, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return p
}

// reattach is a reboot's attach: the COW device over cowPath again, and
// snapshot n over it with its exceptions kept.
func reattach(t *testing.T, s dm.Stack, n int, cowPath string) dm.COW {
	t.Helper()
	cow, err := s.AttachCOW(n, cowPath, tailOf(cowPath))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ReattachSnapshot(n, cow.Path(), chunk); err != nil {
		t.Fatal(err)
	}
	return cow
}

// TestCOWMappedToStore: on ext4 and xfs stores the written start of a COW
// file goes straight to the store's block device and the rest to its tail
// file (cow.tail); a snapshot over that COW device keeps the
// pre-session image across the boundary, the file holds the exceptions at
// their offsets once its stale page cache is dropped, is pinned meanwhile,
// and a snapshot made again over it (a reboot) brings them all back.
func TestCOWMappedToStore(t *testing.T) {
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) {
			requireKernel(t)
			dir := t.TempDir()
			store := vmtest.StoreFS(t, dir, fs, 1<<30)
			base := rawBase(t, dir, 64<<20)
			writeAt(t, base.Path, 1<<20, randomBytes(7, 31<<20))
			pre := readAt(t, base.Path, 0, 64<<20)

			s := build(t, "vmcow", base.Path)
			cowPath := prealloc(t, store, 40<<20, 8<<20)
			cow, err := s.AttachCOW(1, cowPath, tailOf(cowPath))
			if err != nil {
				t.Fatal(err)
			}
			if cow.FastBytes != 8<<20 || cow.Bytes != 40<<20 || cow.Slow != "" {
				t.Fatalf("COW %+v: want the 8 MiB written mapped straight", cow)
			}
			if err := s.AddSnapshot(1, cow.Path(), chunk); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(cowPath)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if pinned, err := filemap.Pinned(f); err != nil || !pinned {
				t.Fatalf("cow.img pinned: %v, %v", pinned, err)
			}
			if err := os.Remove(cowPath); !errors.Is(err, unix.EPERM) {
				t.Fatalf("remove of the mapped cow.img: %v, want EPERM", err)
			}
			// Cache the first metadata area while it is empty: the kernel
			// fills it beneath the filesystem, so this page goes stale.
			if b := readAt(t, cowPath, 4096, 16); !bytes.Equal(b, make([]byte, 16)) {
				t.Fatalf("metadata area before any write: %x", b)
			}

			// 24 MiB of first writes: 8 MiB of pre-images land on the
			// store's device, 16 MiB in cow.tail, through its filesystem.
			writeAt(t, s.OriginPath(), 0, randomBytes(8, 24<<20))
			if got := readAt(t, s.SnapshotPath(1), 0, 64<<20); !bytes.Equal(got, pre) {
				t.Fatal("the snapshot does not show the image from before the writes")
			}
			st := status(t, s, 1)
			if st.DataSectors() < 24<<20/512 {
				t.Fatalf("status %s: want 24 MiB of pre-images", st)
			}
			if err := s.RemoveSnapshot(1); err != nil {
				t.Fatal(err)
			}
			if _, err := dm.Info(s.COWName(1)); !errors.Is(err, dm.ErrNotFound) {
				t.Fatalf("COW device after RemoveSnapshot: %v", err)
			}

			// The page cached before is stale now: the kernel wrote beneath
			// it (seen on ext4 and xfs; only logged, since the kernel may
			// drop a cached page whenever it likes).
			if b := readAt(t, cowPath, 4096, 16); bytes.Equal(b, make([]byte, 16)) {
				t.Logf("%s: before DropCache the metadata area still reads as zeros through the page cache (stale)", fs)
			} else {
				t.Logf("%s: the cached metadata page was dropped by the kernel already (%x)", fs, b)
			}
			if err := filemap.DropCache(f); err != nil {
				t.Fatal(err)
			}
			if b := readAt(t, cowPath, 0, 4); string(b) != "SnAp" {
				t.Fatalf("cow.img header %q, want SnAp", b)
			}
			// The first exception: origin chunk 0, stored in COW chunk 2.
			if e := readAt(t, cowPath, 4096, 16); !bytes.Equal(e, append(make([]byte, 8), 2, 0, 0, 0, 0, 0, 0, 0)) {
				t.Fatalf("first exception %x, want origin chunk 0 in COW chunk 2", e)
			}

			// A reboot: the snapshot over the same file again. All of the
			// file that is written (more than 24 MiB now) maps straight.
			if cow := reattach(t, s, 1, cowPath); cow.FastBytes < 24<<20 {
				t.Fatalf("COW after the reboot %+v: want the written 24 MiB and more mapped straight", cow)
			}
			if got := readAt(t, s.SnapshotPath(1), 0, 64<<20); !bytes.Equal(got, pre) {
				t.Fatal("after the reboot the snapshot lost pre-images")
			}
			if err := s.RemoveSnapshot(1); err != nil {
				t.Fatal(err)
			}
			if err := filemap.UnpinPath(cowPath); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestCOWNotMapped: stores that must not be written beneath their
// filesystem get the loop device over the file only, and say why.
func TestCOWNotMapped(t *testing.T) {
	requireKernel(t)
	dir := t.TempDir()
	base := rawBase(t, dir, 16<<20)
	s := build(t, "vmslow", base.Path)
	small := filepath.Join(dir, "small")
	if err := os.Mkdir(small, 0o755); err != nil {
		t.Fatal(err)
	}
	// ext4 with 1 KiB blocks (what mkfs gives a small filesystem).
	img := vmtest.TempFile(t, dir, "small.img", 64<<20)
	loop := strings.TrimSpace(vmtest.Sh(t, "l=$(losetup -f) && losetup $l "+img+" && mkfs.ext4 -q -F -b 1024 $l && mount $l "+small+" && echo $l"))
	t.Cleanup(func() {
		unix.Unmount(small, unix.MNT_DETACH)
		dm.DetachLoop(loop)
	})
	for _, tc := range []struct{ dir, why string }{
		{dir, "not ext2/3/4 or xfs"},                 // tmpfs
		{small, "block size 1024 is not a multiple"}, // small blocks
	} {
		cowPath := prealloc(t, tc.dir, 8<<20, 4<<20)
		cow, err := s.AttachCOW(1, cowPath, tailOf(cowPath))
		if err != nil {
			t.Fatal(err)
		}
		if cow.FastBytes != 0 || !strings.Contains(cow.Slow, tc.why) {
			t.Errorf("%s: COW %+v, want none mapped because %q", tc.dir, cow, tc.why)
		}
		if err := s.RemoveCOW(1); err != nil {
			t.Fatal(err)
		}
		os.Remove(cowPath)
	}
}

// zeroFill writes zeros over [from, to) of the file at path, around the
// page cache, and makes them durable: what snapstore.FillCow does for
// GrowCOW, without a session directory.
func zeroFill(path string) dm.GrowFill {
	return func(from, to uint64) (uint64, error) {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return from, err
		}
		defer f.Close()
		if err := unix.Fallocate(int(f.Fd()), 0, int64(from), int64(to-from)); err != nil {
			return from, err
		}
		w := directio.NewWriter(f)
		defer w.Close()
		zero := directio.AlignedBuf(1 << 20)
		for off := from; off < to; off += 1 << 20 {
			if _, err := w.WriteAt(zero, int64(off)); err != nil {
				return from, err
			}
		}
		return to, f.Sync()
	}
}

// TestCOWGrowWhileWriting: the fast part of a live COW grows, again and
// again, while first writes to the origin stream in, on ext4 and xfs
// stores. Every pre-image survives: the snapshot shows the image from
// before the writes, during and after, and again after a reboot. This is
// the evidence that filling past the frontier with the COW device
// suspended never writes where the kernel did.
func TestCOWGrowWhileWriting(t *testing.T) {
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) {
			requireKernel(t)
			dir := t.TempDir()
			store := vmtest.StoreFS(t, dir, fs, 1<<30)
			const size = 96 << 20
			base := rawBase(t, dir, size)
			writeAt(t, base.Path, 1<<20, randomBytes(11, size-(1<<20)))
			pre := readAt(t, base.Path, 0, size)

			s := build(t, "vmgrow", base.Path)
			cowPath := prealloc(t, store, 100<<20, 4<<20)
			cow, err := s.AttachCOW(1, cowPath, tailOf(cowPath))
			if err != nil {
				t.Fatal(err)
			}
			if cow.FastEnd() != 4<<20 {
				t.Fatalf("COW %+v: want its first 4 MiB fast", cow)
			}
			if err := s.AddSnapshot(1, cow.Path(), chunk); err != nil {
				t.Fatal(err)
			}

			// 12 MiB of first writes past the fast part, to the tail file;
			// then the fill starts past the store's frontier (the kernel may
			// have written anything before it). What the kernel wrote to the
			// tail stays there: only the region filled is mapped.
			writeAt(t, s.OriginPath(), 84<<20, randomBytes(13, 12<<20))
			allocated := status(t, s, 1).Allocated * dm.SectorSize
			fill := zeroFill(cowPath)
			cow, from, to, err := s.GrowCOW(1, cowPath, 8<<20, fill)
			if err != nil {
				t.Fatal(err)
			}
			if from < allocated || from < 12<<20 || to != from+8<<20 || cow.FastEnd() != to || cow.FastBytes != 12<<20 {
				t.Fatalf("grew [%d, %d) with %d bytes allocated: COW %+v", from, to, allocated, cow)
			}
			t.Logf("past the frontier at %d: grew [%d, %d), %d MiB fast in %d segments", allocated, from, to, cow.FastBytes>>20, cow.Segments)

			// 80 MiB of first writes in 1 MiB O_DIRECT pieces, in a shuffled
			// order, while this goroutine grows the COW.
			done := make(chan error, 1)
			go func() {
				f, err := os.OpenFile(s.OriginPath(), os.O_WRONLY|unix.O_DIRECT, 0)
				if err != nil {
					done <- err
					return
				}
				defer f.Close()
				buf := directio.AlignedBuf(1 << 20)
				data := randomBytes(12, 1<<20)
				for i, p := range rand.New(rand.NewPCG(1, 2)).Perm(80) {
					copy(buf, data)
					buf[0] = byte(i)
					if _, err := f.WriteAt(buf, int64(p)<<20); err != nil {
						done <- err
						return
					}
				}
				done <- f.Sync()
			}()
			var grows, midway int
			var longest time.Duration
			for writing := true; writing; {
				select {
				case err := <-done:
					if err != nil {
						t.Fatalf("writing the origin: %v", err)
					}
					writing = false
				case <-time.After(20 * time.Millisecond):
				}
				start := time.Now()
				c, from, to, err := s.GrowCOW(1, cowPath, 8<<20, fill)
				if err != nil {
					t.Fatalf("grow %d: %v", grows+1, err)
				}
				if to > from {
					grows++
					longest = max(longest, time.Since(start))
					if writing {
						midway++
					}
					cow = c
					t.Logf("grew [%d, %d) MiB in %v: %d MiB fast, %d segments", from>>20, to>>20, time.Since(start).Round(time.Millisecond), c.FastBytes>>20, c.Segments)
				}
				if grows > 0 && !writing {
					break
				}
			}
			if midway < 2 {
				t.Fatalf("%d grows while the writes went on (%d in all): the test did not race them", midway, grows)
			}
			t.Logf("%d grows, %d during the writes, longest pause %v", grows, midway, longest)
			st := status(t, s, 1)
			if st.DataSectors() < 92<<20/512 || !st.Valid() {
				t.Fatalf("status %s: want 92 MiB of pre-images", st)
			}
			// Each grow maps what it filled; what the kernel wrote past the
			// mapped part before a grow caught up stays in the tail.
			if cow.FastBytes < 12<<20+uint64(grows-1)*8<<20 {
				t.Fatalf("COW %+v after %d grows: not all they filled is mapped straight", cow, grows)
			}
			f, err := os.Open(cowPath)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if pinned, err := filemap.Pinned(f); err != nil || !pinned {
				t.Fatalf("cow.img pinned: %v, %v", pinned, err)
			}
			if got := readAt(t, s.SnapshotPath(1), 0, size); !bytes.Equal(got, pre) {
				t.Fatal("the snapshot lost pre-images while its COW grew")
			}
			// A reboot: every pre-image is in the file at its offset.
			if err := s.RemoveSnapshot(1); err != nil {
				t.Fatal(err)
			}
			if err := filemap.DropCache(f); err != nil {
				t.Fatal(err)
			}
			reattach(t, s, 1, cowPath)
			if got := readAt(t, s.SnapshotPath(1), 0, size); !bytes.Equal(got, pre) {
				t.Fatal("after the reboot the snapshot lost pre-images")
			}
			if err := s.RemoveSnapshot(1); err != nil {
				t.Fatal(err)
			}
			if err := filemap.UnpinPath(cowPath); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// ext4MoveExt is EXT4_IOC_MOVE_EXT, _IOWR('f', 15, struct move_extent):
// {u32 reserved, u32 donor_fd, u64 orig_start, u64 donor_start, u64 len,
// u64 moved_len} (fs/ext4/ext4.h).
const ext4MoveExt = 0xc028660f

// TestCOWPinnedAgainstDedupeAndMoves: what a dedupe pass over the store
// (xfs_io dedupe, duperemove) or a defragmenter (ext4's MOVE_EXT) does to a
// live, mapped cow.img. Append-only, as cow.img was pinned before, let
// both move its blocks under the kernel (docs/kernel.md: xfs dedupes through
// a read-only descriptor; MOVE_EXT takes O_RDWR|O_APPEND). Immutable, every
// attempt is refused, the file's extents do not change, and the snapshot
// still shows the image from before the writes, byte for byte.
func TestCOWPinnedAgainstDedupeAndMoves(t *testing.T) {
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) {
			requireKernel(t)
			dir := t.TempDir()
			store := vmtest.StoreFS(t, dir, fs, 1<<30)
			base := rawBase(t, dir, 64<<20)
			writeAt(t, base.Path, 1<<20, randomBytes(17, 31<<20))
			pre := readAt(t, base.Path, 0, 64<<20)
			s := build(t, "vmpin", base.Path)
			cowPath := prealloc(t, store, 40<<20, 16<<20)
			cow, err := s.AttachCOW(1, cowPath, tailOf(cowPath))
			if err != nil {
				t.Fatal(err)
			}
			if cow.FastBytes != 16<<20 {
				t.Fatalf("COW %+v: want 16 MiB mapped", cow)
			}
			if err := s.AddSnapshot(1, cow.Path(), chunk); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				s.RemoveSnapshot(1)
				filemap.UnpinPath(cowPath)
			})
			writeAt(t, s.OriginPath(), 0, randomBytes(18, 4<<20)) // 4 MiB of pre-images, mapped
			cf, err := os.Open(cowPath)
			if err != nil {
				t.Fatal(err)
			}
			defer cf.Close()
			before, err := filemap.Extents(cf)
			if err != nil {
				t.Fatal(err)
			}

			// A file of zeros as long as the prealloc'd zeros of cow.img
			// not used yet: what a dedupe pass would share them with.
			zero := filepath.Join(store, "zeros")
			vmtest.Sh(t, "dd if=/dev/zero of="+zero+" bs=1M count=16 conv=fsync 2>/dev/null")
			for _, mode := range []string{"-r", ""} {
				out, err := exec.Command("xfs_io", append(strings.Fields(mode), "-c", "dedupe "+zero+" 0 8m 8m", cowPath)...).CombinedOutput()
				if err == nil && !strings.Contains(string(out), "Operation not permitted") && !strings.Contains(string(out), "not supported") {
					t.Fatalf("xfs_io %s dedupe into the mapped cow.img: %v\n%s", mode, err, out)
				}
				t.Logf("xfs_io %s dedupe: %v %s", mode, err, strings.TrimSpace(string(out)))
			}
			if fs == "ext4" {
				if _, err := os.OpenFile(cowPath, os.O_RDWR|os.O_APPEND, 0); !errors.Is(err, unix.EPERM) {
					t.Fatalf("open O_RDWR|O_APPEND of the mapped cow.img: %v, want EPERM", err)
				}
				donor, err := os.OpenFile(zero, os.O_RDWR, 0)
				if err != nil {
					t.Fatal(err)
				}
				var me [40]byte
				binary.LittleEndian.PutUint32(me[4:], uint32(donor.Fd()))
				binary.LittleEndian.PutUint64(me[8:], 2048)  // orig_start (blocks): 8 MiB
				binary.LittleEndian.PutUint64(me[24:], 2048) // len
				_, _, errno := unix.Syscall(unix.SYS_IOCTL, cf.Fd(), ext4MoveExt, uintptr(unsafe.Pointer(&me[0])))
				donor.Close()
				if errno == 0 {
					t.Fatal("EXT4_IOC_MOVE_EXT on the mapped cow.img succeeded")
				}
				t.Logf("EXT4_IOC_MOVE_EXT: %v", errno)
			}
			after, err := filemap.Extents(cf)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(before, after) {
				t.Fatalf("cow.img's extents changed under the kernel:\nbefore %+v\nafter  %+v", before, after)
			}
			// More first writes, into the rest of the mapped part and past
			// it (the tail): the snapshot still shows the old image.
			writeAt(t, s.OriginPath(), 8<<20, randomBytes(19, 20<<20))
			if got := readAt(t, s.SnapshotPath(1), 0, 64<<20); !bytes.Equal(got, pre) {
				t.Fatal("the snapshot lost pre-images")
			}
			// And after a reboot's attach, which folds the tail into cow.img.
			if err := s.RemoveSnapshot(1); err != nil {
				t.Fatal(err)
			}
			reattach(t, s, 1, cowPath)
			if got := readAt(t, s.SnapshotPath(1), 0, 64<<20); !bytes.Equal(got, pre) {
				t.Fatal("after the reattach the snapshot lost pre-images")
			}
		})
	}
}
