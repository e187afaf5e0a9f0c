package system

import (
	"context"
	"errors"
	"os"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

// Merges is session.MergeKernel over the running kernel: the instant
// restores' snapshot-merge (dm/merge.go) and the loop device over each
// merge store.
type Merges struct{}

var _ session.MergeKernel = Merges{}

// MergeStatus implements session.MergeKernel.
func (Merges) MergeStatus(_ context.Context, name string) (session.MergeProgress, error) {
	st, merging, err := dm.Stack{Name: name}.MergeStatus()
	if err != nil || !merging {
		return session.MergeProgress{}, err
	}
	return session.MergeProgress{
		Merging: true, Failed: st.State != dm.SnapshotActive,
		Allocated: st.Allocated, Metadata: st.Metadata, Total: st.Total,
	}, nil
}

// EndMerge implements session.MergeKernel.
func (Merges) EndMerge(_ context.Context, name string) error {
	return dm.Stack{Name: name}.EndMerge(false)
}

// RemoveCOW implements session.MergeKernel.
func (Merges) RemoveCOW(_ context.Context, file string) error {
	if l, err := dm.FindLoop(file); err == nil && l != nil {
		// AutoClear detaches it with the merge table; one left behind (the
		// table never took it) is detached here.
		if err := dm.DetachLoop(l.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// ResumeMerge implements session.MergeKernel.
func (Merges) ResumeMerge(_ context.Context, name, file string, chunkSectors uint32) (bool, error) {
	f, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return false, err
	}
	c, err := snapstore.OpenCow(f, fi.Size(), file)
	if err != nil {
		f.Close()
		return false, err
	}
	st, err := c.Walk(func(snapstore.CowEntry) error { return nil })
	f.Close()
	if err != nil || st.Exceptions == 0 {
		return false, err
	}
	loop, err := dm.AttachLoop(file, dm.LoopOptions{AutoClear: true})
	if err != nil {
		return false, err
	}
	defer loop.Close()
	if err := (dm.Stack{Name: name}).StartMerge(loop.Path, chunkSectors); err != nil {
		return false, err
	}
	return true, nil
}
