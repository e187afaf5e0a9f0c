package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/restore"
	"github.com/dmsnap/dmsnap/session"
)

// Views: read-only devices showing a device as it was before a session
// (README, "Using it"). A view of session NAME_SECS is
// dmsnap-NAME-atSECS, a `snapshot` target over dmsnap-NAME-real whose COW
// (a sparse file in the state directory, on a loop device) holds the
// restore plan's pre-images. The origin stays in use: what is written to it
// while the view is open is copied into the view's COW by the kernel.

// viewPath is /dev/mapper/<the view's name>.
func viewPath(v session.View) string { return dm.MapperPath(v.DM) }

// viewJSON is an open view in status: its record and what the kernel says.
type viewJSON struct {
	session.View
	// State: active, invalid (the kernel dropped it: its COW could not
	// take a copy), gone (no device: a reboot removed it), or opening.
	State        string `json:"state"`
	CowUsedBytes uint64 `json:"cow_used_bytes,omitempty"`
}

// viewsOf lists the open views of device name, for status; nil when there
// are none or the views file cannot be read.
func viewsOf(state, name string) []viewJSON {
	vs, _ := session.LoadViews(state)
	var out []viewJSON
	for _, v := range vs {
		if v.Name != name {
			continue
		}
		j := viewJSON{View: v, State: "opening"}
		if !v.Opening {
			j.State = viewState(v)
			if st, err := viewStatus(v); err == nil {
				j.CowUsedBytes = st.Allocated * 512
			}
		}
		out = append(out, j)
	}
	return out
}

func viewStatus(v session.View) (dm.SnapshotStatus, error) {
	sts, err := dm.Status(v.DM)
	if err != nil {
		return dm.SnapshotStatus{}, err
	}
	if len(sts) != 1 {
		return dm.SnapshotStatus{}, fmt.Errorf("%s: %d targets", v.DM, len(sts))
	}
	return dm.ParseSnapshotStatus(sts[0].Params)
}

// viewState is "active", "invalid" or "gone" (see viewJSON).
func viewState(v session.View) string {
	st, err := viewStatus(v)
	switch {
	case errors.Is(err, dm.ErrNotFound):
		return "gone"
	case err != nil:
		return "unknown"
	case !st.Valid():
		return "invalid"
	}
	return "active"
}

// viewText is a view's line in status.
func viewText(v viewJSON) string {
	s := fmt.Sprintf("%s, before session %s", viewPath(v.View), v.ID)
	switch v.State {
	case "opening":
		s += ", OPENING (interrupted? dmsnap sessions close " + v.ID + " cleans it up)"
	case "gone":
		s += ", GONE (a reboot removes views: dmsnap sessions open " + v.ID + " makes it again, sessions close removes its record and COW)"
	case "invalid":
		s += ", INVALID (the kernel dropped it: its COW in the state directory could not take a copy; close it)"
	default:
		s += ", COW " + humanBytes(v.CowUsedBytes)
		if v.Mount != "" {
			s += ", mounted on " + v.Mount
		}
	}
	return s
}

func findView(vs []session.View, id string) int {
	for i, v := range vs {
		if v.ID == id {
			return i
		}
	}
	return -1
}

// viewName is the device-mapper name of the view of session id of device
// name (session.ViewDMName, which views.json is checked against).
func viewName(name, id string) string { return session.ViewDMName(name, id) }

func sessionIDArg(e *env, sub string, args []string, n int) ([]string, error) {
	fs := newFlags(e, "sessions "+sub)
	fs.Usage = func() { fmt.Fprint(e.stderr, sessionsHelp) }
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if fs.NArg() != n {
		if n == 1 {
			return nil, usagef("sessions %s takes one session ID", sub)
		}
		return nil, usagef("sessions %s takes a session ID and a directory", sub)
	}
	if err := session.ValidateSessionID(fs.Arg(0)); err != nil {
		return nil, usagef("%q: %v", fs.Arg(0), err)
	}
	return fs.Args(), nil
}

func runSessionsOpen(e *env, args []string) error {
	a, err := sessionIDArg(e, "open", args, 1)
	if err != nil {
		return err
	}
	lock, err := newManager(e).Lock(e.ctx)
	if err != nil {
		return fmt.Errorf("open view of %s: %w", a[0], err)
	}
	defer lock.Release()
	v, err := openView(e, a[0])
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, viewPath(v))
	return nil
}

