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
	"github.com/dmsnap/dmsnap/session"
)

// views runs `dmsnap sessions SUB ARGS` in-process.
func (d *vmDev) views(sub string, args ...string) (int, string) {
	d.t.Helper()
	var out, errb bytes.Buffer
	all := append([]string{"--store", d.store, "--state", d.state, "sessions", sub}, args...)
	code := run(d.ctx, all, strings.NewReader(""), &out, &errb)
	d.t.Logf("dmsnap %s: exit %d\n%s%s", strings.Join(all, " "), code, out.String(), errb.String())
	return code, out.String() + errb.String()
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

func TestViewsOfThreeSessions(t *testing.T) {
	d := newVMDev(t)
	var before, ids []string
	for range 3 {
		before = append(before, hash(t, d.origin))
		ids = append(ids, d.session())
	}
	after := hash(t, d.origin)
	digest := storeDigest(t, d.store, ids)

	// Open a view at the first, middle and last session: each shows the
	// device as it was before that session.
	paths := map[string]string{}
	for k, id := range ids {
		out := d.mustViews("open", id)
		p := strings.TrimSpace(out)
		want := dm.MapperPath(viewName(d.name, id))
		if p != want {
			t.Fatalf("open %s printed %q, want %s", id, p, want)
		}
		paths[id] = p
		if got := hash(t, p); got != before[k] {
			t.Fatalf("view of %s: %s, device before the session %s", id, got, before[k])
		}
		// Opening again is a no-op that names the same device.
		if out := d.mustViews("open", id); strings.TrimSpace(out) != p {
			t.Fatalf("second open of %s: %q", id, out)
		}
	}

	// The origin is mounted and written heavily while the views are open:
	// they do not change.
	if err := unix.Mount(d.origin, d.mnt, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("overwrite "), 2<<20) // 20 MiB
	for i := range 3 {
		os.Remove(filepath.Join(d.mnt, fmt.Sprintf("f%d", i)))
	}
	if err := os.WriteFile(filepath.Join(d.mnt, "big"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	unix.Sync()
	if err := unix.Unmount(d.mnt, 0); err != nil {
		t.Fatal(err)
	}
	if got := hash(t, d.origin); got == after {
		t.Fatal("the writes changed nothing")
	}
	for k, id := range ids {
		if got := hash(t, paths[id]); got != before[k] {
			t.Fatalf("view of %s after writes to the origin: %s, want %s", id, got, before[k])
		}
	}

	// Mounted, the view of the middle session shows the files the first
	// session wrote; the view of the first shows the fresh file system.
	mid := filepath.Join(filepath.Dir(d.mnt), "view-mid")
	first := filepath.Join(filepath.Dir(d.mnt), "view-first")
	os.Mkdir(mid, 0o755)
	os.Mkdir(first, 0o755)
	d.mustViews("mount", ids[1], mid)
	d.mustViews("mount", ids[0], first)
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
	if _, err := os.Stat(filepath.Join(first, "lost+found")); err != nil {
		t.Fatalf("lost+found in the view of %s: %v", ids[0], err)
	}
	if _, err := os.Stat(filepath.Join(first, "f0")); !os.IsNotExist(err) {
		t.Fatalf("f0 in the view of %s: %v", ids[0], err)
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
	for _, id := range ids {
		if _, err := os.Stat(paths[id]); !os.IsNotExist(err) {
			t.Errorf("%s after close: %v", paths[id], err)
		}
		if _, err := dm.Info(viewName(d.name, id)); err == nil {
			t.Errorf("device %s still there after close", viewName(d.name, id))
		}
	}
	for _, dir := range []string{mid, first} {
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
	if code, out := d.views("close", ids[0]); code == 0 {
		t.Errorf("closing a closed view succeeded: %s", out)
	}
	// The stored sessions are untouched.
	if got := storeDigest(t, d.store, ids); got != digest {
		t.Fatal("the stored sessions changed while views were open")
	}
}

func TestViewsNeedActivatedDevice(t *testing.T) {
	d := newVMDev(t)
	id := d.session()
	if err := d.m.Deactivate(d.ctx, d.name); err != nil {
		t.Fatal(err)
	}
	code, out := d.views("open", id)
	if code == 0 || !strings.Contains(out, "not activated") {
		t.Fatalf("open of a deactivated device: exit %d: %s", code, out)
	}
}
