//go:build vm

package system

// These tests run inside the test guest (hack/vm/exec) against the real
// kernel: the session life cycle through the adapters, on a loop device
// holding an ext4 filesystem, with no udev.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/vmtest"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
	"golang.org/x/sys/unix"
)

// rawLoop makes an ext4 filesystem on a loop device over a sparse file and
// returns the loop device; it is detached at the end of the test.
func rawLoop(t *testing.T, size int64) string {
	t.Helper()
	file := vmtest.TempFile(t, t.TempDir(), "raw.img", size)
	l, err := dm.AttachLoop(file, dm.LoopOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	t.Cleanup(func() {
		if err := dm.DetachLoop(l.Path); err != nil {
			t.Errorf("detach %s: %v", l.Path, err)
		}
	})
	vmtest.Run(t, "mkfs.ext4", "-q", "-F", l.Path)
	return l.Path
}

func hashReader(t *testing.T, r io.Reader) string {
	t.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func currentSession(t *testing.T, m *session.Manager) *session.Session {
	t.Helper()
	reg, err := m.Registry()
	if err != nil || len(reg.Devices) != 1 {
		t.Fatalf("registry: %v", err)
	}
	s := reg.Devices[0].Current()
	if s == nil {
		t.Fatalf("no live session: %+v", reg.Devices[0])
	}
	return s
}

func snapshots(t *testing.T, name string) []session.SnapshotInfo {
	t.Helper()
	stacks, err := (Kernel{}).Stacks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stacks {
		if s.Name == name {
			return s.Snapshots
		}
	}
	t.Fatalf("no stack %s in %+v", name, stacks)
	return nil
}

func writeFile(t *testing.T, path string, size int) {
	t.Helper()
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i * 7)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	unix.Sync()
}

func TestVMSessionLifeCycle(t *testing.T) {
	vmtest.RequireDM(t)
	if _, err := dm.EnsureControl(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	raw := rawLoop(t, 64<<20)
	name := filepath.Base(raw)
	origin := dm.MapperPath(dm.Prefix + name)

	// The prober reads the same filesystem UUID blkid does.
	id, err := (session.SystemProber{}).Identify(ctx, raw)
	if err != nil {
		t.Fatal(err)
	}
	out := vmtest.Run(t, "blkid", raw)
	if m := regexp.MustCompile(`UUID="([^"]+)"`).FindStringSubmatch(out); m == nil || m[1] != id.FSUUID || id.FSType != "ext4" || id.Size != 64<<20 {
		t.Fatalf("identity %+v, blkid says %q", id, out)
	}

	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	m := NewManager(filepath.Join(dir, "state"), store)
	d, err := m.Activate(ctx, session.ActivateRequest{Device: raw, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dm.Stack{Name: name}.Teardown() })
	if d.Identity.FSUUID != id.FSUUID {
		t.Fatalf("registered identity %+v", d.Identity)
	}
	if s := snapshots(t, name); len(s) != 1 || s[0].N != 1 || s[0].State != session.SnapshotActive {
		t.Fatalf("after activate: %+v", s)
	}
	rawF, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer rawF.Close()
	before := hashReader(t, io.NewSectionReader(rawF, 0, 64<<20))

	// Session 1: mount, write, unmount.
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	if err := unix.Mount(origin, mnt, "ext4", 0, ""); err != nil {
		t.Fatalf("mount %s: %v", origin, err)
	}
	if _, err := m.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	s1 := currentSession(t, m)
	if s1.State != session.SessionOpen || s1.FSType != "ext4" {
		t.Fatalf("after mount: %+v", s1)
	}
	writeFile(t, filepath.Join(mnt, "data"), 3<<20)
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if s := currentSession(t, m); s.N != 2 || s.State != session.SessionArmed {
		t.Fatalf("after unmount: %+v", s)
	}
	if s := snapshots(t, name); len(s) != 1 || s[0].N != 2 {
		t.Fatalf("after rotation: %+v", s)
	}

	// Session 1's pre-images give back the device as it was before it,
	// byte for byte.
	sess, err := snapstore.Open(s1.Dir)
	if err != nil {
		t.Fatalf("open converted session 1: %v", err)
	}
	defer sess.Close()
	if sess.Meta.TotalBlocksSaved == 0 {
		t.Fatal("session 1 saved no blocks")
	}
	rec, err := snapstore.NewReconstructor(io.NewSectionReader(rawF, 0, 64<<20), 64<<20, sess)
	if err != nil {
		t.Fatal(err)
	}
	if got := hashReader(t, io.NewSectionReader(rec, 0, 64<<20)); got != before {
		t.Fatalf("pre-session image %s, device before the session %s", got, before)
	}

	// Raw writes to the unmounted origin land in the armed session 2. Then
	// a "reboot": the stack goes away; attach brings it back with session
	// 2's COW and its exceptions.
	of, err := os.OpenFile(origin, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := of.WriteAt(make([]byte, 1<<20), 32<<20); err != nil {
		t.Fatal(err)
	}
	of.Sync()
	of.Close()
	used := snapshots(t, name)[0].Allocated
	if err := (dm.Stack{Name: name}).Teardown(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Attach(ctx, raw, session.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	s := snapshots(t, name)
	if len(s) != 1 || s[0].N != 2 || s[0].Allocated != used {
		t.Fatalf("re-attached snapshot %+v, want session 2 with %d sectors allocated as before", s, used)
	}
	if rep, err := m.Reconcile(ctx); err != nil || len(rep.Done) != 0 {
		t.Fatalf("reconcile after attach: %v %v", rep.Done, err)
	}

	// Deactivate: everything down, every session finished.
	if err := m.Deactivate(ctx, name); err != nil {
		t.Fatal(err)
	}
	items, _ := dm.List()
	if slices.ContainsFunc(items, func(it dm.ListItem) bool { return strings.HasPrefix(it.Name, dm.Prefix) }) {
		t.Fatalf("devices left: %+v", items)
	}
	list, err := snapstore.ListSessions(store)
	if err != nil || len(list) != 2 {
		t.Fatalf("sessions %+v %v", list, err)
	}
	for _, s := range list {
		if s.Status != snapstore.StatusComplete {
			t.Errorf("session %s is %s (%v)", s.ID, s.Status, s.Err)
		}
	}
}

// TestVMProberMatchesBlkid checks the superblock prober against blkid on
// real filesystems.
func TestVMProberMatchesBlkid(t *testing.T) {
	vmtest.RequireDM(t)
	cases := []struct {
		typ  string
		mkfs []string
		size int64
	}{
		{"ext2", []string{"mkfs.ext2", "-q", "-F"}, 32 << 20},
		{"ext4", []string{"mkfs.ext4", "-q", "-F"}, 32 << 20},
		{"xfs", []string{"mkfs.xfs", "-q", "-f"}, 320 << 20},
		{"btrfs", []string{"mkfs.btrfs", "-q", "-f"}, 128 << 20},
	}
	uuidRE := regexp.MustCompile(`UUID="([^"]+)"`)
	for _, c := range cases {
		t.Run(c.typ, func(t *testing.T) {
			file := vmtest.TempFile(t, t.TempDir(), "fs.img", c.size)
			l, err := dm.AttachLoop(file, dm.LoopOptions{AutoClear: true})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			vmtest.Run(t, c.mkfs[0], append(c.mkfs[1:], l.Path)...)
			id, err := (session.SystemProber{}).Identify(context.Background(), l.Path)
			if err != nil {
				t.Fatal(err)
			}
			out := vmtest.Run(t, "blkid", l.Path)
			m := uuidRE.FindStringSubmatch(out)
			if m == nil || id.FSUUID != m[1] || id.FSType != c.typ || id.Size != c.size {
				t.Fatalf("prober %+v, blkid %q", id, out)
			}
		})
	}
}