func runSessionsMount(e *env, args []string) error {
	a, err := sessionIDArg(e, "mount", args, 2)
	if err != nil {
		return err
	}
	lock, err := newManager(e).Lock(e.ctx)
	if err != nil {
		return fmt.Errorf("mount view of %s: %w", a[0], err)
	}
	defer lock.Release()
	v, err := openView(e, a[0])
	if err != nil {
		return err
	}
	if v.Mount != "" {
		return fmt.Errorf("the view of %s is mounted on %s already", v.ID, v.Mount)
	}
	dir, err := filepath.Abs(a[1])
	if err != nil {
		return err
	}
	fstype, opts, err := viewFS(viewPath(v))
	if err != nil {
		return err
	}
	if err := unix.Mount(viewPath(v), dir, fstype, unix.MS_RDONLY, opts); err != nil {
		if fstype == "btrfs" {
			return btrfsMountError(v, dir, err)
		}
		return fmt.Errorf("mount %s (%s, ro,%s) on %s: %w; the view stays open (dmsnap sessions close %s)", viewPath(v), fstype, opts, dir, err, v.ID)
	}
	vs, err := session.LoadViews(e.state)
	if err != nil {
		return err
	}
	if i := findView(vs, v.ID); i >= 0 {
		vs[i].Mount = dir
	}
	if err := session.SaveViews(e.state, vs); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s (before session %s) mounted read-only on %s\n", viewPath(v), v.ID, dir)
	if fstype == "btrfs" {
		fmt.Fprintf(e.stdout, "note: while this btrfs view is mounted, %s cannot be mounted (same fsid: the kernel refuses it); unmount the view first (dmsnap sessions close %s)\n",
			dm.Stack{Name: v.Name}.OriginPath(), v.ID)
	}
	return nil
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
		viewPath(v), dir, err, v.Name, viewPath(v), viewPath(v), v.ID)
}

// viewFS finds the file system on dev and the mount options that keep it
// from writing: a view is read-only, and a journal replay would write.
func viewFS(dev string) (fstype, opts string, err error) {
	f, err := os.Open(dev)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	b := make([]byte, 0x10048)
	if _, err := f.ReadAt(b, 0); err != nil {
		return "", "", fmt.Errorf("%s: reading the superblock: %w", dev, err)
	}
	switch {
	case b[1080] == 0x53 && b[1081] == 0xef:
		return "ext4", "noload", nil
	case string(b[0:4]) == "XFSB":
		return "xfs", "norecovery,nouuid", nil
	case string(b[0x10040:0x10048]) == "_BHRfS_M":
		// A read-only btrfs mount still replays the log tree, which
		// writes.
		return "btrfs", "nologreplay", nil
	}
	return "", "", fmt.Errorf("%s: no ext4, xfs or btrfs file system found; the view is open, use the device directly", dev)
}

