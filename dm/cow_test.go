package dm_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/dm/dmtest"
	"github.com/dmsnap/dmsnap/internal/filemap"
	"golang.org/x/sys/unix"
)

const storeDev = "/dev/vdc"

// cowFile makes a sparse file of size bytes, as a session's cow.img.
func cowFile(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cow.img")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}

// mapTo makes the fake's MapFile put the file's first n bytes at byte
// 1 GiB of the store device.
func mapTo(f *dmtest.Fake, n uint64) {
	f.SetFileMap(func(path string) (dm.FileMap, error) {
		return dm.FileMap{Device: storeDev, Dev: dm.Dev{Major: 8, Minor: 32},
			Extents: []filemap.Extent{{Logical: 0, Physical: 1 << 30, Length: n, Flags: filemap.FlagLast}}}, nil
	})
}

// builtWithStore is a built stack beside a store device.
func builtWithStore(t *testing.T) (*dmtest.Fake, dm.Stack) {
	t.Helper()
	f, s, _ := newStack(t)
	f.AddBlockDevice(storeDev, 8<<21)
	if err := s.Build(); err != nil {
		t.Fatal(err)
	}
	return f, s
}

func TestAttachCOWFast(t *testing.T) {
	f, s := builtWithStore(t)
	path := cowFile(t, 64<<20)
	mapTo(f, 16<<20)
	f.ResetLog()
	cow, err := s.AttachCOW(3, path, tailOf(path))
	if err != nil {
		t.Fatal(err)
	}
	if cow.Name != "dmsnap-sdb1-cow3" || cow.Path() != "/dev/mapper/dmsnap-sdb1-cow3" || cow.Bytes != 64<<20 || cow.FastBytes != 16<<20 || cow.Slow != "" || cow.Segments != 2 {
		t.Fatalf("COW %+v", cow)
	}
	wantLog(t, f, "map "+path, "attach /dev/loop0 "+storeDev, "attach /dev/loop1 "+tailOf(path),
		"create dmsnap-sdb1-cow3", "load dmsnap-sdb1-cow3 linear", "resume dmsnap-sdb1-cow3")
	if !f.Pinned(path) {
		t.Error("the mapped file is not pinned")
	}
	tbl, _ := f.Table(cow.Name)
	if got := []string{tbl[0].String(), tbl[1].String()}; len(tbl) != 2 ||
		got[0] != "0 32768 linear 7:0 0" || got[1] != "32768 98304 linear 7:1 32768" {
		t.Fatalf("table %q", tbl)
	}
	if back, err := s.COWInfo(3); err != nil || back.Bytes != cow.Bytes || back.FastBytes != cow.FastBytes || back.Segments != 2 {
		t.Fatalf("COWInfo = %+v, %v; want %+v", back, err, cow)
	}
	// The loop devices belong to the table now: they go with it.
	if f.LoopCount() != 2 {
		t.Fatalf("%d loop devices", f.LoopCount())
	}
	// A snapshot over it, and RemoveSnapshot takes both away.
	if err := s.ReattachSnapshot(3, cow.Path(), 8); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveCOW(3); !errors.Is(err, dm.ErrBusy) {
		t.Fatalf("RemoveCOW under a snapshot: %v, want ErrBusy", err)
	}
	if err := s.RemoveSnapshot(3); err != nil {
		t.Fatal(err)
	}
	wantDevices(t, f, "dmsnap-sdb1", "dmsnap-sdb1-real")
	if f.LoopCount() != 0 {
		t.Errorf("%d loop devices left", f.LoopCount())
	}
}

// A store that cannot be mapped: the whole file on its loop device, the
// reason said, the file left unpinned.
func TestAttachCOWSlow(t *testing.T) {
	f, s, _ := newStack(t)
	if err := s.Build(); err != nil {
		t.Fatal(err)
	}
	path := cowFile(t, 8<<20)
	cow, err := s.AttachCOW(1, path, tailOf(path))
	if err != nil {
		t.Fatal(err)
	}
	if cow.FastBytes != 0 || !strings.Contains(cow.Slow, "maps no file") || f.Pinned(path) {
		t.Fatalf("COW %+v, pinned %v", cow, f.Pinned(path))
	}
	tbl, _ := f.Table(cow.Name)
	if len(tbl) != 1 || tbl[0].String() != "0 16384 linear 7:0 0" {
		t.Fatalf("table %q", tbl)
	}
	// The store's device refuses a loop device: slow too, and unpinned.
	f2, s2 := builtWithStore(t)
	mapTo(f2, 4<<20)
	f2.FailNext("attach", storeDev, unix.EBUSY)
	cow, err = s2.AttachCOW(1, path, tailOf(path))
	if err != nil {
		t.Fatal(err)
	}
	if cow.FastBytes != 0 || !strings.Contains(cow.Slow, "busy") || f2.Pinned(path) {
		t.Fatalf("COW %+v, pinned %v", cow, f2.Pinned(path))
	}
}

// A leftover COW device nothing uses is replaced; one under a snapshot is
// refused. A pinned file (mapped before a reboot) is unpinned for its loop
// device and pinned again.
func TestAttachCOWLeftovers(t *testing.T) {
	f, s := builtWithStore(t)
	path := cowFile(t, 8<<20)
	mapTo(f, 4<<20)
	if _, err := s.AttachCOW(2, path, tailOf(path)); err != nil {
		t.Fatal(err)
	}
	if !f.Pinned(path) {
		t.Fatal("not pinned")
	}
	cow, err := s.AttachCOW(2, path, tailOf(path))
	if err != nil {
		t.Fatalf("over a leftover: %v", err)
	}
	if cow.FastBytes != 4<<20 || !f.Pinned(path) {
		t.Fatalf("COW %+v", cow)
	}
	if err := s.ReattachSnapshot(2, cow.Path(), 8); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AttachCOW(2, path, tailOf(path)); !errors.Is(err, dm.ErrBusy) {
		t.Fatalf("over a COW device in use: %v, want ErrBusy", err)
	}
	wantDevices(t, f, "dmsnap-sdb1", "dmsnap-sdb1-cow2", "dmsnap-sdb1-real", "dmsnap-sdb1-snap2")
}

func TestAttachCOWUndoesEachStep(t *testing.T) {
	for _, st := range []struct{ op, target string }{
		{"attach", ""}, {"create", "dmsnap-sdb1-cow1"}, {"load", "dmsnap-sdb1-cow1"}, {"resume", "dmsnap-sdb1-cow1"},
	} {
		t.Run(st.op, func(t *testing.T) {
			f, s := builtWithStore(t)
			path := cowFile(t, 8<<20)
			mapTo(f, 4<<20)
			target := st.target
			if target == "" {
				target = tailOf(path)
			}
			f.FailNext(st.op, target, unix.EIO)
			if _, err := s.AttachCOW(1, path, tailOf(path)); !errors.Is(err, unix.EIO) {
				t.Fatalf("err = %v, want EIO", err)
			}
			wantDevices(t, f, "dmsnap-sdb1", "dmsnap-sdb1-real")
			if f.LoopCount() != 0 {
				t.Errorf("%d loop devices left", f.LoopCount())
			}
			if f.Pinned(path) {
				t.Error("the file is left pinned")
			}
		})
	}
}

// Teardown and Repair know the COW devices: teardown removes them after the
// snapshots, repair removes one whose snapshot is not there.
func TestCOWTeardownAndRepair(t *testing.T) {
	f, s, _ := newStack(t)
	if err := s.Build(); err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= 2; n++ {
		p := cowFile(t, 8<<20)
		cow, err := s.AttachCOW(n, p, tailOf(p))
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			if err := s.ReattachSnapshot(n, cow.Path(), 8); err != nil {
				t.Fatal(err)
			}
		}
	}
	// cow2 has no snapshot: a crash between the two.
	f.ResetLog()
	if err := s.Repair(); err != nil {
		t.Fatal(err)
	}
	wantLog(t, f, "remove dmsnap-sdb1-cow2")
	f.ResetLog()
	if err := s.Teardown(); err != nil {
		t.Fatal(err)
	}
	wantLog(t, f, "remove dmsnap-sdb1", "remove dmsnap-sdb1-snap1", "remove dmsnap-sdb1-cow1", "remove dmsnap-sdb1-real")
	if f.LoopCount() != 0 {
		t.Errorf("%d loop devices left", f.LoopCount())
	}
}

