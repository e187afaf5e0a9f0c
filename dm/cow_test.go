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
	cow, err := s.AttachCOW(3, path)
	if err != nil {
		t.Fatal(err)
	}
	if cow.Name != "dmsnap-sdb1-cow3" || cow.Path() != "/dev/mapper/dmsnap-sdb1-cow3" || cow.Bytes != 64<<20 || cow.FastBytes != 16<<20 || cow.Slow != "" || cow.Segments != 2 {
		t.Fatalf("COW %+v", cow)
	}
	wantLog(t, f, "attach /dev/loop0 "+path, "map "+path, "attach /dev/loop1 "+storeDev,
		"create dmsnap-sdb1-cow3", "load dmsnap-sdb1-cow3 linear", "resume dmsnap-sdb1-cow3")
	if !f.Pinned(path) {
		t.Error("the mapped file is not pinned")
	}
	tbl, _ := f.Table(cow.Name)
	if got := []string{tbl[0].String(), tbl[1].String()}; len(tbl) != 2 ||
		got[0] != "0 32768 linear 7:1 0" || got[1] != "32768 98304 linear 7:0 32768" {
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
	cow, err := s.AttachCOW(1, path)
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
	cow, err = s2.AttachCOW(1, path)
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
	if _, err := s.AttachCOW(2, path); err != nil {
		t.Fatal(err)
	}
	if !f.Pinned(path) {
		t.Fatal("not pinned")
	}
	cow, err := s.AttachCOW(2, path)
	if err != nil {
		t.Fatalf("over a leftover: %v", err)
	}
	if cow.FastBytes != 4<<20 || !f.Pinned(path) {
		t.Fatalf("COW %+v", cow)
	}
	if err := s.ReattachSnapshot(2, cow.Path(), 8); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AttachCOW(2, path); !errors.Is(err, dm.ErrBusy) {
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
				target = path
			}
			f.FailNext(st.op, target, unix.EIO)
			if _, err := s.AttachCOW(1, path); !errors.Is(err, unix.EIO) {
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
		cow, err := s.AttachCOW(n, cowFile(t, 8<<20))
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
