package storedev

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/internal/devnum"
)

// fakeHost is a Host over plain files: each "device" is a file, a wrap
// and a mount are entries in maps.
type fakeHost struct {
	devs    map[string]devnum.Dev // path → number
	busy    map[string]string
	wraps   map[string]devnum.Dev // store UUID → the device it maps
	mounts  map[string]devnum.Dev // dir → device
	mkfsErr error
	calls   []string
}

var wrapDev = devnum.Dev{Major: 253, Minor: 9}

func newFake(t *testing.T, size int64) (*fakeHost, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return &fakeHost{devs: map[string]devnum.Dev{p: {Major: 8, Minor: 17}}, busy: map[string]string{},
		wraps: map[string]devnum.Dev{}, mounts: map[string]devnum.Dev{}}, p
}

func (h *fakeHost) Inspect(path string) (Device, error) {
	if strings.HasPrefix(path, "/dev/mapper/") {
		return Device{Path: path, Dev: wrapDev}, nil
	}
	dev, ok := h.devs[path]
	if !ok {
		return Device{}, os.ErrNotExist
	}
	fi, err := os.Stat(path)
	if err != nil {
		return Device{}, err
	}
	return Device{Path: path, Dev: dev, Size: fi.Size()}, nil
}

func (h *fakeHost) Busy(path string) (string, error) { return h.busy[path], nil }

func (h *fakeHost) Open(path string, write bool) (DeviceFile, error) {
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
	}
	return os.OpenFile(path, flag, 0)
}

func (h *fakeHost) Wrapped(uuid string) (string, devnum.Dev, bool, error) {
	below, ok := h.wraps[uuid]
	return "/dev/mapper/" + MapperName(uuid), below, ok, nil
}

func (h *fakeHost) Wrap(hd Header, dev devnum.Dev) (string, error) {
	h.calls = append(h.calls, "wrap")
	if _, ok := h.wraps[hd.UUIDString()]; ok {
		return "", errors.New("exists")
	}
	h.wraps[hd.UUIDString()] = dev
	return "/dev/mapper/" + MapperName(hd.UUIDString()), nil
}

func (h *fakeHost) Unwrap(uuid string) error {
	h.calls = append(h.calls, "unwrap")
	delete(h.wraps, uuid)
	return nil
}

func (h *fakeHost) Mkfs(_ context.Context, fs, path string) error {
	h.calls = append(h.calls, "mkfs "+fs)
	return h.mkfsErr
}

func (h *fakeHost) Mount(path, dir, fs string) error {
	h.calls = append(h.calls, "mount "+dir)
	h.mounts[dir] = wrapDev
	return nil
}

func (h *fakeHost) MountedAt(dir string) (devnum.Dev, bool, error) {
	d, ok := h.mounts[dir]
	return d, ok, nil
}

func (h *fakeHost) Find(dev devnum.Dev) string {
	for p, d := range h.devs {
		if d == dev {
			return p
		}
	}
	return ""
}

