package rollback

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/fsprobe"
	"github.com/dmsnap/dmsnap/restore"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

// Views: read-only devices showing a device as it was before a session
// (README, "Using it"). A view of session NAME_SECS is
// dmsnap-NAME-atSECS, a `snapshot` target over dmsnap-NAME-real whose COW
// (a sparse file in the state directory, on a loop device) holds the
// restore plan's pre-images (dm.Stack.AddView). The origin stays in use:
// what is written to it while the view is open is copied into the view's
// COW by the kernel. STATE/views.json records each view before the kernel
// sees it (Opening), so that whatever a crash leaves is found and cleaned
// up by the next open or close of the view.

// ViewPath is /dev/mapper/<the view's name>.
func ViewPath(v session.View) string { return dm.MapperPath(v.DM) }

// ViewInfo is an open view in status: its record and what the kernel says.
type ViewInfo struct {
	session.View
	// State: active, invalid (the kernel dropped it: its COW could not
	// take a copy), gone (no device: a reboot removed it), or opening.
	State        string `json:"state"`
	CowUsedBytes uint64 `json:"cow_used_bytes,omitempty"`
}

// ViewsOf lists the open views of device name, for status; nil when there
// are none or the views file cannot be read.
func ViewsOf(cfg Config, name string) []ViewInfo {
	state := cfg.State
	vs, _ := session.LoadViews(state)
	var out []ViewInfo
	for _, v := range vs {
		if v.Name != name {
			continue
		}
		j := ViewInfo{View: v, State: "opening"}
		if !v.Opening {
			j.State, j.CowUsedBytes = cfg.kernel().ViewState(v.DM)
		}
		out = append(out, j)
	}
	return out
}

func findView(vs []session.View, id string) int {
	for i, v := range vs {
		if v.ID == id {
			return i
		}
	}
	return -1
}

// OpenView opens the view of session id, or returns it when it is open,
// under the state lock.
func OpenView(ctx context.Context, cfg Config, id string) (session.View, error) {
	lock, err := cfg.Manager().Lock(ctx)
	if err != nil {
		return session.View{}, fmt.Errorf("open view of %s: %w", id, err)
	}
	defer lock.Release()
	return openView(ctx, cfg, id)
}

// MountView opens the view of session id (if it is not open) and mounts it
// read-only on dir, with the options that keep its file system from
// writing (ViewFS). It returns the view and the file system type.
func MountView(ctx context.Context, cfg Config, id, dir string) (session.View, string, error) {
	lock, err := cfg.Manager().Lock(ctx)
	if err != nil {
		return session.View{}, "", fmt.Errorf("mount view of %s: %w", id, err)
	}
	defer lock.Release()
	v, err := openView(ctx, cfg, id)
	if err != nil {
		return v, "", err
	}
	if v.Mount != "" {
		return v, "", fmt.Errorf("the view of %s is mounted on %s already", v.ID, v.Mount)
	}
	fstype, opts, err := ViewFS(ViewPath(v))
	if err != nil {
		return v, "", err
	}
	if err := unix.Mount(ViewPath(v), dir, fstype, unix.MS_RDONLY, opts); err != nil {
		if fstype == "btrfs" {
			return v, "", btrfsMountError(v, dir, err)
		}
		return v, "", fmt.Errorf("mount %s (%s, ro,%s) on %s: %w; the view stays open (dmsnap sessions close %s)", ViewPath(v), fstype, opts, dir, err, v.ID)
	}
	vs, err := session.LoadViews(cfg.State)
	if err != nil {
		return v, "", err
	}
	if i := findView(vs, v.ID); i >= 0 {
		vs[i].Mount = dir
	}
	if err := session.SaveViews(cfg.State, vs); err != nil {
		return v, "", err
	}
	v.Mount = dir
	return v, fstype, nil
}

// CloseView unmounts and removes the view of session id, its COW and its
// record, under the state lock.
func CloseView(ctx context.Context, cfg Config, id string) (session.View, error) {
	lock, err := cfg.Manager().Lock(ctx)
	if err != nil {
		return session.View{}, fmt.Errorf("close view of %s: %w", id, err)
	}
	defer lock.Release()
	vs, err := session.LoadViews(cfg.State)
	if err != nil {
		return session.View{}, err
	}
	i := findView(vs, id)
	if i < 0 {
		return session.View{}, fmt.Errorf("no open view of session %s", id)
	}
	v := vs[i]
	if v.Mount != "" {
		if err := unix.Unmount(v.Mount, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return v, fmt.Errorf("unmount %s: %w", v.Mount, err)
		}
	}
	if err := dropView(cfg, v); err != nil {
		return v, err
	}
	session.Crashpoint(session.CrashpointViewDropped)
	vs = append(vs[:i], vs[i+1:]...)
	if err := session.SaveViews(cfg.State, vs); err != nil {
		return v, err
	}
	return v, nil
}

