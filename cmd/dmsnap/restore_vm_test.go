//go:build vm

package main

// These tests run inside the test guest (hack/vm/exec) against the real
// kernel. Sessions are made with session.Manager (mount, write, unmount,
// reconcile), then `dmsnap restore` runs in-process through run(), exactly
// as the binary would. The oracle is the SHA-256 of the whole device.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/vmtest"
	"github.com/dmsnap/dmsnap/rollback"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/session/system"
	"github.com/dmsnap/dmsnap/snapstore"
)

const vmDevSize = 48 << 20

// vmDev is an activated ext4 loop device with its store and state under /tmp.
type vmDev struct {
	t      *testing.T
	ctx    context.Context
	raw    string // /dev/loopN
	file   string // its backing file
	name   string
	origin string // /dev/mapper/dmsnap-NAME
	store  string
	state  string
	mnt    string
	m      *session.Manager
	seq    int
}

func newVMDev(t *testing.T) *vmDev {
	t.Helper()
	vmtest.RequireDM(t)
	if _, err := dm.EnsureControl(); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("/tmp", "restore-vm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	file := vmtest.TempFile(t, dir, "raw.img", vmDevSize)
	l, err := dm.AttachLoop(file, dm.LoopOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	d := &vmDev{t: t, ctx: context.Background(), raw: l.Path, file: file, name: filepath.Base(l.Path),
		store: filepath.Join(vmtest.StoreFS(t, dir, storeFS(), 2<<30), "store"), state: filepath.Join(dir, "state"), mnt: filepath.Join(dir, "mnt")}
	d.origin = dm.MapperPath(dm.Prefix + d.name)
	t.Cleanup(func() {
		unix.Unmount(d.mnt, 0)
		dm.Stack{Name: d.name}.Teardown()
		if err := dm.DetachLoop(l.Path); err != nil {
			t.Errorf("detach %s: %v", l.Path, err)
		}
	})
	vmtest.Run(t, "mkfs.ext4", "-q", "-F", l.Path)
	os.Mkdir(d.mnt, 0o755)
	d.m = system.NewManager(d.state, d.store)
	if _, err := d.m.Activate(d.ctx, session.ActivateRequest{Device: l.Path, Store: d.store, Prealloc: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	return d
}

// hash is the SHA-256 of the whole device at path, read past any stale
// page cache (writes to -real bypass dmsnap-NAME's cache, and the other way
// round).
func hash(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if fi, _ := f.Stat(); fi.Mode()&os.ModeDevice != 0 {
		if err := unix.IoctlSetInt(int(f.Fd()), unix.BLKFLSBUF, 0); err != nil {
			t.Fatalf("BLKFLSBUF %s: %v", path, err)
		}
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// session runs one mount session with some file writes and returns its ID.
func (d *vmDev) session() string {
	t := d.t
	t.Helper()
	d.seq++
	if err := unix.Mount(d.origin, d.mnt, "ext4", 0, ""); err != nil {
		t.Fatalf("mount %s: %v", d.origin, err)
	}
	if _, err := d.m.Reconcile(d.ctx); err != nil {
		t.Fatal(err)
	}
	reg, err := d.m.Registry()
	if err != nil {
		t.Fatal(err)
	}
	cur := reg.Device(d.name).Current()
	if cur == nil || cur.State != session.SessionOpen {
		t.Fatalf("after mount: %+v", cur)
	}
	for i := 0; i < 3; i++ {
		b := bytes.Repeat([]byte(fmt.Sprintf("session %d file %d ", d.seq, i)), (256<<10)*(d.seq+i)/20)
		if err := os.WriteFile(filepath.Join(d.mnt, fmt.Sprintf("f%d", i)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Remove(filepath.Join(d.mnt, "lost+found"))
	unix.Sync()
	if err := unix.Unmount(d.mnt, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.m.Reconcile(d.ctx); err != nil {
		t.Fatal(err)
	}
	info := snapstore.Inspect(cur.Dir)
	if info.Status != snapstore.StatusComplete {
		// The mount renamed the directory: find it by the registry's name.
		list, _ := snapstore.ListSessions(d.store)
		t.Fatalf("session %s is %s (%v); store: %+v", cur.Dir, info.Status, info.Err, list)
	}
	return info.ID
}

// restore runs `dmsnap restore` in-process and returns its exit code and
// output.
func (d *vmDev) restore(args ...string) (int, string) {
	d.t.Helper()
	code, out, errOut := d.restoreSplit(args...)
	return code, out + errOut
}

// restoreSplit is restore with stdout (a --json envelope) and stderr apart.
func (d *vmDev) restoreSplit(args ...string) (code int, stdout, stderr string) {
	d.t.Helper()
	var out, errb bytes.Buffer
	all := append([]string{"--store", d.store, "--state", d.state, "restore"}, args...)
	code = run(d.ctx, all, strings.NewReader(""), &out, &errb)
	d.t.Logf("dmsnap %s: exit %d\n%s%s", strings.Join(all, " "), code, out.String(), errb.String())
	return code, out.String(), errb.String()
}

var undoRE = regexp.MustCompile(`To undo: dmsnap restore \S+ --session (\S+)`)

func (d *vmDev) mustRestore(args ...string) (undo string) {
	d.t.Helper()
	code, out := d.restore(args...)
	if code != 0 {
		d.t.Fatalf("restore %v: exit %d: %s", args, code, out)
	}
	if m := undoRE.FindStringSubmatch(out); m != nil {
		return m[1]
	}
	return ""
}

func TestVMRestoreOneSessionAndUndo(t *testing.T) {
	d := newVMDev(t)
	h0 := hash(t, d.origin)
	s1 := d.session()
	h1 := hash(t, d.origin)
	if h1 == h0 {
		t.Fatal("the session changed nothing")
	}
	undo := d.mustRestore(d.name, "--session", s1, "--yes")
	if got := hash(t, d.origin); got != h0 {
		t.Fatalf("after restore to %s: %s, before the session %s", s1, got, h0)
	}
	if got := hash(t, d.raw); got != h0 {
		t.Fatalf("raw device after restore: %s, want %s", got, h0)
	}
	if undo == "" {
		t.Fatal("the restore named no session to undo it")
	}
	// The restore is undone by restoring the session that recorded it.
	d.mustRestore(d.name, "--session", undo, "--yes")
	if got := hash(t, d.origin); got != h1 {
		t.Fatalf("after undo: %s, want %s (after the session)", got, h1)
	}
	// The filesystem is whole: e2fsck finds nothing to fix.
	vmtest.Run(t, "e2fsck", "-fn", d.origin)
}

func TestVMRestoreThreeSessions(t *testing.T) {
	d := newVMDev(t)
	var ids, hashes []string
	hashes = append(hashes, hash(t, d.origin))
	for i := 0; i < 3; i++ {
		ids = append(ids, d.session())
		hashes = append(hashes, hash(t, d.origin))
	}
	// To the last, then the second, then the first: each plan takes in the
	// later sessions, the restores' own ones included.
	for _, i := range []int{2, 1, 0} {
		d.mustRestore(d.name, "--session", ids[i], "--yes", "--json")
		if got := hash(t, d.origin); got != hashes[i] {
			t.Fatalf("after restore to %s (session %d): %s, want %s", ids[i], i+1, got, hashes[i])
		}
	}
	// --no-undo writes -real directly: one more session, restored to the
	// state before it (that is, before session 1 again).
	d.session()
	d.mustRestore(d.name, "--session", "latest", "--yes", "--no-undo")
	if got := hash(t, d.origin); got != hashes[0] {
		t.Fatalf("after --no-undo restore of the latest session: %s, want %s", got, hashes[0])
	}
}

func TestVMRestoreToFile(t *testing.T) {
	d := newVMDev(t)
	h0 := hash(t, d.origin)
	s1 := d.session()
	// Raw writes land in the armed session: --to must undo them too.
	of, err := os.OpenFile(d.origin, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := of.WriteAt(bytes.Repeat([]byte{0x5a}, 1<<20), 20<<20); err != nil {
		t.Fatal(err)
	}
	of.Sync()
	of.Close()
	h1 := hash(t, d.origin)

	// A dry run of an activated device lists the closed sessions and says
	// the armed one closes first; it writes nothing.
	code, out, _ := d.restoreSplit(d.name, "--session", s1, "--dry-run", "--json")
	var dry rollback.Result
	if code != 0 || decodeResult(out, &dry) != nil || !dry.ArmedCloses || !dry.DryRun ||
		len(dry.Sessions) != 1 || dry.Sessions[0] != s1 || dry.Summary.Bytes == 0 {
		t.Fatalf("dry run: exit %d: %s", code, out)
	}
	if got := hash(t, d.origin); got != h1 {
		t.Fatal("the dry run changed the device")
	}

	img := filepath.Join(filepath.Dir(d.store), "restored.img")
	d.mustRestore(d.name, "--session", s1, "--to", img)
	if got := vmtest.SHA256(t, img); got != h0 {
		t.Fatalf("--to image %s, device before the session %s", got, h0)
	}
	if got := hash(t, d.origin); got != h1 {
		t.Fatalf("device changed by --to: %s, was %s", got, h1)
	}
}

func TestVMRestoreRefusals(t *testing.T) {
	d := newVMDev(t)
	h0 := hash(t, d.origin)
	s1 := d.session()
	d.session()

	// Mounted: exit 4, nothing written.
	if err := unix.Mount(d.origin, d.mnt, "ext4", unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	h := hash(t, d.origin)
	if code, out := d.restore(d.name, "--session", s1, "--yes"); code != exitBusy || !strings.Contains(out, "mounted") {
		t.Fatalf("restore of a mounted device: exit %d: %s", code, out)
	}
	if got := hash(t, d.origin); got != h {
		t.Fatal("the refused restore changed the mounted device")
	}
	if err := unix.Unmount(d.mnt, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.m.Reconcile(d.ctx); err != nil {
		t.Fatal(err)
	}

	// One flipped bit in blocks.dat: exit 1 naming the session and the
	// chunk, nothing written.
	dir := filepath.Join(d.store, s1)
	mf, err := os.Open(filepath.Join(dir, snapstore.MapFile))
	if err != nil {
		t.Fatal(err)
	}
	recs, err := snapstore.ReadMap(mf, "blocks.map")
	mf.Close()
	if err != nil || len(recs) < 2 {
		t.Fatalf("map of %s: %d records, %v", s1, len(recs), err)
	}
	bad := recs[len(recs)/2]
	flip(t, filepath.Join(dir, snapstore.DataFile), int64(bad.Offset)+17)
	h = hash(t, d.origin)
	code, out := d.restore(d.name, "--session", s1, "--yes")
	if code != exitFailure || !strings.Contains(out, s1) || !strings.Contains(out, fmt.Sprintf("sector %d", bad.Sector)) {
		t.Fatalf("restore over a flipped bit: exit %d: %s", code, out)
	}
	if got := hash(t, d.origin); got != h {
		t.Fatal("the refused restore changed the device")
	}
	flip(t, filepath.Join(dir, snapstore.DataFile), int64(bad.Offset)+17)

	// Not activated any more, then grown: another size is refused.
	if err := d.m.Deactivate(d.ctx, d.name); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(d.file, vmDevSize+(4<<20)); err != nil {
		t.Fatal(err)
	}
	if _, err := dm.SetLoopCapacity(d.raw); err != nil {
		t.Fatal(err)
	}
	h = hash(t, d.raw)
	if code, out := d.restore(d.raw, "--session", s1, "--yes"); code != exitFailure || !strings.Contains(out, "size") {
		t.Fatalf("restore onto a device of another size: exit %d: %s", code, out)
	}
	if got := hash(t, d.raw); got != h {
		t.Fatal("the refused restore changed the device of another size")
	}

	// Back to its size, a device that is not activated is restored
	// directly and says so.
	if err := os.Truncate(d.file, vmDevSize); err != nil {
		t.Fatal(err)
	}
	if _, err := dm.SetLoopCapacity(d.raw); err != nil {
		t.Fatal(err)
	}
	code, out = d.restore(d.raw, "--session", s1, "--yes")
	if code != 0 || !strings.Contains(out, "not activated") {
		t.Fatalf("direct restore: exit %d: %s", code, out)
	}
	if got := hash(t, d.raw); got != h0 {
		t.Fatalf("direct restore: %s, want %s", got, h0)
	}
}

func flip(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x04
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}
