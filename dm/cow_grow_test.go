//go:build !vm

package dm_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/dm/dmtest"
	"github.com/dmsnap/dmsnap/internal/filemap"
	"golang.org/x/sys/unix"
)

// grown is a stack with session 3 armed over a 64 MiB cow.img whose first
// 16 MiB are mapped at byte 1 GiB of the store device; exts is what the
// fake's MapFile answers from then on (the test appends to it as its fill
// "writes").
type grown struct {
	f    *dmtest.Fake
	s    dm.Stack
	path string
	exts *[]filemap.Extent
}

func armedWithCOW(t *testing.T) grown {
	t.Helper()
	f, s := builtWithStore(t)
	path := cowFile(t, 64<<20)
	exts := &[]filemap.Extent{{Logical: 0, Physical: 1 << 30, Length: 16 << 20}}
	f.SetFileMap(func(string) (dm.FileMap, error) {
		return dm.FileMap{Device: storeDev, Dev: dm.Dev{Major: 8, Minor: 32}, Extents: append([]filemap.Extent(nil), *exts...)}, nil
	})
	cow, err := s.AttachCOW(3, path, tailOf(path))
	if err != nil {
		t.Fatal(err)
	}
	if cow.FastEnd() != 16<<20 {
		t.Fatalf("fast end %d", cow.FastEnd())
	}
	if err := s.ReattachSnapshot(3, cow.Path(), 8); err != nil {
		t.Fatal(err)
	}
	return grown{f, s, path, exts}
}

// fillAt returns a fill that records its calls and makes the region it is
// asked for an extent at phys.
func (g grown) fillAt(phys uint64, calls *[][2]uint64) dm.GrowFill {
	return func(from, to uint64) (uint64, error) {
		*calls = append(*calls, [2]uint64{from, to})
		if g.f.Pinned(g.path) {
			return from, errors.New("fill called on a pinned file")
		}
		*g.exts = append(*g.exts, filemap.Extent{Logical: from, Physical: phys, Length: to - from})
		return to, nil
	}
}

func tableOf(t *testing.T, f *dmtest.Fake, name string) []string {
	t.Helper()
	tbl, err := f.Table(name)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, x := range tbl {
		out = append(out, x.String())
	}
	return out
}

// The region after the fast segments is filled with the COW device
// suspended, and mapped by a new table on a new loop device whose window
// spans old and new extents; the old fast loop goes with the old table.
func TestGrowCOW(t *testing.T) {
	g := armedWithCOW(t)
	// The store has allocated 2 chunks (header, first area): behind the fast end.
	var calls [][2]uint64
	g.f.ResetLog()
	cow, from, to, err := g.s.GrowCOW(3, g.path, 8<<20, g.fillAt(2<<30, &calls))
	if err != nil {
		t.Fatal(err)
	}
	if from != 16<<20 || to != 24<<20 || len(calls) != 1 || calls[0] != [2]uint64{16 << 20, 24 << 20} {
		t.Fatalf("filled [%d, %d), calls %v", from, to, calls)
	}
	if cow.FastBytes != 24<<20 || cow.FastEnd() != 24<<20 || cow.Segments != 3 || cow.Bytes != 64<<20 {
		t.Fatalf("COW %+v", cow)
	}
	wantLog(t, g.f, "suspend dmsnap-sdb1-cow3", "unpin "+g.path, "pin "+g.path, "map "+g.path, "attach /dev/loop2 "+storeDev,
		"load dmsnap-sdb1-cow3 linear", "resume dmsnap-sdb1-cow3")
	// Window from 1 GiB to 2 GiB + 8 MiB; the tail still on loop1 (over
	// cow.tail) at its own offsets.
	if got := tableOf(t, g.f, cow.Name); strings.Join(got, "|") !=
		"0 32768 linear 7:2 0|32768 16384 linear 7:2 2097152|49152 81920 linear 7:1 49152" {
		t.Fatalf("table %q", got)
	}
	if !g.f.Pinned(g.path) || g.f.Suspended(cow.Name) || g.f.LoopCount() != 2 {
		t.Fatalf("pinned %v, suspended %v, %d loops", g.f.Pinned(g.path), g.f.Suspended(cow.Name), g.f.LoopCount())
	}
	if back, err := g.s.COWInfo(3); err != nil || back.FastBytes != cow.FastBytes || back.FastEnd() != cow.FastEnd() {
		t.Fatalf("COWInfo %+v, %v", back, err)
	}
}