// btrfsMountError explains a refused btrfs view mount. A view is a copy of
// the device: same fsid, same devid. Linux before 6.7 (no temp-fsid) keeps
// one device per btrfs fsid and devid: while the origin is mounted the
// kernel refuses the view with EEXIST and logs "duplicate device" (seen on
// 6.1); with the origin unmounted it takes the view, and then refuses the
// origin until the view is unmounted. Changing the view's fsid would write
// to it, and a view is exact by promise.
func btrfsMountError(v session.View, dir string, err error) error {
	return fmt.Errorf("mount %s (btrfs, ro) on %s: %w: the kernel refuses a btrfs that has the same fsid (UUID) as one it already knows, "+
		"and a view has the same fsid as dmsnap-%s (Linux before 6.7 keeps one device per btrfs fsid; see \"duplicate device\" in the kernel log). "+
		"The view stays open and exact at %s: copy files out without mounting it (btrfs restore %s DIR), or copy the device; dmsnap sessions close %s removes it",
		ViewPath(v), dir, err, v.Name, ViewPath(v), ViewPath(v), v.ID)
}

// ViewFS finds the file system on dev (fsprobe.Probe, as activation
// identifies a device) and the mount options that keep it from writing: a
// view is read-only, and a journal replay would write.
func ViewFS(dev string) (fstype, opts string, err error) {
	f, err := os.Open(dev)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	typ, _, err := fsprobe.Probe(f)
	if err != nil {
		return "", "", fmt.Errorf("%s: reading the superblock: %w", dev, err)
	}
	switch typ {
	case "ext2", "ext3", "ext4":
		// The ext4 driver mounts all three.
		return "ext4", "noload", nil
	case "xfs":
		return "xfs", "norecovery,nouuid", nil
	case "btrfs":
		// A read-only btrfs mount still replays the log tree, which
		// writes.
		return "btrfs", "nologreplay", nil
	}
	return "", "", fmt.Errorf("%s: no ext4, xfs or btrfs file system found; the view is open, use the device directly", dev)
}