// openView opens the view of session id, or returns it when it is open.
// The caller holds the state lock.
func openView(e *env, id string) (session.View, error) {
	vs, err := session.LoadViews(e.state)
	if err != nil {
		return session.View{}, err
	}
	if i := findView(vs, id); i >= 0 {
		if !vs[i].Opening && viewState(vs[i]) != "gone" {
			return vs[i], nil
		}
		// An open that a crash interrupted, or a view a reboot removed:
		// clean up what is left, then open again.
		if err := dropView(vs[i]); err != nil {
			return session.View{}, fmt.Errorf("cleaning up an interrupted open of the view of %s: %w", id, err)
		}
		vs = append(vs[:i], vs[i+1:]...)
		if err := session.SaveViews(e.state, vs); err != nil {
			return session.View{}, err
		}
	}
	r := &restorer{e: e, f: restoreFlags{session: id}}
	defer r.close()
	if err := r.resolveDevice(); err != nil {
		return session.View{}, err
	}
	if r.active == nil {
		return session.View{}, fmt.Errorf("%s is not activated: a view is stacked over dmsnap-%s-real (dmsnap activate %s first, or dmsnap restore --session %s --to FILE)", r.name, r.name, r.device, id)
	}
	if err := refuseWhileMerging(e.state, r.name, "opening a view"); err != nil {
		return session.View{}, err
	}
	stack := dm.Stack{Name: r.name}
	if ok, err := stack.Active(); err != nil {
		return session.View{}, err
	} else if !ok {
		return session.View{}, fmt.Errorf("%s is activated but its stack is not up (is %s present? dmsnap attach %s)", r.name, r.device, r.device)
	}
	sessions, err := r.deviceSessions()
	if err != nil {
		return session.View{}, err
	}
	target, err := r.pickTarget(sessions)
	if err != nil {
		return session.View{}, err
	}
	if err := r.checkTarget(sessions, target); err != nil {
		return session.View{}, err
	}
	// The plan ends at the last closed session: -real must hold the state
	// that session closed with, so nothing may have been written since.
	for _, s := range r.active.Sessions {
		if s.State.Ending() {
			return session.View{}, fmt.Errorf("session %d of %s is still closing: retry when dmsnap watch has converted it", s.N, r.name)
		}
	}
	origin, err := dm.Info(stack.OriginName())
	if err != nil {
		return session.View{}, err
	}
	if origin.OpenCount > 0 {
		return session.View{}, fmt.Errorf("%s is in use (%d openers): unmount it and let its session close, then open the view (it may be mounted again once the view is open)", stack.OriginPath(), origin.OpenCount)
	}
	if cur := r.active.Current(); cur != nil {
		st, err := stack.SnapshotStatus(cur.N)
		if err != nil {
			return session.View{}, err
		}
		if st.DataSectors() > 0 {
			return session.View{}, fmt.Errorf("%s was written since its last session closed (armed session %d holds %d sectors): a view would not show the state before %s; mount and unmount it to close that session first", stack.OriginPath(), cur.N, st.DataSectors(), id)
		}
	}
	p, _, err := r.plan(sessions[target:], nil)
	if err != nil {
		return session.View{}, err
	}
	if err := r.cowSpace(p, filepath.Join(e.state, "views"), "the view's COW"); err != nil {
		return session.View{}, err
	}

	v := session.View{ID: id, Name: r.name, DM: viewName(r.name, id), COW: filepath.Join(e.state, "views", id+".cow"), Opening: true}
	if err := dm.ValidateName(strings.TrimPrefix(v.DM, dm.Prefix)); err != nil {
		return session.View{}, fmt.Errorf("view name %s: %w", v.DM, err)
	}
	real, err := dm.Inspect(stack.RealPath())
	if err != nil {
		return session.View{}, err
	}
	if err := os.MkdirAll(filepath.Dir(v.COW), 0o700); err != nil {
		return session.View{}, err
	}
	// The record first, marked opening: whatever a crash leaves from here
	// on is found by the next open or close of this view (or named by
	// deactivate), and cleaned up.
	if err := session.SaveViews(e.state, append(vs, v)); err != nil {
		return session.View{}, err
	}
	session.Crashpoint(session.CrashpointViewRecorded)
	fail := func(err error) (session.View, error) {
		if derr := dropView(v); derr != nil {
			return session.View{}, errors.Join(err, fmt.Errorf("undoing the open left pieces (dmsnap sessions close %s retries): %w", id, derr))
		}
		if serr := session.SaveViews(e.state, vs); serr != nil {
			return session.View{}, errors.Join(err, serr)
		}
		return session.View{}, err
	}
	if err := writePlanCow(e.ctx, p, v.COW, stack.RealPath(), int64(real.Sectors)*512, int64(r.active.ChunkSize)); err != nil {
		return fail(fmt.Errorf("writing the view of %s: %w", id, err))
	}
	loop, err := dm.AttachLoop(v.COW, dm.LoopOptions{AutoClear: true})
	if err != nil {
		return fail(err)
	}
	// AutoClear: the loop device goes when the view's table is removed.
	defer loop.Close()
	if err := stackView(stack, v.DM, real, loop.Dev, r.active.ChunkSectors()); err != nil {
		return fail(err)
	}
	session.Crashpoint(session.CrashpointViewStacked)
	v.Opening = false
	if err := session.SaveViews(e.state, append(vs, v)); err != nil {
		return v, fmt.Errorf("view %s is up but still recorded as opening (dmsnap sessions close %s removes it): %w", viewPath(v), id, err)
	}
	return v, nil
}

