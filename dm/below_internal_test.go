//go:build !vm

package dm

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/internal/filemap"
)

func TestBelowOf(t *testing.T) {
	lin := func(start, n uint64, dev, off string) TargetSpec {
		return TargetSpec{Start: start, Length: n, Type: "linear", Params: dev + " " + off}
	}
	b, why := belowOf("vg-lv", []TargetSpec{lin(0, 8, "8:16", "2048"), lin(8, 16, "8:32", "0")})
	if why != "" || b.Name != "vg-lv" || len(b.Table) != 2 || b.Table[1].Device != (Dev{Major: 8, Minor: 32}) {
		t.Fatalf("belowOf = %+v, %q", b, why)
	}
	for _, c := range []struct {
		tbl  []TargetSpec
		want string
	}{
		{nil, "no table"},
		{[]TargetSpec{lin(0, 8, "8:16", "0"), {Start: 8, Length: 8, Type: "crypt", Params: "x"}}, "crypt target"},
		{[]TargetSpec{lin(0, 8, "8:16", "0"), lin(16, 8, "8:16", "8")}, "gap"},
	} {
		if b, why := belowOf("vg-lv", c.tbl); b != nil || !strings.Contains(why, c.want) {
			t.Errorf("belowOf(%v) = %+v, %q; want nil and %q", c.tbl, b, why, c.want)
		}
	}
}

func TestPlaceBelow(t *testing.T) {
	a, c := Dev{Major: 8, Minor: 16}, Dev{Major: 8, Minor: 32}
	b := Below{Table: []Linear{
		{Start: 0, Length: 16 * mib / SectorSize, Device: a, Offset: 2048},
		{Start: 16 * mib / SectorSize, Length: 16 * mib / SectorSize, Device: c, Offset: 0},
		{Start: 32 * mib / SectorSize, Length: 16 * mib / SectorSize, Device: a, Offset: 2048 + 16*mib/SectorSize},
	}}
	// Across all three targets; the second extent follows the first in the
	// file and on a, so they merge.
	got, ok := b.placeBelow([]filemap.Extent{{Logical: 0, Physical: 8 * mib, Length: 32 * mib}, {Logical: 32 * mib, Physical: 40 * mib, Length: 4 * mib}})
	want := []fastSeg{
		{Logical: 0, Length: 8 * mib, Device: a, Offset: mib + 8*mib},
		{Logical: 8 * mib, Length: 16 * mib, Device: c, Offset: 0},
		{Logical: 24 * mib, Length: 12 * mib, Device: a, Offset: mib + 16*mib},
	}
	if !ok || !reflect.DeepEqual(got, want) {
		t.Fatalf("placeBelow:\n got %+v\nwant %+v", got, want)
	}
	if _, ok := b.placeBelow([]filemap.Extent{{Logical: 0, Physical: 40 * mib, Length: 16 * mib}}); ok {
		t.Error("an extent past the table was placed")
	}
	odd := Below{Table: []Linear{{Start: 0, Length: 16 * mib / SectorSize, Device: a, Offset: 1}}}
	if _, ok := odd.placeBelow([]filemap.Extent{{Logical: 0, Physical: 0, Length: mib}}); ok {
		t.Error("a place off 4 KiB was accepted")
	}
}

