//go:build vm

package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/vmtest"
	"github.com/dmsnap/dmsnap/session"
)

// views runs `dmsnap sessions SUB ARGS` in-process.
func (d *vmDev) views(sub string, args ...string) (int, string) {
	d.t.Helper()
	code, out, errOut := d.viewsSplit(sub, args...)
	return code, out + errOut
}

// viewsSplit is views with stdout and stderr (progress, notes) apart.
func (d *vmDev) viewsSplit(sub string, args ...string) (code int, stdout, stderr string) {
	d.t.Helper()
	var out, errb bytes.Buffer
	all := append([]string{"--store", d.store, "--state", d.state, "sessions", sub}, args...)
	code = run(d.ctx, all, strings.NewReader(""), &out, &errb)
	d.t.Logf("dmsnap %s: exit %d\n%s%s", strings.Join(all, " "), code, out.String(), errb.String())
	return code, out.String(), errb.String()
}

// openView runs `sessions open id` and returns what it prints on stdout:
// the view's device path.
func (d *vmDev) openView(id string) string {
	d.t.Helper()
	code, out, errOut := d.viewsSplit("open", id)
	if code != 0 {
		d.t.Fatalf("sessions open %s: exit %d: %s%s", id, code, out, errOut)
	}
	return strings.TrimSpace(out)
}

func (d *vmDev) mustViews(sub string, args ...string) string {
	d.t.Helper()
	code, out := d.views(sub, args...)
	if code != 0 {
		d.t.Fatalf("sessions %s %v: exit %d: %s", sub, args, code, out)
	}
	return out
}

