package rollback

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/dm"
)

// Kernel is what views and instant restores need of device-mapper: a
// narrow seam, so that their protocols (the record written before the
// kernel sees anything, the cleanup of what a crash left) run on the host
// against a fake. DM is the one over the running kernel.
type Kernel interface {
	// StackUp reports whether stack name's origin and -real are there.
	StackUp(name string) (bool, error)
	// OriginOpeners is how many openers dmsnap-NAME has (mounts included).
	OriginOpeners(name string) (int, error)
	// SnapshotData is how many sectors of pre-images session n's
	// snapshot holds.
	SnapshotData(name string, n int) (uint64, error)
	// Real is the path and size in bytes of dmsnap-NAME-real, the device
	// under the stack.
	Real(name string) (path string, size int64, err error)
	// AddView stacks the view device view over -real, with cowFile (a COW
	// in the kernel's format) as its exception store.
	AddView(name, view, cowFile string, chunkSectors uint32) error
	// RemoveView removes whatever of view exists: the device (refused while
	// it is open) and its COW's loop device; not the COW file.
	RemoveView(name, view, cowFile string) error
	// ViewState is "active", "invalid" (the kernel dropped it), "gone" (no
	// device) or "unknown", and the bytes its COW uses.
	ViewState(view string) (state string, used uint64)
	// StartMerge loads the origin as a snapshot-merge of cowFile; a refusal
	// of the table wraps ErrMergeRefused. Once it returns nil the origin
	// shows the merged state.
	StartMerge(name, cowFile string, chunkSectors uint32) error
}

// DM is Kernel over device-mapper.
type DM struct{}

var _ Kernel = DM{}

// StackUp implements Kernel.
func (DM) StackUp(name string) (bool, error) { return dm.Stack{Name: name}.Active() }

// OriginOpeners implements Kernel.
func (DM) OriginOpeners(name string) (int, error) {
	info, err := dm.Info(dm.Stack{Name: name}.OriginName())
	if err != nil {
		return 0, err
	}
	return int(info.OpenCount), nil
}

// SnapshotData implements Kernel.
func (DM) SnapshotData(name string, n int) (uint64, error) {
	st, err := dm.Stack{Name: name}.SnapshotStatus(n)
	if err != nil {
		return 0, err
	}
	return st.DataSectors(), nil
}

// Real implements Kernel.
func (DM) Real(name string) (string, int64, error) {
	path := dm.Stack{Name: name}.RealPath()
	real, err := dm.Inspect(path)
	if err != nil {
		return "", 0, err
	}
	return path, int64(real.Sectors) * dm.SectorSize, nil
}

// AddView implements Kernel: the COW goes on a loop device that goes when
// the view's table is removed (AutoClear).
func (DM) AddView(name, view, cowFile string, chunkSectors uint32) error {
	stack := dm.Stack{Name: name}
	real, err := dm.Inspect(stack.RealPath())
	if err != nil {
		return err
	}
	loop, err := dm.AttachLoop(cowFile, dm.LoopOptions{AutoClear: true})
	if err != nil {
		return err
	}
	defer loop.Close()
	return stack.AddView(view, real, loop.Dev, chunkSectors)
}

// RemoveView implements Kernel.
func (DM) RemoveView(name, view, cowFile string) error {
	if err := (dm.Stack{Name: name}).RemoveView(view); err != nil {
		return err
	}
	if l, err := dm.FindLoop(cowFile); err == nil && l != nil {
		dm.DetachLoop(l.Path)
	}
	return nil
}

// ViewState implements Kernel.
func (DM) ViewState(view string) (string, uint64) {
	st, err := dm.ViewStatus(view)
	switch {
	case errors.Is(err, dm.ErrNotFound):
		return "gone", 0
	case err != nil:
		return "unknown", 0
	case !st.Valid():
		return "invalid", 0
	}
	return "active", st.Allocated * dm.SectorSize
}

// LoadMergeTable loads the origin as snapshot-merge; a variable so that a
// VM test can play a kernel that refuses the table.
var LoadMergeTable = func(s dm.Stack, cow string, chunkSectors uint32) error {
	return s.StartMerge(cow, chunkSectors)
}

// StartMerge implements Kernel: the merge store goes on a loop device that
// goes with the merge table (AutoClear). The origin's page cache may hold
// blocks read before the table changed under it: they are dropped, so the
// next reader sees the restore.
func (DM) StartMerge(name, cowFile string, chunkSectors uint32) error {
	stack := dm.Stack{Name: name}
	loop, err := dm.AttachLoop(cowFile, dm.LoopOptions{AutoClear: true})
	if err != nil {
		return err
	}
	defer loop.Close()
	if err := LoadMergeTable(stack, loop.Path, chunkSectors); err != nil {
		var de *dm.Error
		if errors.As(err, &de) && de.Op == "load table" {
			return fmt.Errorf("%w: %w", ErrMergeRefused, err)
		}
		return err
	}
	if f, err := os.Open(stack.OriginPath()); err == nil {
		unix.IoctlSetInt(int(f.Fd()), unix.BLKFLSBUF, 0)
		f.Close()
	}
	return nil
}
