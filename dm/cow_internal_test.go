//go:build !vm

package dm

import (
	"reflect"
	"testing"

	"github.com/dmsnap/dmsnap/internal/filemap"
)

const mib = 1 << 20

func TestFastExtents(t *testing.T) {
	size := uint64(64 * mib)
	exts := []filemap.Extent{
		{Logical: 0, Physical: 100 * mib, Length: 8 * mib},                                      // plain
		{Logical: 8 * mib, Physical: 108 * mib, Length: 8 * mib, Flags: filemap.FlagMerged},     // contiguous: merged with the first
		{Logical: 16 * mib, Physical: 300 * mib, Length: 4 * mib, Flags: filemap.FlagUnwritten}, // unwritten: slow
		{Logical: 20 * mib, Physical: 400*mib + 512, Length: 4 * mib},                           // misaligned on the device only: slow
		{Logical: 24*mib + 1024, Physical: 500*mib + 1024, Length: 1 * mib},                     // cut to its aligned inside
		{Logical: 30 * mib, Physical: 600 * mib, Length: 2 * mib, Flags: filemap.FlagShared},    // shared: slow
		{Logical: 60 * mib, Physical: 700 * mib, Length: 4 * mib, Flags: filemap.FlagLast},      // its last 4 KiB stays slow
	}
	got := fastExtents(size, exts, cowAlign)
	want := []filemap.Extent{
		{Logical: 0, Physical: 100 * mib, Length: 16 * mib},
		{Logical: 24*mib + 4096, Physical: 500*mib + 4096, Length: 1*mib - 4096},
		{Logical: 60 * mib, Physical: 700 * mib, Length: 4*mib - 4096},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("fastExtents:\n got %+v\nwant %+v", got, want)
	}
	if base, n := span(got); base != 100*mib || n != 700*mib+4*mib-4096-100*mib {
		t.Errorf("span = %d, %d", base, n)
	}
	if got := fastExtents(4096, []filemap.Extent{{Length: 4096}}, cowAlign); len(got) != 0 {
		t.Errorf("a one-block file maps %+v: its only block must stay slow", got)
	}
	// Extents in another order on the device (ext4 often puts a file's
	// second 128 MiB before its first): all mapped, the window spans them.
	got = fastExtents(size, []filemap.Extent{{Logical: 0, Physical: 10 * mib, Length: 4 * mib}, {Logical: 4 * mib, Physical: 2 * mib, Length: 4 * mib}}, cowAlign)
	if want := []filemap.Extent{{Logical: 0, Physical: 10 * mib, Length: 4 * mib}, {Logical: 4 * mib, Physical: 2 * mib, Length: 4 * mib}}; !reflect.DeepEqual(got, want) {
		t.Errorf("extents out of device order: %+v, want %+v", got, want)
	}
	if base, n := span(got); base != 2*mib || n != 12*mib {
		t.Errorf("span of extents out of device order = %d, %d", base, n)
	}
}

func TestFastExtentsBounded(t *testing.T) {
	var exts []filemap.Extent
	for i := range uint64(maxFastExtents + 10) {
		// Not contiguous on the device, so none merge.
		exts = append(exts, filemap.Extent{Logical: i * 8192, Physical: i * 16384, Length: 8192})
	}
	got := fastExtents(uint64(len(exts)+1)*8192, exts, cowAlign)
	if len(got) != maxFastExtents || got[0].Logical != 0 || got[len(got)-1].Logical != (maxFastExtents-1)*8192 {
		t.Fatalf("%d fast extents, first %+v, last %+v; want the first %d", len(got), got[0], got[len(got)-1], maxFastExtents)
	}
}