// The store's frontier past the fast end: the fill starts there (on a MiB),
// since the kernel may have written anything before it. What it wrote past
// the fast end went to the tail file and stays mapped there: a run of
// cow.img that reads as written there (here an extent appears) may be
// stale, and is not mapped.
func TestGrowCOWFromTheFrontier(t *testing.T) {
	g := armedWithCOW(t)
	g.f.SetSnapshotUsage(g.s.SnapshotName(3), (20<<20+4096)/dm.SectorSize)
	*g.exts = append(*g.exts, filemap.Extent{Logical: 16 << 20, Physical: 3 << 30, Length: 4<<20 + 4096})
	var calls [][2]uint64
	cow, from, to, err := g.s.GrowCOW(3, g.path, 8<<20, g.fillAt(2<<30, &calls))
	if err != nil {
		t.Fatal(err)
	}
	if from != 21<<20 || to != 29<<20 {
		t.Fatalf("filled [%d, %d)", from, to)
	}
	if cow.FastBytes != (16+8)<<20 || cow.FastEnd() != 29<<20 {
		t.Fatalf("COW %+v", cow)
	}
	tbl := strings.Join(tableOf(t, g.f, cow.Name), "|")
	if !strings.Contains(tbl, "32768 10240 linear 7:1 32768") {
		t.Fatalf("table %q: want [16 MiB, 21 MiB) still on the tail (loop1)", tbl)
	}
}

// Near the file's end the region shrinks, and at it nothing is done; the
// file's last 4 KiB stay slow.
func TestGrowCOWAtTheEnd(t *testing.T) {
	g := armedWithCOW(t)
	var calls [][2]uint64
	cow, from, to, err := g.s.GrowCOW(3, g.path, 1<<30, g.fillAt(2<<30, &calls))
	if err != nil {
		t.Fatal(err)
	}
	if from != 16<<20 || to != 63<<20 || cow.FastEnd() != 63<<20 {
		t.Fatalf("filled [%d, %d), COW %+v", from, to, cow)
	}
	g.f.ResetLog()
	cow, from, to, err = g.s.GrowCOW(3, g.path, 1<<30, g.fillAt(2<<30, &calls))
	if err != nil || to > from || len(calls) != 1 || cow.FastEnd() != 63<<20 {
		t.Fatalf("second grow: [%d, %d), %v, calls %v, COW %+v", from, to, err, calls, cow)
	}
	wantLog(t, g.f, "suspend dmsnap-sdb1-cow3", "resume dmsnap-sdb1-cow3")
}