// tailOf is the tail file beside a COW file, as sessions have it.
func tailOf(cowPath string) string { return filepath.Join(filepath.Dir(cowPath), "cow.tail") }

// The tail: cow.img's data outside the mapped part is copied into cow.tail
// before the COW device is made, so the device shows it where it was; a
// tail left by an earlier attach is folded into cow.img first.
func TestAttachCOWTail(t *testing.T) {
	f, s := builtWithStore(t)
	path := cowFile(t, 8<<20)
	mapTo(f, 4<<20)
	// Data at 6 MiB of cow.img, outside the 4 MiB that are mapped; and an
	// old tail with data at 5 MiB.
	pre := []byte("pre-image written through the file")
	old := []byte("pre-image written through the old tail")
	writeFileAt(t, path, 6<<20, pre)
	tail := tailOf(path)
	if err := os.WriteFile(tail, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(tail, 8<<20)
	writeFileAt(t, tail, 5<<20, old)
	cow, err := s.AttachCOW(1, path, tail)
	if err != nil {
		t.Fatal(err)
	}
	if cow.FastBytes != 4<<20 {
		t.Fatalf("COW %+v", cow)
	}
	// The old tail is in cow.img now; the new tail holds both runs, where
	// the COW device's tail segments read them.
	if got := readFileAt(t, path, 5<<20, len(old)); string(got) != string(old) {
		t.Fatalf("cow.img at 5 MiB: %q, want the old tail's data folded in", got)
	}
	for off, want := range map[int64][]byte{5 << 20: old, 6 << 20: pre} {
		if got := readFileAt(t, tail, off, len(want)); string(got) != string(want) {
			t.Fatalf("cow.tail at %d: %q, want %q", off, got, want)
		}
	}
	if fi, err := os.Stat(tail); err != nil || fi.Size() != 8<<20 {
		t.Fatalf("cow.tail: %v %v", fi, err)
	}
}

func writeFileAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func readFileAt(t *testing.T, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}
