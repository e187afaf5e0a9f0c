package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/session"
)

// Views: read-only devices showing a device as it was before a session
// (DESIGN.md, "Views and instant restore"). A view of session NAME_SECS is
// dmsnap-NAME-atSECS, a `snapshot` target over dmsnap-NAME-real whose COW
// (a sparse file in the state directory, on a loop device) holds the
// restore plan's pre-images. The origin stays in use: what is written to it
// while the view is open is copied into the view's COW by the kernel.

// viewPath is /dev/mapper/<the view's name>.
func viewPath(v session.View) string { return dm.MapperPath(v.DM) }

// viewsOf lists the open views of device name, for status; nil when there
// are none or the views file cannot be read.
func viewsOf(state, name string) []session.View {
	vs, _ := session.LoadViews(state)
	var out []session.View
	for _, v := range vs {
		if v.Name == name {
			out = append(out, v)
		}
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

// viewName is the device-mapper name of the view of session id of device
// name: dmsnap-NAME-at<ID without NAME_> (never dmsnap-NAME-snapN, which the stack owns).
func viewName(name, id string) string {
	return dm.Prefix + name + "-at" + strings.TrimPrefix(id, name+"_")
}

func sessionIDArg(e *env, sub string, args []string, n int) ([]string, error) {
	fs := newFlags(e, "sessions "+sub)
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
	lock, err := session.AcquireLock(e.ctx, e.state, cliLockWait)
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
	lock, err := session.AcquireLock(e.ctx, e.state, cliLockWait)
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
	return nil
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
		return "btrfs", "", nil
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
		return vs[i], nil
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

	v := session.View{ID: id, Name: r.name, DM: viewName(r.name, id), COW: filepath.Join(e.state, "views", id+".cow")}
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
	cow, err := os.OpenFile(v.COW, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return session.View{}, err
	}
	fail := func(err error) (session.View, error) {
		os.Remove(v.COW)
		return session.View{}, err
	}
	src, err := os.Open(stack.RealPath())
	if err != nil {
		cow.Close()
		return fail(err)
	}
	_, err = p.WriteViewCow(e.ctx, cow, src, int64(real.Sectors)*512, int64(r.active.ChunkSize))
	src.Close()
	if err == nil {
		err = cow.Sync()
	}
	if cerr := cow.Close(); err == nil {
		err = cerr
	}
	if err != nil {
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
	vs = append(vs, v)
	if err := session.SaveViews(e.state, vs); err != nil {
		return v, fmt.Errorf("view %s is up but not recorded: %w", viewPath(v), err)
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
	lock, err := session.AcquireLock(e.ctx, e.state, cliLockWait)
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
	if err := removeView(dm.Stack{Name: v.Name}, v.DM); err != nil {
		return err
	}
	if l, err := dm.FindLoop(v.COW); err == nil && l != nil {
		dm.DetachLoop(l.Path)
	}
	if err := os.Remove(v.COW); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	vs = append(vs[:i], vs[i+1:]...)
	if err := session.SaveViews(e.state, vs); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "closed the view of %s (%s)\n", v.ID, viewPath(v))
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