// Every failure leaves the COW device resumed with its old table and the
// file pinned.
func TestGrowCOWFailures(t *testing.T) {
	const oldTable = "0 32768 linear 7:0 0|32768 98304 linear 7:1 32768"
	cases := []struct {
		name string
		prep func(g grown)
		fill func(g grown) dm.GrowFill
		want string
	}{
		{"fill fails", nil, func(grown) dm.GrowFill {
			return func(from, _ uint64) (uint64, error) { return from, unix.ENOSPC }
		}, "no space"},
		{"fill writes nothing", nil, func(grown) dm.GrowFill {
			return func(from, _ uint64) (uint64, error) { return from, nil }
		}, ""},
		{"map fails", func(g grown) { g.f.FailNext("map", g.path, unix.EIO) }, nil, "input/output"},
		{"pin fails", func(g grown) { g.f.FailNext("pin", g.path, unix.EPERM) }, nil, "could not be pinned again"},
		{"loop fails", func(g grown) { g.f.FailNext("attach", storeDev, unix.EBUSY) }, nil, "busy"},
		{"load fails", func(g grown) { g.f.FailNext("load", "dmsnap-sdb1-cow3", unix.EINVAL) }, nil, "invalid"},
		{"resume fails", func(g grown) { g.f.FailNext("resume", "dmsnap-sdb1-cow3", unix.EIO) }, nil, "input/output"},
		{"blocks moved", nil, func(g grown) dm.GrowFill {
			return func(from, to uint64) (uint64, error) {
				(*g.exts)[0].Physical = 5 << 30
				(*g.exts)[0].Flags = filemap.FlagShared
				*g.exts = append(*g.exts, filemap.Extent{Logical: from, Physical: 2 << 30, Length: to - from})
				return to, nil
			}
		}, "maps fewer"},
		{"snapshot invalid", func(g grown) { g.f.Invalidate(g.s.SnapshotName(3)) }, nil, "invalid"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := armedWithCOW(t)
			if c.prep != nil {
				c.prep(g)
			}
			var calls [][2]uint64
			fill := g.fillAt(2<<30, &calls)
			if c.fill != nil {
				fill = c.fill(g)
			}
			cow, _, to, err := g.s.GrowCOW(3, g.path, 8<<20, fill)
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
			if to != 0 || cow.FastEnd() != 16<<20 {
				t.Fatalf("to %d, COW %+v", to, cow)
			}
			name := g.s.COWName(3)
			if got := strings.Join(tableOf(t, g.f, name), "|"); got != oldTable || g.f.Suspended(name) || g.f.HasInactive(name) {
				t.Fatalf("table %q, suspended %v, inactive %v", got, g.f.Suspended(name), g.f.HasInactive(name))
			}
			if c.name != "pin fails" && !g.f.Pinned(g.path) {
				t.Error("the file is left unpinned")
			}
			if g.f.LoopCount() != 2 {
				t.Errorf("%d loop devices", g.f.LoopCount())
			}
		})
	}
}

// A COW with nothing mapped straight is not grown: nothing is suspended.
func TestGrowCOWNotMapped(t *testing.T) {
	f, s, _ := newStack(t)
	if err := s.Build(); err != nil {
		t.Fatal(err)
	}
	path := cowFile(t, 8<<20)
	cow, err := s.AttachCOW(1, path, tailOf(path))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ReattachSnapshot(1, cow.Path(), 8); err != nil {
		t.Fatal(err)
	}
	f.ResetLog()
	if _, _, _, err := s.GrowCOW(1, path, 1<<20, func(from, to uint64) (uint64, error) { return to, nil }); err == nil || !strings.Contains(err.Error(), "nothing of") {
		t.Fatalf("err = %v", err)
	}
	wantLog(t, f)
}

// A crash in the middle of GrowCOW leaves the COW device suspended with the
// new table loaded: Repair drops it and resumes the old one.
func TestRepairAfterGrowCrash(t *testing.T) {
	g := armedWithCOW(t)
	name := g.s.COWName(3)
	before := strings.Join(tableOf(t, g.f, name), "|")
	if err := g.f.Suspend(name); err != nil {
		t.Fatal(err)
	}
	if err := g.f.Load(name, dm.Linear{Start: 0, Length: 131072, Device: dm.Dev{Major: 7, Minor: 0}}); err != nil {
		t.Fatal(err)
	}
	if err := g.s.Repair(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(tableOf(t, g.f, name), "|"); got != before || g.f.Suspended(name) || g.f.HasInactive(name) {
		t.Fatalf("after repair: table %q (want %q), suspended %v, inactive %v", got, before, g.f.Suspended(name), g.f.HasInactive(name))
	}
}
