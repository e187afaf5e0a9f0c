package system

import (
	"path/filepath"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/snapstore"
)

// OriginPath is /dev/mapper/dmsnap-NAME, the device users mount.
func OriginPath(name string) string { return dm.Stack{Name: name}.OriginPath() }

// The routes of a COW's mapped part (LiveCOW.Route).
const (
	RouteBelow = dm.PathBelow
	RouteLoop  = dm.PathLoop
)

// LiveCOW is how a live session's COW reaches the store, for status.
type LiveCOW struct {
	// DirectIO: the loop device over cow.img uses direct I/O (nil: the
	// COW is on no loop device now).
	DirectIO *bool
	// TailWriteThrough: the loop device over cow.tail is write-through
	// (nil: there is none, nothing is mapped straight).
	TailWriteThrough *bool
	// FastBytes: bytes of the COW the kernel writes straight to the
	// store's device, in Segments segments (nil: the session has no COW
	// device now, one armed by an older dmsnap whose snapshot sits on the
	// loop device directly).
	FastBytes *uint64
	Segments  int
	// Route is how the mapped part reaches the store's blocks (dm.PathBelow,
	// dm.PathLoop, dm.PathFile); FastEnd the end of the mapped part in the
	// COW (the kernel's allocation past it goes to cow.tail).
	Route   string
	FastEnd uint64
	// Unmapped: why nothing of the COW goes straight to the store's
	// device (dm.WhyUnmapped), when nothing does.
	Unmapped string
}

// InspectCOW reads how session n of stack name, in directory dir, reaches
// its COW.
func InspectCOW(name string, n int, dir string) LiveCOW {
	var out LiveCOW
	loopFlag := func(file string, flag func(*dm.Loop) bool) *bool {
		l, err := dm.FindLoop(file)
		if err != nil || l == nil {
			return nil
		}
		v := flag(l)
		return &v
	}
	if dir != "" {
		out.DirectIO = loopFlag(filepath.Join(dir, snapstore.CowFile), func(l *dm.Loop) bool { return l.DirectIO })
		out.TailWriteThrough = loopFlag(filepath.Join(dir, snapstore.CowTailFile), func(l *dm.Loop) bool { return l.WriteThrough })
	}
	if c, err := (dm.Stack{Name: name}).COWInfo(n); err == nil {
		out.FastBytes, out.Segments, out.Route, out.FastEnd = &c.FastBytes, c.Segments, c.Route, c.FastEnd()
		if c.FastBytes == 0 && dir != "" {
			out.Unmapped = dm.WhyUnmapped(filepath.Join(dir, snapstore.CowFile))
		}
	}
	return out
}
