//go:build !vm

package dm_test

import (
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/filemap"
)

// pvA and pvB are the devices below a store's linear device-mapper device
// (an LVM volume group's physical volumes): the fake's third and fourth
// block devices, after the stack's and the store's.
var pvA, pvB = dm.Dev{Major: 8, Minor: 32}, dm.Dev{Major: 8, Minor: 48}

// withPVs adds pvA and pvB to the fake.
func withPVs(t *testing.T, g grown) {
	t.Helper()
	if a, b := g.f.AddBlockDevice("/dev/pva", 8<<21), g.f.AddBlockDevice("/dev/pvb", 8<<21); a != pvA || b != pvB {
		t.Fatalf("physical volumes %s and %s, want %s and %s", a, b, pvA, pvB)
	}
}

// lvTable is a store LV of two segments: its first 1 GiB + 8 MiB at 1 MiB
// into pvA, the next 1 GiB at 2 MiB into pvB.
func lvTable(a dm.Dev, aOff uint64) []dm.Linear {
	first := uint64(1<<30+8<<20) / dm.SectorSize
	return []dm.Linear{
		{Start: 0, Length: first, Device: a, Offset: aOff},
		{Start: first, Length: 1 << 30 / dm.SectorSize, Device: pvB, Offset: 4096},
	}
}

// mapBelow makes the fake's MapFile put exts on the store LV of table tbl.
func mapBelow(g grown, tbl func() []dm.Linear) {
	g.f.SetFileMap(func(string) (dm.FileMap, error) {
		return dm.FileMap{Device: storeDev, Dev: dm.Dev{Major: 254, Minor: 3}, Extents: append([]filemap.Extent(nil), *g.exts...),
			Below: &dm.Below{Name: "vg-store", Table: tbl()}}, nil
	})
}

// A store on linear device-mapper: the COW's fast segments name the
// devices below it, split where its targets meet, with no loop device over
// the store; the route says so.
func TestAttachCOWBelow(t *testing.T) {
	f, s := builtWithStore(t)
	path := cowFile(t, 64<<20)
	g := grown{f: f, s: s, path: path, exts: &[]filemap.Extent{{Logical: 0, Physical: 1 << 30, Length: 16 << 20}}}
	withPVs(t, g)
	mapBelow(g, func() []dm.Linear { return lvTable(pvA, 2048) })
	f.ResetLog()
	cow, err := s.AttachCOW(3, path, tailOf(path))
	if err != nil {
		t.Fatal(err)
	}
	if cow.FastBytes != 16<<20 || cow.Segments != 3 || cow.Route != dm.PathBelow || cow.Slow != "" {
		t.Fatalf("COW %+v", cow)
	}
	wantLog(t, f, "map "+path, "attach /dev/loop0 "+tailOf(path),
		"create dmsnap-sdb1-cow3", "load dmsnap-sdb1-cow3 linear", "resume dmsnap-sdb1-cow3")
	// 8 MiB at 1 GiB + 1 MiB of pvA (8:32), 8 MiB at 2 MiB of pvB, the rest on
	// the tail's loop device at its own offsets.
	if got := strings.Join(tableOf(t, f, cow.Name), "|"); got !=
		"0 16384 linear 8:32 2099200|16384 16384 linear 8:48 4096|32768 98304 linear 7:0 32768" {
		t.Fatalf("table %q", got)
	}
	if back, err := s.COWInfo(3); err != nil || back.Route != dm.PathBelow || back.FastBytes != 16<<20 {
		t.Fatalf("COWInfo %+v, %v", back, err)
	}
	if !f.Pinned(path) || f.LoopCount() != 1 {
		t.Fatalf("pinned %v, %d loop devices", f.Pinned(path), f.LoopCount())
	}
	if err := s.RemoveCOW(3); err != nil {
		t.Fatal(err)
	}

	// A store whose targets do not sit on 4 KiB boundaries below it goes
	// through the loop device over the store's device, as any other.
	mapBelow(g, func() []dm.Linear { return lvTable(pvA, 2049) })
	cow, err = s.AttachCOW(3, path, tailOf(path))
	if err != nil {
		t.Fatal(err)
	}
	if cow.Route != dm.PathLoop || cow.FastBytes != 16<<20 {
		t.Fatalf("COW on an unaligned store %+v", cow)
	}
}

// A grow on a store below which nothing moved maps the new region below
// too; once the store's table has moved (a pvmove), the grow must carry
// what the COW wrote at the old places first, and when it cannot, it
// keeps the table that is there and says why.
func TestGrowCOWBelow(t *testing.T) {
	f, s := builtWithStore(t)
	path := cowFile(t, 64<<20)
	g := grown{f: f, s: s, path: path, exts: &[]filemap.Extent{{Logical: 0, Physical: 1 << 30, Length: 16 << 20}}}
	withPVs(t, g)
	pv := pvA
	mapBelow(g, func() []dm.Linear { return lvTable(pv, 2048) })
	cow, err := s.AttachCOW(3, path, tailOf(path))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ReattachSnapshot(3, cow.Path(), 8); err != nil {
		t.Fatal(err)
	}
	var calls [][2]uint64
	after, from, to, err := s.GrowCOW(3, path, 8<<20, g.fillAt(1<<30+16<<20, &calls))
	if err != nil {
		t.Fatal(err)
	}
	if from != 16<<20 || to != 24<<20 || after.FastBytes != 24<<20 || after.Route != dm.PathBelow {
		t.Fatalf("grown [%d, %d): %+v", from, to, after)
	}
	if got := strings.Join(tableOf(t, f, cow.Name), "|"); got !=
		"0 16384 linear 8:32 2099200|16384 32768 linear 8:48 4096|49152 81920 linear 7:0 49152" {
		t.Fatalf("table after the grow %q", got)
	}
	before := tableOf(t, f, cow.Name)

	// pvmove: the LV's first segment now lies on another device. The copy
	// reads and writes devices by number, which the host has none of.
	pv = dm.Dev{Major: 8, Minor: 200}
	_, _, _, err = s.GrowCOW(3, path, 8<<20, g.fillAt(1<<30+24<<20, &calls))
	if err == nil || !strings.Contains(err.Error(), "remapped") {
		t.Fatalf("grow after the store moved: %v, want the copy's failure", err)
	}
	if got := tableOf(t, f, cow.Name); strings.Join(got, "|") != strings.Join(before, "|") || f.Suspended(cow.Name) || !f.Pinned(path) {
		t.Fatalf("after the failed grow: table %q, suspended %v, pinned %v", got, f.Suspended(cow.Name), f.Pinned(path))
	}
}