// openView opens the view of session id, or returns it when it is open.
// The caller holds the state lock.
func openView(ctx context.Context, cfg Config, id string) (session.View, error) {
	vs, err := session.LoadViews(cfg.State)
	if err != nil {
		return session.View{}, err
	}
	if i := findView(vs, id); i >= 0 {
		if st, _ := cfg.kernel().ViewState(vs[i].DM); !vs[i].Opening && st != "gone" {
			return vs[i], nil
		}
		// An open that a crash interrupted, or a view a reboot removed:
		// clean up what is left, then open again.
		if err := dropView(cfg, vs[i]); err != nil {
			return session.View{}, fmt.Errorf("cleaning up an interrupted open of the view of %s: %w", id, err)
		}
		vs = append(vs[:i], vs[i+1:]...)
		if err := session.SaveViews(cfg.State, vs); err != nil {
			return session.View{}, err
		}
	}
	r, err := Open(cfg, "", id)
	if err != nil {
		return session.View{}, err
	}
	defer r.Close()
	if r.Active == nil {
		return session.View{}, fmt.Errorf("%s is not activated: a view is stacked over dmsnap-%s-real (dmsnap activate %s first, or dmsnap restore --session %s --to FILE)", r.Name, r.Name, r.Device, id)
	}
	if err := RefuseWhileMerging(cfg.State, r.Name, "opening a view"); err != nil {
		return session.View{}, err
	}
	k := cfg.kernel()
	origin := cfg.originPath(r.Name)
	if ok, err := k.StackUp(r.Name); err != nil {
		return session.View{}, err
	} else if !ok {
		return session.View{}, fmt.Errorf("%s is activated but its stack is not up (is %s present? dmsnap attach %s)", r.Name, r.Device, r.Device)
	}
	sessions, err := r.Sessions()
	if err != nil {
		return session.View{}, err
	}
	// The armed session's view is the state before it: the device as the
	// newest closed session left it (checked below to hold no data yet).
	armed := false
	target, err := r.Find(sessions, id)
	if err != nil {
		cur := r.Active.Current()
		if cur == nil || cur.Dir == "" || filepath.Base(cur.Dir) != id {
			return session.View{}, err
		}
		armed, target = true, len(sessions)
	}
	if !armed {
		if err := r.CheckTarget(sessions, target); err != nil {
			return session.View{}, err
		}
	}
	// The plan ends at the last closed session: -real must hold the state
	// that session closed with, so nothing may have been written since.
	for _, s := range r.Active.Sessions {
		if s.State.Ending() {
			return session.View{}, fmt.Errorf("session %d of %s is still closing: retry when dmsnap watch has converted it", s.N, r.Name)
		}
	}
	openers, err := k.OriginOpeners(r.Name)
	if err != nil {
		return session.View{}, err
	}
	if openers > 0 {
		return session.View{}, fmt.Errorf("%s is in use (%d openers): unmount it and let its session close, then open the view (it may be mounted again once the view is open)", origin, openers)
	}
	if cur := r.Active.Current(); cur != nil {
		data, err := k.SnapshotData(r.Name, cur.N)
		if err != nil {
			return session.View{}, err
		}
		if data > 0 {
			return session.View{}, fmt.Errorf("%s was written since its last session closed (armed session %d holds %d sectors): a view would not show the state before %s; mount and unmount it to close that session first", origin, cur.N, data, id)
		}
	}
	var p *restore.Plan
	if !armed {
		if p, _, err = r.plan(ctx, sessions[target:], nil); err != nil {
			return session.View{}, err
		}
		if err := r.cowSpace(ctx, p, filepath.Join(cfg.State, "views"), "the view's COW"); err != nil {
			return session.View{}, err
		}
	}

	v := session.View{ID: id, Name: r.Name, DM: session.ViewDMName(r.Name, id), COW: filepath.Join(cfg.State, "views", id+".cow"), Opening: true}
	if err := dm.ValidateName(strings.TrimPrefix(v.DM, dm.Prefix)); err != nil {
		return session.View{}, fmt.Errorf("view name %s: %w", v.DM, err)
	}
	realPath, realSize, err := k.Real(r.Name)
	if err != nil {
		return session.View{}, err
	}
	if err := os.MkdirAll(filepath.Dir(v.COW), 0o700); err != nil {
		return session.View{}, err
	}
	// The record first, marked opening: whatever a crash leaves from here
	// on is found by the next open or close of this view (or named by
	// deactivate), and cleaned up.
	if err := session.SaveViews(cfg.State, append(vs, v)); err != nil {
		return session.View{}, err
	}
	session.Crashpoint(session.CrashpointViewRecorded)
	fail := func(err error) (session.View, error) {
		if derr := dropView(cfg, v); derr != nil {
			return session.View{}, errors.Join(err, fmt.Errorf("undoing the open left pieces (dmsnap sessions close %s retries): %w", id, derr))
		}
		if serr := session.SaveViews(cfg.State, vs); serr != nil {
			return session.View{}, errors.Join(err, serr)
		}
		return session.View{}, err
	}
	if armed {
		err = writeEmptyCow(v.COW, realSize, r.Active.ChunkSectors())
	} else {
		err = writePlanCow(ctx, p, v.COW, realPath, realSize, int64(r.Active.ChunkSize))
	}
	if err != nil {
		return fail(fmt.Errorf("writing the view of %s: %w", id, err))
	}
	if err := k.AddView(r.Name, v.DM, v.COW, r.Active.ChunkSectors()); err != nil {
		return fail(err)
	}
	session.Crashpoint(session.CrashpointViewStacked)
	v.Opening = false
	if err := session.SaveViews(cfg.State, append(vs, v)); err != nil {
		return v, fmt.Errorf("view %s is up but still recorded as opening (dmsnap sessions close %s removes it): %w", ViewPath(v), id, err)
	}
	return v, nil
}

// dropView removes whatever of view v exists: its device, the loop device
// of its COW, the COW file. It refuses an open (mounted) view device.
func dropView(cfg Config, v session.View) error {
	if err := cfg.kernel().RemoveView(v.Name, v.DM, v.COW); err != nil {
		return err
	}
	if err := os.Remove(v.COW); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// writeEmptyCow makes the COW of a view with nothing to undo: a sparse file
// of zeros sized like a session's COW, which the kernel takes as a new
// persistent exception store (it writes the header itself).
func writeEmptyCow(path string, devSize int64, chunkSectors uint32) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(snapstore.Geometry{ChunkSectors: chunkSectors}.CowFileSize(devSize))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