// storeDigest hashes every file of the session directories ids.
func storeDigest(t *testing.T, store string, ids []string) string {
	t.Helper()
	h := sha256.New()
	for _, id := range ids {
		err := filepath.WalkDir(filepath.Join(store, id), func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "%s %d\n", p, len(b))
			h.Write(b)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// sessionFile is what vmDev.session number seq writes to file i.
func sessionFile(seq, i int) []byte {
	return bytes.Repeat([]byte(fmt.Sprintf("session %d file %d ", seq, i)), (256<<10)*(seq+i)/20)
}

// newFSDev is an activated device (vmDev) holding file system fs: the
// ext4 vmDev grown to fs.size and made again.
func newFSDev(t *testing.T, fs matrixFS) *vmDev {
	t.Helper()
	d := newVMDev(t)
	if fs.name == "ext4" {
		return d
	}
	if err := d.m.Deactivate(d.ctx, d.name); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(d.file, fs.size); err != nil {
		t.Fatal(err)
	}
	if _, err := dm.SetLoopCapacity(d.raw); err != nil {
		t.Fatal(err)
	}
	// mkfs.xfs refuses file systems under 300 MiB, but for fstests runs
	// (these variables), which keeps this test lean.
	vmtest.Sh(t, "TEST_DIR=1 TEST_DEV=1 QA_CHECK_FS=1 "+strings.Join(fs.mkfs, " ")+" "+d.raw)
	if _, err := d.m.Activate(d.ctx, session.ActivateRequest{Device: d.raw, Store: d.store}); err != nil {
		t.Fatal(err)
	}
	return d
}

// mountOrigin mounts the origin (file system fstype) and lets the manager
// open its session.
func (d *vmDev) mountOrigin(fstype string) {
	d.t.Helper()
	if err := unix.Mount(d.origin, d.mnt, fstype, 0, ""); err != nil {
		d.t.Fatalf("mount %s (%s): %v", d.origin, fstype, err)
	}
	if _, err := d.m.Reconcile(d.ctx); err != nil {
		d.t.Fatal(err)
	}
}

func (d *vmDev) unmountOrigin() {
	d.t.Helper()
	unix.Sync()
	if err := unix.Unmount(d.mnt, 0); err != nil {
		d.t.Fatal(err)
	}
	if _, err := d.m.Reconcile(d.ctx); err != nil {
		d.t.Fatal(err)
	}
}

// fsSession is one mount session of a file system of type fstype writing
// sessionFile(seq, i) to f0, f1, f2; it returns the session's ID.
func (d *vmDev) fsSession(fstype string) string {
	t := d.t
	t.Helper()
	d.seq++
	d.mountOrigin(fstype)
	reg, err := d.m.Registry()
	if err != nil {
		t.Fatal(err)
	}
	dir := reg.Device(d.name).Current().Dir
	for i := range 3 {
		if err := os.WriteFile(filepath.Join(d.mnt, fmt.Sprintf("f%d", i)), sessionFile(d.seq, i), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d.unmountOrigin()
	return filepath.Base(dir)
}

// TestViews: for ext4, xfs and btrfs, views of the first, middle and last of
// three sessions show the device exactly as it was before each (SHA-256),
// stay exact while the origin is mounted and written, mount read-only with
// the files as they were (btrfs: see testViews), are listed by status, and
// leave nothing behind when closed; the stored sessions never change.
func TestViews(t *testing.T) {
	for _, fs := range []string{"ext4", "xfs", "btrfs"} {
		// Small devices keep it lean: every view is hashed whole.
		mfs := matrixFilesystems[fs]
		mfs.size = min(mfs.size, 64<<20)
		if fs == "btrfs" {
			mfs.mkfs = append(mfs.mkfs, "--mixed") // btrfs under 109 MiB
		}
		t.Run(fs, func(t *testing.T) { testViews(t, mfs) })
	}
}

func testViews(t *testing.T, fs matrixFS) {
	d := newFSDev(t, fs)
	var before, ids []string
	for range 3 {
		before = append(before, hash(t, d.origin))
		ids = append(ids, d.fsSession(fs.name))
	}
	digest := storeDigest(t, d.store, ids)

	// Views of the first, middle and last session: each shows the device
	// as it was before that session.
	paths := map[string]string{}
	for k, id := range ids {
		p := d.openView(id)
		want := dm.MapperPath(session.ViewDMName(d.name, id))
		if p != want {
			t.Fatalf("open %s printed %q, want %s", id, p, want)
		}
		paths[id] = p
		if got := hash(t, p); got != before[k] {
			t.Fatalf("view of %s: %s, device before the session %s", id, got, before[k])
		}
	}
	// Opening again is a no-op that names the same device.
	if out := d.openView(ids[1]); out != paths[ids[1]] {
		t.Fatalf("second open of %s: %q", ids[1], out)
	}

	// The origin is mounted and written heavily: the views do not change,
	// while it is mounted and after.
	d.mountOrigin(fs.name)
	// 12 MiB of a 48 MiB device for ext4; the copy-on-write under the
	// views is the kernel's, whatever the file system, so the others write
	// a little only.
	big := bytes.Repeat([]byte("overwrite "), 12<<20/10)
	if fs.name != "ext4" {
		big = big[:2<<20]
	}
	for i := range 3 {
		os.Remove(filepath.Join(d.mnt, fmt.Sprintf("f%d", i)))
	}
	if err := os.WriteFile(filepath.Join(d.mnt, "big"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	unix.Sync()
	for k, id := range ids {
		if fs.name != "ext4" && k != 1 {
			continue // the kernel's copy-on-write does not depend on the file system: one view is enough
		}
		if got := hash(t, paths[id]); got != before[k] {
			t.Fatalf("view of %s while the origin is mounted and written: %s, want %s", id, got, before[k])
		}
	}

	mid := filepath.Join(filepath.Dir(d.mnt), "view-mid")
	first := filepath.Join(filepath.Dir(d.mnt), "view-first")
	os.Mkdir(mid, 0o755)
	os.Mkdir(first, 0o755)
	if fs.name == "btrfs" {
		// Linux before 6.7 (no temp-fsid) keeps one device per btrfs fsid
		// and devid: a view, a copy of the mounted file system, is refused
		// (EEXIST, "duplicate device" in the kernel log), and sessions
		// mount says so; the view device itself is exact (hashed above).
		code, out := d.views("mount", ids[1], mid)
		if code == 0 || !strings.Contains(out, "same fsid") || !strings.Contains(out, "btrfs restore "+paths[ids[1]]) {
			t.Fatalf("sessions mount of a btrfs view beside its mounted origin: exit %d: %s", code, out)
		}
		// With the origin unmounted the kernel takes the view, and then
		// refuses the origin while the view is mounted.
		d.unmountOrigin()
		if out := d.mustViews("mount", ids[1], mid); !strings.Contains(out, "cannot be mounted") {
			t.Fatalf("mount of a btrfs view gives no warning about the origin: %s", out)
		}
		if err := unix.Mount(d.origin, d.mnt, "btrfs", 0, ""); err == nil {
			unix.Unmount(d.mnt, 0)
			t.Fatal("the origin mounted beside a mounted btrfs view of it")
		} else {
			t.Logf("origin mount beside a mounted btrfs view: %v", err)
		}
	} else {
		d.unmountOrigin()
		d.mustViews("mount", ids[1], mid)
		d.mustViews("mount", ids[0], first)
		if _, err := os.Stat(filepath.Join(first, "f0")); !os.IsNotExist(err) {
			t.Fatalf("f0 in the view of %s: %v", ids[0], err)
		}
	}
	// The view of the middle session shows the files the first session
	// wrote, and not what came later.
	for i := range 3 {
		got, err := os.ReadFile(filepath.Join(mid, fmt.Sprintf("f%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, sessionFile(1, i)) {
			t.Fatalf("f%d in the view of %s: %d bytes, not what session 1 wrote (%d bytes)", i, ids[1], len(got), len(sessionFile(1, i)))
		}
	}
	if _, err := os.Stat(filepath.Join(mid, "big")); !os.IsNotExist(err) {
		t.Fatalf("big in the view of %s: %v", ids[1], err)
	}
	// A read-only view refuses writes.
	if err := os.WriteFile(filepath.Join(mid, "x"), []byte("x"), 0o644); err == nil {
		t.Fatal("wrote into a read-only view")
	}

	// status lists the open views.
	var sout, serr bytes.Buffer
	if code := run(d.ctx, []string{"--store", d.store, "--state", d.state, "status", d.name}, strings.NewReader(""), &sout, &serr); code != 0 {
		t.Fatalf("status: exit %d: %s", code, serr.String())
	}
	for _, id := range ids {
		if !strings.Contains(sout.String(), paths[id]+", before session "+id) {
			t.Fatalf("status does not list the view of %s:\n%s", id, sout.String())
		}
	}
	if !strings.Contains(sout.String(), "mounted on "+mid) {
		t.Fatalf("status does not say where the view is mounted:\n%s", sout.String())
	}

	// Close removes the mount, the device, the loop and the COW.
	for _, id := range ids {
		d.mustViews("close", id)
	}
	checkViewsGone(t, d, ids, paths, mid, first)
	if code, out := d.views("close", ids[0]); code == 0 {
		t.Errorf("closing a closed view succeeded: %s", out)
	}
	// The stored sessions are untouched.
	if got := storeDigest(t, d.store, ids); got != digest {
		t.Fatal("the stored sessions changed while views were open")
	}
	// With the views gone the origin mounts again (for btrfs: the kernel
	// forgot the view's device).
	d.mountOrigin(fs.name)
	d.unmountOrigin()
}

// checkViewsGone checks that closing the views of ids left no device, mount,
// loop device, COW file or record behind.
func checkViewsGone(t *testing.T, d *vmDev, ids []string, paths map[string]string, mountDirs ...string) {
	t.Helper()
	for _, id := range ids {
		if _, err := os.Stat(paths[id]); !os.IsNotExist(err) {
			t.Errorf("%s after close: %v", paths[id], err)
		}
		if _, err := dm.Info(session.ViewDMName(d.name, id)); err == nil {
			t.Errorf("device %s still there after close", session.ViewDMName(d.name, id))
		}
	}
	for _, dir := range mountDirs {
		var st, pst unix.Stat_t
		if err := unix.Stat(dir, &st); err != nil {
			t.Fatal(err)
		}
		if err := unix.Stat(filepath.Dir(dir), &pst); err != nil {
			t.Fatal(err)
		}
		if st.Dev != pst.Dev {
			t.Errorf("%s is still a mount point after close", dir)
		}
	}
	cows, _ := filepath.Glob(filepath.Join(d.state, "views", "*"))
	if len(cows) != 0 {
		t.Errorf("view COWs left: %v", cows)
	}
	loops, err := dm.BoundLoops()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range loops {
		if strings.Contains(l.Backing, filepath.Join(d.state, "views")) {
			t.Errorf("loop %s of a view COW left: %s", l.Path, l.Backing)
		}
	}
	vs, err := session.LoadViews(d.state)
	if err != nil || len(vs) != 0 {
		t.Errorf("views file after close: %+v, %v", vs, err)
	}
}

// TestViewsInterruptedOpenAndDeactivate: what a crash in the middle of
// `sessions open` leaves (a record still opening, a COW file, a device
// without a table) is shown by status, blocks deactivate, and is cleaned up
// by `sessions close` or by the next open; a view needs an activated device.
func TestViewsInterruptedOpenAndDeactivate(t *testing.T) {
	d := newVMDev(t)
	before := hash(t, d.origin)
	id := d.session()
	path := dm.MapperPath(session.ViewDMName(d.name, id))
	leftover := func() {
		v := session.View{ID: id, Name: d.name, DM: session.ViewDMName(d.name, id), COW: filepath.Join(d.state, "views", id+".cow"), Opening: true}
		if err := os.MkdirAll(filepath.Dir(v.COW), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(v.COW, make([]byte, 8192), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := dm.Create(v.DM, ""); err != nil {
			t.Fatal(err)
		}
		if err := session.SaveViews(d.state, []session.View{v}); err != nil {
			t.Fatal(err)
		}
	}
	leftover()
	var sout, serr bytes.Buffer
	if code := run(d.ctx, []string{"--store", d.store, "--state", d.state, "status", d.name}, strings.NewReader(""), &sout, &serr); code != 0 ||
		!strings.Contains(sout.String(), "OPENING (interrupted? dmsnap sessions close "+id) {
		t.Fatalf("status with an interrupted open: exit %d:\n%s%s", code, sout.String(), serr.String())
	}
	if err := d.m.Deactivate(d.ctx, d.name); err == nil || !strings.Contains(err.Error(), "views are open of session(s) "+id) {
		t.Fatalf("deactivate with a view open: %v", err)
	}
	d.mustViews("close", id)
	checkViewsGone(t, d, []string{id}, map[string]string{id: path})

	leftover()
	if p := d.openView(id); p != path {
		t.Fatalf("open after an interrupted open printed %q, want %s", p, path)
	}
	if got := hash(t, path); got != before {
		t.Fatalf("view after an interrupted open: %s, want %s", got, before)
	}
	d.mustViews("close", id)
	checkViewsGone(t, d, []string{id}, map[string]string{id: path})

	// A reboot takes the view device away and leaves its record and COW:
	// status says so, and open makes it again.
	d.mustViews("open", id)
	if err := (dm.Stack{Name: d.name}).RemoveView(session.ViewDMName(d.name, id)); err != nil {
		t.Fatal(err)
	}
	sout.Reset()
	if code := run(d.ctx, []string{"--store", d.store, "--state", d.state, "status", d.name}, strings.NewReader(""), &sout, &serr); code != 0 ||
		!strings.Contains(sout.String(), "GONE (a reboot removes views") {
		t.Fatalf("status with a view gone: exit %d:\n%s%s", code, sout.String(), serr.String())
	}
	d.mustViews("open", id)
	if got := hash(t, path); got != before {
		t.Fatalf("view opened again after it was gone: %s, want %s", got, before)
	}
	d.mustViews("close", id)
	checkViewsGone(t, d, []string{id}, map[string]string{id: path})

	if err := d.m.Deactivate(d.ctx, d.name); err != nil {
		t.Fatal(err)
	}
	code, out := d.views("open", id)
	if code == 0 || !strings.Contains(out, "not activated") {
		t.Fatalf("open of a deactivated device: exit %d: %s", code, out)
	}
}