func TestPlanCOW(t *testing.T) {
	fast, tail := Dev{Major: 7, Minor: 9}, Dev{Major: 7, Minor: 8}
	size := uint64(64 * mib)
	exts := []filemap.Extent{
		{Logical: 0, Physical: 100 * mib, Length: 16 * mib},
		{Logical: 24 * mib, Physical: 500 * mib, Length: 1 * mib},
	}
	got, fastBytes := planCOW(size, loopSegs(exts, fast, 100*mib), tail)
	s := func(b uint64) uint64 { return b / SectorSize }
	want := []Linear{
		{Start: 0, Length: s(16 * mib), Device: fast, Offset: 0},
		{Start: s(16 * mib), Length: s(8 * mib), Device: tail, Offset: s(16 * mib)},
		{Start: s(24 * mib), Length: s(1 * mib), Device: fast, Offset: s(400 * mib)},
		{Start: s(25 * mib), Length: s(39 * mib), Device: tail, Offset: s(25 * mib)},
	}
	if !reflect.DeepEqual(got, want) || fastBytes != 17*mib {
		t.Fatalf("planCOW:\n got %+v (%d fast bytes)\nwant %+v", got, fastBytes, want)
	}
	if size, f := tableBytes(got); size != 64*mib || f != 17*mib {
		t.Errorf("tableBytes = %d, %d; want %d, %d", size, f, 64*mib, 17*mib)
	}
	if _, err := Specs(asTargets(got)...); err != nil {
		t.Errorf("the table does not load: %v", err)
	}
	// Nothing fast: one slow segment, the whole file at its own offsets.
	got, fastBytes = planCOW(size, nil, tail)
	if want := []Linear{{Start: 0, Length: s(size), Device: tail, Offset: 0}}; !reflect.DeepEqual(got, want) || fastBytes != 0 {
		t.Fatalf("planCOW without fast extents: %+v", got)
	}
}

func asTargets(ls []Linear) []Target {
	out := make([]Target, len(ls))
	for i, l := range ls {
		out[i] = l
	}
	return out
}

// FuzzPlanCOW: whatever FIEMAP says, the table covers the file exactly, in
// order, aligned, maps every byte either at its own offset on the file's
// loop device or onto a plain extent's bytes, and ends on the file's loop
// device.
func FuzzPlanCOW(f *testing.F) {
	f.Add(uint64(64*mib), uint64(0), uint64(100*mib), uint64(16*mib), uint32(0), uint64(24*mib), uint64(500*mib), uint64(mib), uint32(1))
	f.Add(uint64(8192), uint64(0), uint64(0), uint64(8192), uint32(0), uint64(0), uint64(0), uint64(0), uint32(0))
	f.Fuzz(func(t *testing.T, size, l1, p1, n1 uint64, f1 uint32, l2, p2, n2 uint64, f2 uint32) {
		size = size % (1 << 40)
		var exts []filemap.Extent
		for _, e := range []filemap.Extent{{Logical: l1 % (1 << 41), Physical: p1 % (1 << 50), Length: n1 % (1 << 40), Flags: f1}, {Logical: l2 % (1 << 41), Physical: p2 % (1 << 50), Length: n2 % (1 << 40), Flags: f2}} {
			if e.Length == 0 || (len(exts) > 0 && e.Logical < exts[len(exts)-1].End()) {
				continue // FIEMAP never gives these (parseFiemap refuses them)
			}
			exts = append(exts, e)
		}
		size = size / cowAlign * cowAlign
		if size == 0 {
			return
		}
		fast := fastExtents(size, exts, cowAlign)
		base, _ := span(fast)
		fd, tail := Dev{Major: 7, Minor: 1}, Dev{Major: 7, Minor: 2}
		tbl, fastBytes := planCOW(size, loopSegs(fast, fd, base), tail)
		var at, sumFast uint64
		for i, l := range tbl {
			if l.Start != at || l.Length == 0 || (l.Start*SectorSize)%cowAlign != 0 || (l.Length*SectorSize)%cowAlign != 0 || (l.Offset*SectorSize)%cowAlign != 0 {
				t.Fatalf("segment %d %+v: not contiguous from %d, empty or unaligned", i, l, at)
			}
			switch l.Device {
			case tail:
				if l.Offset != l.Start {
					t.Fatalf("slow segment %d maps file sector %d to %d", i, l.Start, l.Offset)
				}
			case fd:
				sumFast += l.Length * SectorSize
				lo, hi := l.Start*SectorSize, (l.Start+l.Length)*SectorSize
				ok := false
				for _, e := range exts {
					if e.Plain() && e.Logical <= lo && hi <= e.End() && e.Physical+(lo-e.Logical) == l.Offset*SectorSize+base {
						ok = true
					}
				}
				if !ok {
					t.Fatalf("fast segment %d %+v maps bytes no plain extent holds there: %+v", i, l, exts)
				}
			default:
				t.Fatalf("segment %d on %s", i, l.Device)
			}
			at += l.Length
		}
		if at*SectorSize != size || tbl[len(tbl)-1].Device != tail || sumFast != fastBytes {
			t.Fatalf("table ends at %d of %d bytes, last on %s, fast %d vs %d", at*SectorSize, size, tbl[len(tbl)-1].Device, sumFast, fastBytes)
		}
	})
}