func TestMovedParts(t *testing.T) {
	a, c, loop, tail := Dev{Major: 8, Minor: 16}, Dev{Major: 8, Minor: 32}, Dev{Major: 7, Minor: 3}, Dev{Major: 7, Minor: 1}
	s := func(b uint64) uint64 { return b / SectorSize }
	isLoop := func(d Dev) bool { return d == loop }
	// The live table: file [0, 8 MiB) at 1 MiB of a, the rest on the tail.
	old := []Linear{{Start: 0, Length: s(8 * mib), Device: a, Offset: s(mib)}, {Start: s(8 * mib), Length: s(56 * mib), Device: tail, Offset: s(8 * mib)}}
	lv := func(d Dev, off uint64) *Below {
		return &Below{Name: "vg-lv", Table: []Linear{{Start: 0, Length: s(64 * mib), Device: d, Offset: s(off)}}}
	}
	// The store's device unmoved: the file's bytes at 0 of the LV, placed
	// below again the same, and 4 MiB more: nothing to carry.
	same := []fastSeg{{Logical: 0, Length: 12 * mib, Device: a, Offset: mib}}
	if m := movedParts(old, tail, isLoop, lv(a, mib), same, 0); len(m) != 0 {
		t.Fatalf("unmoved: %+v", m)
	}
	// Moved to c at 5 MiB: the 8 MiB the old table wrote are carried.
	moved := []fastSeg{{Logical: 0, Length: 12 * mib, Device: c, Offset: 5 * mib}}
	want := []move{{From: a, To: c, FromOff: mib, ToOff: 5 * mib, N: 8 * mib}}
	if m := movedParts(old, tail, isLoop, lv(c, 5*mib), moved, 0); !reflect.DeepEqual(m, want) {
		t.Fatalf("moved: %+v, want %+v", m, want)
	}
	// Through a loop device over the store (window at byte 0): unmoved
	// when the store's table still puts those bytes where they were...
	viaLoop := []fastSeg{{Logical: 0, Length: 12 * mib, Device: loop, Offset: 0}}
	if m := movedParts(old, tail, isLoop, lv(a, mib), viaLoop, 0); len(m) != 0 {
		t.Fatalf("unmoved via the loop: %+v", m)
	}
	// ... carried to the loop device when it does not, or when the store's
	// table is not linear now (a pvmove under way: a mirror).
	want = []move{{From: a, To: loop, FromOff: mib, ToOff: 0, N: 8 * mib}}
	for _, b := range []*Below{lv(c, 5*mib), nil} {
		if m := movedParts(old, tail, isLoop, b, viaLoop, 0); !reflect.DeepEqual(m, want) {
			t.Fatalf("moved via the loop (below %+v): %+v, want %+v", b, m, want)
		}
	}
	// An old table through a loop device wrote through the store's own
	// table: never carried.
	oldLoop := []Linear{{Start: 0, Length: s(8 * mib), Device: loop, Offset: 0}, old[1]}
	if m := movedParts(oldLoop, tail, isLoop, lv(c, 5*mib), moved, 0); len(m) != 0 {
		t.Fatalf("old loop table: %+v", m)
	}
	if p := tablePath(old, tail, isLoop); p != PathBelow {
		t.Errorf("tablePath = %q", p)
	}
	if p := tablePath(oldLoop, tail, isLoop); p != PathLoop {
		t.Errorf("tablePath = %q", p)
	}
	pvOnLoop := []Linear{{Start: 0, Length: s(8 * mib), Device: Dev{Major: 7, Minor: 9}, Offset: 0}, old[1]}
	if p := tablePath(pvOnLoop, tail, isLoop); p != PathBelow {
		t.Errorf("tablePath of a physical volume on a loop device over a file = %q", p)
	}
	if p := tablePath(old[1:], tail, isLoop); p != PathFile {
		t.Errorf("tablePath = %q", p)
	}
}

// A loop device is on the loop path only when it is bound to a block
// device: a physical volume may be a loop device over an image file.
func TestLoopOverDevice(t *testing.T) {
	sys, dir := t.TempDir(), t.TempDir()
	file := filepath.Join(dir, "pv.img")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	node := filepath.Join(dir, "store")
	if err := unix.Mknod(node, unix.S_IFBLK|0o600, int(unix.Mkdev(254, 3))); err != nil {
		t.Fatalf("make a block node (the tests run as root): %v", err)
	}
	writeSysFile(t, sys, "dev/block/7:2/loop/backing_file", node+"\n")
	writeSysFile(t, sys, "dev/block/7:3/loop/backing_file", file+"\n")
	writeSysFile(t, sys, "dev/block/8:2/loop/backing_file", node+"\n")
	for d, want := range map[Dev]bool{{Major: 7, Minor: 2}: true, {Major: 7, Minor: 3}: false, {Major: 8, Minor: 2}: false, {Major: 7, Minor: 9}: false} {
		if got := loopOverDevice(sys, d); got != want {
			t.Errorf("loopOverDevice(%s) = %v, want %v", d, got, want)
		}
	}
}
