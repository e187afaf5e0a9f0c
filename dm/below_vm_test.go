//go:build vm

package dm_test

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/directio"
	"github.com/dmsnap/dmsnap/internal/filemap"
	"github.com/dmsnap/dmsnap/internal/vmtest"
	"golang.org/x/sys/unix"
)

// devOf is the device number of the block device node at path.
func devOf(t *testing.T, path string) dm.Dev {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return dm.Dev{Major: unix.Major(st.Rdev), Minor: unix.Minor(st.Rdev)}
}

// linears reads a device's table as linear targets.
func linears(t *testing.T, name string) []dm.Linear {
	t.Helper()
	tbl, err := dm.Table(name)
	if err != nil {
		t.Fatal(err)
	}
	var out []dm.Linear
	for _, spec := range tbl {
		x, err := dm.ParseTarget(spec)
		l, ok := x.(dm.Linear)
		if err != nil || !ok {
			t.Fatalf("%s: target %s is not linear", name, spec)
		}
		out = append(out, l)
	}
	return out
}

// TestCOWBelowLVMStore: with the store on an LVM logical volume of five
// linear segments, a COW's mapped part names the physical volume at the
// places the volume's table gives, with no loop device over the store;
// FileUsers sees it; a grow maps more the same way; and after a pvmove
// done by hand under the live COW (the volume's segment that holds the
// COW's start copied elsewhere and its table switched there, while the
// COW device goes on writing at the old place) the next grow carries
// what was written there to the new place, so the snapshot and a reboot's
// re-attach both show the image from before every write, byte for byte.
func TestCOWBelowLVMStore(t *testing.T) {
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) {
			requireKernel(t)
			dir := t.TempDir()
			// xfs wants 300 MiB at least.
			st := vmtest.NewLVMStore(t, dir, "vgbelow"+fs, fs, 448<<20, 64<<20, 5)
			pv := devOf(t, st.PV)
			base := rawBase(t, dir, 96<<20)
			writeAt(t, base.Path, 0, randomBytes(21, 96<<20))
			pre := readAt(t, base.Path, 0, 96<<20)

			s := build(t, "vmbelow", base.Path)
			cowPath := prealloc(t, st.Mount, 128<<20, 80<<20)
			cow, err := s.AttachCOW(1, cowPath, tailOf(cowPath))
			if err != nil {
				t.Fatal(err)
			}
			if cow.Route != dm.PathBelow || cow.FastBytes != 80<<20 || cow.Slow != "" {
				t.Fatalf("COW %+v: want 80 MiB mapped below the store's device", cow)
			}
			// 80 MiB of the volume cross at least one of its 64 MiB
			// segments' ends: two fast segments or more, all on the PV.
			lins := linears(t, cow.Name)
			tail := lins[len(lins)-1].Device
			fast := 0
			for _, l := range lins[:len(lins)-1] {
				if l.Device == tail {
					continue
				}
				if l.Device != pv {
					t.Fatalf("fast segment %+v names %s, not the physical volume %s", l, l.Device, pv)
				}
				fast++
			}
			if fast < 2 {
				t.Fatalf("COW table %+v: want its fast part split where the volume's segments meet", lins)
			}
			if err := s.AddSnapshot(1, cow.Path(), chunk); err != nil {
				t.Fatal(err)
			}
			users, err := dm.FileUsers(cowPath)
			if err != nil || len(users) == 0 || !strings.Contains(strings.Join(users, "\n"), "below the store's device") {
				t.Fatalf("FileUsers = %q, %v; want the COW device, below the store's", users, err)
			}

			// 16 MiB of first writes, then a grow: mapped below too.
			writeAt(t, s.OriginPath(), 0, randomBytes(22, 16<<20))
			grown, _, _, err := s.GrowCOW(1, cowPath, 16<<20, zeroFill(cowPath))
			if err != nil {
				t.Fatal(err)
			}
			if grown.Route != dm.PathBelow || grown.FastBytes < 96<<20 {
				t.Fatalf("grown COW %+v", grown)
			}

			// pvmove by hand: the volume's segment that holds the COW's
			// first byte is copied to free space at the end of the PV, and
			// the volume's table switched to it, with the volume suspended.
			first := linears(t, cow.Name)[0]
			lv := linears(t, st.LV)
			seg := -1
			for i, l := range lv {
				if l.Device == pv && first.Offset >= l.Offset && first.Offset < l.Offset+l.Length {
					seg = i
				}
			}
			if seg < 0 {
				t.Fatalf("no segment of %s holds PV sector %d", st.LV, first.Offset)
			}
			newOff := uint64(360<<20) / dm.SectorSize // past the volumes (337 MiB), before the PV's end (448 MiB)
			if err := dm.Suspend(st.LV); err != nil {
				t.Fatal(err)
			}
			copyPV(t, st.PV, lv[seg].Offset*dm.SectorSize, newOff*dm.SectorSize, lv[seg].Length*dm.SectorSize)
			lv[seg].Offset = newOff
			targets := make([]dm.Target, len(lv))
			for i, l := range lv {
				targets[i] = l
			}
			if err := dm.Load(st.LV, targets...); err != nil {
				t.Fatal(err)
			}
			if err := dm.Resume(st.LV); err != nil {
				t.Fatal(err)
			}
			// The COW device still writes at the old place: 16 MiB more
			// first writes, whose pre-images the volume no longer shows.
			writeAt(t, s.OriginPath(), 16<<20, randomBytes(23, 16<<20))
			moved, _, _, err := s.GrowCOW(1, cowPath, 16<<20, zeroFill(cowPath))
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range linears(t, cow.Name) {
				if l.Device == pv && l.Start == first.Start && l.Offset == first.Offset {
					t.Fatalf("after the grow the COW still names the old place %+v", l)
				}
			}
			if moved.Route != dm.PathBelow {
				t.Fatalf("COW after the move %+v", moved)
			}
			if got := readAt(t, s.SnapshotPath(1), 0, 96<<20); !bytes.Equal(got, pre) {
				t.Fatal("after the move the snapshot lost pre-images")
			}
			// A reboot reads cow.img through the volume: all of it there.
			if err := s.RemoveSnapshot(1); err != nil {
				t.Fatal(err)
			}
			reattach(t, s, 1, cowPath)
			if got := readAt(t, s.SnapshotPath(1), 0, 96<<20); !bytes.Equal(got, pre) {
				t.Fatal("after the re-attach the snapshot lost pre-images")
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

// copyPV copies n bytes of the physical volume at path from byte from to
// byte to, around the page cache.
func copyPV(t *testing.T, path string, from, to, n uint64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := directio.AlignedBuf(1 << 20)
	for off := uint64(0); off < n; off += 1 << 20 {
		if _, err := f.ReadAt(buf, int64(from+off)); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(buf, int64(to+off)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}