// stackView adds the snapshot target name over -real with the view's COW,
// in the kernel's order (as dm.Stack adds a session's snapshot): create and
// load the view, reload the origin, suspend the origin, resume the view,
// resume the origin. Failures undo what was done.
func stackView(stack dm.Stack, name string, real dm.BlockDevice, cow dm.Dev, chunk uint32) error {
	origin := stack.OriginName()
	if _, err := dm.Create(name, "DMSNAP-"+strings.TrimPrefix(name, dm.Prefix)); err != nil {
		return err
	}
	rm := func() { dm.Remove(name) }
	if err := dm.Load(name, dm.Snapshot{Length: real.Sectors, Origin: real.Dev, COW: cow, ChunkSectors: chunk}); err != nil {
		rm()
		return err
	}
	if err := dm.Load(origin, dm.SnapshotOrigin{Length: real.Sectors, Origin: real.Dev}); err != nil {
		rm()
		return err
	}
	if err := dm.Suspend(origin); err != nil {
		dm.ClearTable(origin)
		rm()
		return err
	}
	if err := dm.Resume(name); err != nil {
		rm()
		if rerr := dm.Resume(origin); rerr != nil {
			return errors.Join(err, fmt.Errorf("%s is left suspended: dmsetup resume %s: %w", stack.OriginPath(), origin, rerr))
		}
		return err
	}
	if err := dm.Resume(origin); err != nil {
		if dm.Resume(origin) != nil {
			return fmt.Errorf("%s is left suspended and all I/O to it blocks (dmsetup resume %s): %w", stack.OriginPath(), origin, err)
		}
	}
	return nil
}

func runSessionsClose(e *env, args []string) error {
	a, err := sessionIDArg(e, "close", args, 1)
	if err != nil {
		return err
	}
	lock, err := newManager(e).Lock(e.ctx)
	if err != nil {
		return fmt.Errorf("close view of %s: %w", a[0], err)
	}
	defer lock.Release()
	vs, err := session.LoadViews(e.state)
	if err != nil {
		return err
	}
	i := findView(vs, a[0])
	if i < 0 {
		return fmt.Errorf("no open view of session %s", a[0])
	}
	v := vs[i]
	if v.Mount != "" {
		if err := unix.Unmount(v.Mount, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount %s: %w", v.Mount, err)
		}
	}
	if err := dropView(v); err != nil {
		return err
	}
	session.Crashpoint(session.CrashpointViewDropped)
	vs = append(vs[:i], vs[i+1:]...)
	if err := session.SaveViews(e.state, vs); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "closed the view of %s (%s)\n", v.ID, viewPath(v))
	return nil
}

// cowSpaceMargin is the free space a COW written from a plan leaves on its
// file system: the state directory lives there too, and the kernel copies
// into a view's COW what the origin overwrites while the view is open.
const cowSpaceMargin = 64 << 20

// cowSpace checks that the file system of dir (made if missing) has room
// for a COW holding plan p's chunks, plus cowSpaceMargin. A view's COW may
// grow beyond that while the origin is written; when the file system fills
// up, the kernel drops the view (status shows it INVALID), never the origin.
func (r *restorer) cowSpace(p *restore.Plan, dir, what string) error {
	sum, err := p.Summarize(r.e.ctx)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	free := st.Bavail * uint64(st.Bsize)
	need := sum.Bytes + uint64(r.active.ChunkSize)*uint64(sum.Runs) + cowSpaceMargin
	if free < need {
		return fmt.Errorf("not enough space for %s in %s: it needs about %s, %s is free; free some space there, or use another --state directory",
			what, dir, humanBytes(need), humanBytes(free))
	}
	return nil
}

// dropView removes whatever of view v exists: its device, the loop device
// of its COW, the COW file. It refuses an open (mounted) view device.
func dropView(v session.View) error {
	if err := removeView(dm.Stack{Name: v.Name}, v.DM); err != nil {
		return err
	}
	if l, err := dm.FindLoop(v.COW); err == nil && l != nil {
		dm.DetachLoop(l.Path)
	}
	if err := os.Remove(v.COW); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// removeView removes the view device with the origin suspended.
func removeView(stack dm.Stack, name string) error {
	info, err := dm.Info(name)
	if errors.Is(err, dm.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if info.OpenCount > 0 {
		return fmt.Errorf("%s is open (%d openers): unmount it first", dm.MapperPath(name), info.OpenCount)
	}
	origin := stack.OriginName()
	if _, err := dm.Info(origin); errors.Is(err, dm.ErrNotFound) {
		return dm.Remove(name)
	} else if err != nil {
		return err
	}
	if err := dm.Suspend(origin); err != nil {
		return err
	}
	rerr := dm.Remove(name)
	if err := dm.Resume(origin); err != nil && dm.Resume(origin) != nil {
		return errors.Join(rerr, fmt.Errorf("%s is left suspended (dmsetup resume %s): %w", stack.OriginPath(), origin, err))
	}
	return rerr
}