func readAll(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const diskSize = 80 << 20

func TestCreateThenUp(t *testing.T) {
	h, disk := newFake(t, diskSize)
	store := filepath.Join(t.TempDir(), "snapshot")
	rs := &Records{Version: recordsVersion}
	var steps []string
	rec, err := Create(context.Background(), h, rs, CreateRequest{Device: disk, Path: store, FS: "xfs", Now: time.Unix(1700000000, 0),
		Step: func(s string) { steps = append(steps, s) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(steps) != 3 || !strings.Contains(steps[1], "making the xfs filesystem") || !strings.HasPrefix(steps[2], "mounting") {
		t.Fatalf("steps %q", steps)
	}
	hd, err := ParseHeader(readAll(t, disk))
	if err != nil {
		t.Fatal(err)
	}
	if hd.UUIDString() != rec.UUID || hd.DataOffset != DataOffset || hd.DataLength != diskSize-DataOffset || hd.FS != "xfs" || hd.Created != 1700000000 {
		t.Fatalf("header %+v, record %+v", hd, rec)
	}
	if len(rs.Stores) != 1 || rs.Stores[0] != rec || rec.Path != store || rec.Dev != (devnum.Dev{Major: 8, Minor: 17}) {
		t.Fatalf("records %+v", rs.Stores)
	}
	if got := strings.Join(h.calls, ","); got != "wrap,mkfs xfs,mount "+store {
		t.Fatalf("calls %s", got)
	}
	if h.wraps[rec.UUID] != rec.Dev || h.mounts[store] != wrapDev {
		t.Fatalf("wraps %v mounts %v", h.wraps, h.mounts)
	}
	// Saved and read back.
	state := t.TempDir()
	if err := rs.Save(state); err != nil {
		t.Fatal(err)
	}
	rs, err = LoadRecords(state)
	if err != nil || len(rs.Stores) != 1 || rs.Stores[0] != rec {
		t.Fatalf("loaded %+v, %v", rs, err)
	}

	// A reboot: nothing is up. The device comes back under another number.
	h.wraps, h.mounts, h.calls = map[string]devnum.Dev{}, map[string]devnum.Dev{}, nil
	h.devs[disk] = devnum.Dev{Major: 8, Minor: 33}
	got, changed, err := Up(h, rs, disk)
	if err != nil {
		t.Fatal(err)
	}
	if !changed || got.Dev != (devnum.Dev{Major: 8, Minor: 33}) || rs.Stores[0].Dev != got.Dev {
		t.Fatalf("up: %+v changed %v; records %+v", got, changed, rs.Stores)
	}
	if c := strings.Join(h.calls, ","); c != "wrap,mount "+store {
		t.Fatalf("calls %s", c)
	}
	// Again: all is up, nothing to do.
	h.calls = nil
	if _, changed, err := Up(h, rs, disk); err != nil || changed || len(h.calls) != 0 {
		t.Fatalf("second up: changed %v, %v, calls %v", changed, err, h.calls)
	}
	// Ensure on a mounted store does nothing; on an unmounted one it finds
	// the device by number and mounts it.
	delete(h.mounts, store)
	ok, err := Ensure(h, rs, rs.Stores[0])
	if err != nil || !ok || h.mounts[store] != wrapDev {
		t.Fatalf("ensure: %v %v, mounts %v", ok, err, h.mounts)
	}
}

func TestCreateRefuses(t *testing.T) {
	ext4 := func(b []byte) { binary.LittleEndian.PutUint16(b[1024+0x38:], 0xef53) }
	cases := []struct {
		name  string
		size  int64
		setup func(h *fakeHost, disk, store string, rs *Records, b []byte)
		fs    string
		want  string
		busy  bool
	}{
		{name: "filesystem", size: diskSize, setup: func(_ *fakeHost, _, _ string, _ *Records, b []byte) { ext4(b) }, want: "holds a filesystem (ext"},
		{name: "LVM", size: diskSize, setup: func(_ *fakeHost, _, _ string, _ *Records, b []byte) {
			copy(b[512:], "LABELONE")
			copy(b[512+24:], "LVM2 001")
		}, want: "LVM physical volume"},
		{name: "store", size: diskSize, setup: func(_ *fakeHost, _, _ string, _ *Records, b []byte) {
			hb, _ := Header{UUID: [16]byte{1}, DataOffset: DataOffset, DataLength: 4096, FS: "ext4"}.Marshal()
			copy(b, hb)
		}, want: "a dmsnap store"},
		{name: "busy", size: diskSize, setup: func(h *fakeHost, disk, _ string, _ *Records, _ []byte) { h.busy[disk] = "mounted on /mnt" }, want: "in use: mounted on /mnt", busy: true},
		{name: "small", size: DataOffset + MinDataBytes, want: "a store needs at least"},
		{name: "not empty", size: diskSize, setup: func(_ *fakeHost, _, store string, _ *Records, _ []byte) {
			os.MkdirAll(store, 0o755)
			os.WriteFile(filepath.Join(store, "x"), nil, 0o644)
		}, want: "is not empty"},
		{name: "mount point", size: diskSize, setup: func(h *fakeHost, _, store string, _ *Records, _ []byte) { h.mounts[store] = devnum.Dev{Major: 1} }, want: "something is mounted on"},
		{name: "managed", size: diskSize, setup: func(_ *fakeHost, _, store string, rs *Records, _ []byte) {
			rs.Stores = append(rs.Stores, Record{Path: store, Device: "/dev/sdz"})
		}, want: "already a managed store (on /dev/sdz)"},
		{name: "fs", size: diskSize, fs: "btrfs", want: `filesystem "btrfs" is not one of`},
		{name: "mkfs fails", size: diskSize, setup: func(h *fakeHost, _, _ string, _ *Records, _ []byte) { h.mkfsErr = errors.New("mkfs broke") }, want: "mkfs broke"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, disk := newFake(t, c.size)
			store := filepath.Join(t.TempDir(), "snapshot")
			rs := &Records{Version: recordsVersion}
			b := readAll(t, disk)
			for i := range b {
				b[i] = byte(i * 7)
			}
			b[510], b[511] = 0, 0
			if c.setup != nil {
				c.setup(h, disk, store, rs, b)
			}
			if err := os.WriteFile(disk, b, 0o644); err != nil {
				t.Fatal(err)
			}
			n := len(rs.Stores)
			fs := c.fs
			if fs == "" {
				fs = "ext4"
			}
			_, err := Create(context.Background(), h, rs, CreateRequest{Device: disk, Path: store, FS: fs})
			var se *Error
			if err == nil || !strings.Contains(err.Error(), c.want) || !errors.As(err, &se) || se.Busy != c.busy {
				t.Fatalf("create: %v, want %q (busy %v)", err, c.want, c.busy)
			}
			if len(rs.Stores) != n || len(h.wraps) != 0 || len(h.mounts) > 1 {
				t.Fatalf("left records %v wraps %v mounts %v", rs.Stores, h.wraps, h.mounts)
			}
			after := readAll(t, disk)
			if c.name == "mkfs fails" {
				// The header is gone again: the device is no store.
				if _, err := ParseHeader(after); !errors.Is(err, ErrNoHeader) {
					t.Fatalf("after a failed mkfs the header is still there: %v", err)
				}
				return
			}
			if !bytes.Equal(after, b) {
				t.Fatal("a refused create changed the device")
			}
		})
	}
	// --force takes a device with a filesystem.
	h, disk := newFake(t, diskSize)
	b := readAll(t, disk)
	ext4(b)
	os.WriteFile(disk, b, 0o644)
	if _, err := Create(context.Background(), h, &Records{}, CreateRequest{Device: disk, Path: filepath.Join(t.TempDir(), "s"), FS: "ext4", Force: true}); err != nil {
		t.Fatal(err)
	}
}

func TestUpRefuses(t *testing.T) {
	setup := func(t *testing.T) (*fakeHost, string, *Records) {
		h, disk := newFake(t, diskSize)
		rs := &Records{Version: recordsVersion}
		if _, err := Create(context.Background(), h, rs, CreateRequest{Device: disk, Path: filepath.Join(t.TempDir(), "s"), FS: "ext4"}); err != nil {
			t.Fatal(err)
		}
		h.wraps, h.mounts = map[string]devnum.Dev{}, map[string]devnum.Dev{}
		return h, disk, rs
	}
	t.Run("no header", func(t *testing.T) {
		h, disk := newFake(t, diskSize)
		if _, _, err := Up(h, &Records{}, disk); err == nil || !strings.Contains(err.Error(), "is not a dmsnap store") {
			t.Fatal(err)
		}
	})
	t.Run("unknown", func(t *testing.T) {
		h, disk, _ := setup(t)
		if _, _, err := Up(h, &Records{}, disk); err == nil || !strings.Contains(err.Error(), "is not one this host made") || len(h.wraps) != 0 {
			t.Fatal(err)
		}
	})
	t.Run("shrunk", func(t *testing.T) {
		h, disk, rs := setup(t)
		os.Truncate(disk, diskSize-4096)
		if _, _, err := Up(h, rs, disk); err == nil || !strings.Contains(err.Error(), "its store header says") || len(h.wraps) != 0 {
			t.Fatal(err)
		}
	})
	t.Run("another device wrapped", func(t *testing.T) {
		h, disk, rs := setup(t)
		h.wraps[rs.Stores[0].UUID] = devnum.Dev{Major: 8, Minor: 99}
		if _, _, err := Up(h, rs, disk); err == nil || !strings.Contains(err.Error(), "two devices carry the same store") || len(h.mounts) != 0 {
			t.Fatal(err)
		}
	})
	t.Run("busy", func(t *testing.T) {
		h, disk, rs := setup(t)
		h.busy[disk] = "mounted on /mnt"
		var se *Error
		if _, _, err := Up(h, rs, disk); !errors.As(err, &se) || !se.Busy || len(h.wraps) != 0 {
			t.Fatal(err)
		}
	})
	t.Run("something else mounted", func(t *testing.T) {
		h, disk, rs := setup(t)
		h.mounts[rs.Stores[0].Path] = devnum.Dev{Major: 7, Minor: 1}
		if _, _, err := Up(h, rs, disk); err == nil || !strings.Contains(err.Error(), "mounted from another device") {
			t.Fatal(err)
		}
	})
	t.Run("ensure gives up", func(t *testing.T) {
		h, _, rs := setup(t)
		h.devs = map[string]devnum.Dev{}
		rs.Stores[0].Device = "/nonexistent"
		ok, err := Ensure(h, rs, rs.Stores[0])
		if ok || err != nil {
			t.Fatalf("ensure without the device: %v %v", ok, err)
		}
	})
}
