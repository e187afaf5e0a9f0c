package storedev_test

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
	"github.com/dmsnap/dmsnap/storedev"
	"github.com/dmsnap/dmsnap/storedev/storedevtest"
)

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
	h, disk := storedevtest.New(t, diskSize)
	store := filepath.Join(t.TempDir(), "snapshot")
	rs := &storedev.Records{Version: storedev.RecordsVersion}
	var steps []string
	rec, err := storedev.Create(context.Background(), h, rs, storedev.CreateRequest{Device: disk, Path: store, FS: "xfs", Now: time.Unix(1700000000, 0),
		Step: func(s string) { steps = append(steps, s) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(steps) != 3 || !strings.Contains(steps[1], "making the xfs filesystem") || !strings.HasPrefix(steps[2], "mounting") {
		t.Fatalf("steps %q", steps)
	}
	hd, err := storedev.ParseHeader(readAll(t, disk))
	if err != nil {
		t.Fatal(err)
	}
	if hd.UUIDString() != rec.UUID || hd.DataOffset != storedev.DataOffset || hd.DataLength != diskSize-storedev.DataOffset || hd.FS != "xfs" || hd.Created != 1700000000 {
		t.Fatalf("header %+v, record %+v", hd, rec)
	}
	if len(rs.Stores) != 1 || rs.Stores[0] != rec || rec.Path != store || rec.Dev != (devnum.Dev{Major: 8, Minor: 17}) {
		t.Fatalf("records %+v", rs.Stores)
	}
	if got := strings.Join(h.Calls, ","); got != "wrap,mkfs xfs,mount "+store {
		t.Fatalf("calls %s", got)
	}
	if h.Wraps[rec.UUID] != rec.Dev || h.Mounts[store] != storedevtest.WrapDev {
		t.Fatalf("wraps %v mounts %v", h.Wraps, h.Mounts)
	}
	// Saved and read back.
	state := t.TempDir()
	if err := rs.Save(state); err != nil {
		t.Fatal(err)
	}
	rs, err = storedev.LoadRecords(state)
	if err != nil || len(rs.Stores) != 1 || rs.Stores[0] != rec {
		t.Fatalf("loaded %+v, %v", rs, err)
	}

	// A reboot: nothing is up. The device comes back under another number.
	h.Wraps, h.Mounts, h.Calls = map[string]devnum.Dev{}, map[string]devnum.Dev{}, nil
	h.Devs[disk] = devnum.Dev{Major: 8, Minor: 33}
	got, changed, err := storedev.Up(h, rs, disk)
	if err != nil {
		t.Fatal(err)
	}
	if !changed || got.Dev != (devnum.Dev{Major: 8, Minor: 33}) || rs.Stores[0].Dev != got.Dev {
		t.Fatalf("up: %+v changed %v; records %+v", got, changed, rs.Stores)
	}
	if c := strings.Join(h.Calls, ","); c != "wrap,mount "+store {
		t.Fatalf("calls %s", c)
	}
	// Again: all is up, nothing to do.
	h.Calls = nil
	if _, changed, err := storedev.Up(h, rs, disk); err != nil || changed || len(h.Calls) != 0 {
		t.Fatalf("second up: changed %v, %v, calls %v", changed, err, h.Calls)
	}
	// storedev.Ensure on a mounted store does nothing; on an unmounted one it finds
	// the device by number and mounts it.
	delete(h.Mounts, store)
	ok, err := storedev.Ensure(h, rs, rs.Stores[0])
	if err != nil || !ok || h.Mounts[store] != storedevtest.WrapDev {
		t.Fatalf("ensure: %v %v, mounts %v", ok, err, h.Mounts)
	}
}

func TestCreateRefuses(t *testing.T) {
	ext4 := func(b []byte) { binary.LittleEndian.PutUint16(b[1024+0x38:], 0xef53) }
	cases := []struct {
		name  string
		size  int64
		setup func(h *storedevtest.Host, disk, store string, rs *storedev.Records, b []byte)
		fs    string
		want  string
		busy  bool
	}{
		{name: "filesystem", size: diskSize, setup: func(_ *storedevtest.Host, _, _ string, _ *storedev.Records, b []byte) { ext4(b) }, want: "holds a filesystem (ext"},
		{name: "LVM", size: diskSize, setup: func(_ *storedevtest.Host, _, _ string, _ *storedev.Records, b []byte) {
			copy(b[512:], "LABELONE")
			copy(b[512+24:], "LVM2 001")
		}, want: "LVM physical volume"},
		{name: "store", size: diskSize, setup: func(_ *storedevtest.Host, _, _ string, _ *storedev.Records, b []byte) {
			hb, _ := storedev.Header{UUID: [16]byte{1}, DataOffset: storedev.DataOffset, DataLength: 4096, FS: "ext4"}.Marshal()
			copy(b, hb)
		}, want: "a dmsnap store"},
		{name: "busy", size: diskSize, setup: func(h *storedevtest.Host, disk, _ string, _ *storedev.Records, _ []byte) {
			h.BusyBy[disk] = "mounted on /mnt"
		}, want: "in use: mounted on /mnt", busy: true},
		{name: "small", size: storedev.DataOffset + storedev.MinDataBytes, want: "a store needs at least"},
		{name: "not empty", size: diskSize, setup: func(_ *storedevtest.Host, _, store string, _ *storedev.Records, _ []byte) {
			os.MkdirAll(store, 0o755)
			os.WriteFile(filepath.Join(store, "x"), nil, 0o644)
		}, want: "is not empty"},
		{name: "mount point", size: diskSize, setup: func(h *storedevtest.Host, _, store string, _ *storedev.Records, _ []byte) {
			h.Mounts[store] = devnum.Dev{Major: 1}
		}, want: "something is mounted on"},
		{name: "managed", size: diskSize, setup: func(_ *storedevtest.Host, _, store string, rs *storedev.Records, _ []byte) {
			rs.Stores = append(rs.Stores, storedev.Record{Path: store, Device: "/dev/sdz"})
		}, want: "already a managed store (on /dev/sdz)"},
		{name: "fs", size: diskSize, fs: "btrfs", want: `filesystem "btrfs" is not one of`},
		{name: "mkfs fails", size: diskSize, setup: func(h *storedevtest.Host, _, _ string, _ *storedev.Records, _ []byte) {
			h.MkfsErr = errors.New("mkfs broke")
		}, want: "mkfs broke"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, disk := storedevtest.New(t, c.size)
			store := filepath.Join(t.TempDir(), "snapshot")
			rs := &storedev.Records{Version: storedev.RecordsVersion}
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
			_, err := storedev.Create(context.Background(), h, rs, storedev.CreateRequest{Device: disk, Path: store, FS: fs})
			var se *storedev.Error
			if err == nil || !strings.Contains(err.Error(), c.want) || !errors.As(err, &se) || se.Busy != c.busy {
				t.Fatalf("create: %v, want %q (busy %v)", err, c.want, c.busy)
			}
			if len(rs.Stores) != n || len(h.Wraps) != 0 || len(h.Mounts) > 1 {
				t.Fatalf("left records %v wraps %v mounts %v", rs.Stores, h.Wraps, h.Mounts)
			}
			after := readAll(t, disk)
			if c.name == "mkfs fails" {
				// The header is gone again: the device is no store.
				if _, err := storedev.ParseHeader(after); !errors.Is(err, storedev.ErrNoHeader) {
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
	h, disk := storedevtest.New(t, diskSize)
	b := readAll(t, disk)
	ext4(b)
	os.WriteFile(disk, b, 0o644)
	if _, err := storedev.Create(context.Background(), h, &storedev.Records{}, storedev.CreateRequest{Device: disk, Path: filepath.Join(t.TempDir(), "s"), FS: "ext4", Force: true}); err != nil {
		t.Fatal(err)
	}
}

func TestUpRefuses(t *testing.T) {
	setup := func(t *testing.T) (*storedevtest.Host, string, *storedev.Records) {
		h, disk := storedevtest.New(t, diskSize)
		rs := &storedev.Records{Version: storedev.RecordsVersion}
		if _, err := storedev.Create(context.Background(), h, rs, storedev.CreateRequest{Device: disk, Path: filepath.Join(t.TempDir(), "s"), FS: "ext4"}); err != nil {
			t.Fatal(err)
		}
		h.Wraps, h.Mounts = map[string]devnum.Dev{}, map[string]devnum.Dev{}
		return h, disk, rs
	}
	t.Run("no header", func(t *testing.T) {
		h, disk := storedevtest.New(t, diskSize)
		if _, _, err := storedev.Up(h, &storedev.Records{}, disk); err == nil || !strings.Contains(err.Error(), "is not a dmsnap store") {
			t.Fatal(err)
		}
	})
	t.Run("unknown", func(t *testing.T) {
		h, disk, _ := setup(t)
		if _, _, err := storedev.Up(h, &storedev.Records{}, disk); err == nil || !strings.Contains(err.Error(), "is not one this host made") || len(h.Wraps) != 0 {
			t.Fatal(err)
		}
	})
	t.Run("shrunk", func(t *testing.T) {
		h, disk, rs := setup(t)
		os.Truncate(disk, diskSize-4096)
		if _, _, err := storedev.Up(h, rs, disk); err == nil || !strings.Contains(err.Error(), "its store header says") || len(h.Wraps) != 0 {
			t.Fatal(err)
		}
	})
	t.Run("another device wrapped", func(t *testing.T) {
		h, disk, rs := setup(t)
		h.Wraps[rs.Stores[0].UUID] = devnum.Dev{Major: 8, Minor: 99}
		if _, _, err := storedev.Up(h, rs, disk); err == nil || !strings.Contains(err.Error(), "two devices carry the same store") || len(h.Mounts) != 0 {
			t.Fatal(err)
		}
	})
	t.Run("busy", func(t *testing.T) {
		h, disk, rs := setup(t)
		h.BusyBy[disk] = "mounted on /mnt"
		var se *storedev.Error
		if _, _, err := storedev.Up(h, rs, disk); !errors.As(err, &se) || !se.Busy || len(h.Wraps) != 0 {
			t.Fatal(err)
		}
	})
	t.Run("something else mounted", func(t *testing.T) {
		h, disk, rs := setup(t)
		h.Mounts[rs.Stores[0].Path] = devnum.Dev{Major: 7, Minor: 1}
		if _, _, err := storedev.Up(h, rs, disk); err == nil || !strings.Contains(err.Error(), "mounted from another device") {
			t.Fatal(err)
		}
	})
	t.Run("ensure gives up", func(t *testing.T) {
		h, _, rs := setup(t)
		h.Devs = map[string]devnum.Dev{}
		rs.Stores[0].Device = "/nonexistent"
		ok, err := storedev.Ensure(h, rs, rs.Stores[0])
		if ok || err != nil {
			t.Fatalf("ensure without the device: %v %v", ok, err)
		}
	})
}
