//go:build !vm

package snapstore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSanitizeName(t *testing.T) {
	for in, want := range map[string]string{
		"/dev/sdb1":                 "sdb1",
		"/dev/mapper/vg-lv":         "vg-lv",
		"/dev/disk/by-id/usb:1 x":   "usb_1_x",
		"nvme0n1p2":                 "nvme0n1p2",
		"/dev/":                     "dev",
		"":                          "dev",
		"..":                        "dev",
		"/tmp/dísk.img":             "d__sk.img",
		"/dev/disk/by-label/DATA_1": "DATA_1",
	} {
		if got := SanitizeName(in); got != want {
			t.Errorf("SanitizeName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSessionLifecycle(t *testing.T) {
	store := filepath.Join(t.TempDir(), "snapshot")
	st := State{
		Name:      "sdb1",
		Device:    Device{Path: "/dev/sdb1", Size: 10<<20 + 512, DevNum: DevNum{Major: 8, Minor: 17}},
		ChunkSize: 4096,
		Times:     Times{Armed: fixtureTime},
	}
	dir, err := CreateSession(store, st)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(dir) != "sdb1_1709294400" {
		t.Fatalf("armed dir %s", dir)
	}
	fi, err := os.Stat(filepath.Join(dir, CowFile))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Geometry{ChunkSectors: 8}).CowFileSize(st.Device.Size); fi.Size() != want {
		t.Fatalf("cow.img is %d bytes, want %d", fi.Size(), want)
	}
	if info := Inspect(dir); info.Status != StatusIncomplete || info.Phase != PhaseArmed {
		t.Fatalf("armed session lists as %s/%s", info.Status, info.Phase)
	}
	// Arming again in the same second takes the next one.
	dir2, err := CreateSession(store, st)
	if err != nil || filepath.Base(dir2) != "sdb1_1709294401" {
		t.Fatalf("second arm: %s, %v", dir2, err)
	}
	// Mounting at a second whose name is taken (by dir2) moves on.
	mounted, err := MarkMounted(dir, fixtureTime.Add(time.Second), "ext4")
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(mounted) != "sdb1_1709294402" {
		t.Fatalf("mounted dir %s", mounted)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("old dir still there: %v", err)
	}
	s, err := ReadState(mounted)
	if err != nil {
		t.Fatal(err)
	}
	// Mounting again in the second the directory is already named for
	// keeps it (armed and mounted in the same second).
	if again, err := MarkMounted(mounted, fixtureTime.Add(time.Second), "ext4"); err != nil || again != mounted {
		t.Fatalf("re-mark: %s, %v", again, err)
	}
	if s.Phase != PhaseOpen || s.FsType != "ext4" || !s.Times.Mounted.Equal(fixtureTime.Add(time.Second)) || !s.Times.Armed.Equal(fixtureTime) {
		t.Fatalf("state after mount %+v", s)
	}
	if err := MarkUnmounted(mounted, fixtureTime.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if s, _ = ReadState(mounted); s.Phase != PhaseClosing || !s.Times.Unmounted.Equal(fixtureTime.Add(time.Hour)) {
		t.Fatalf("state after unmount %+v", s)
	}
	if err := MarkInvalid(mounted, "Invalid"); err != nil {
		t.Fatal(err)
	}
	if s, _ = ReadState(mounted); s.Phase != PhaseInvalid || s.InvalidReason != "Invalid" {
		t.Fatalf("state after invalidation %+v", s)
	}
	// An unmount after invalidation keeps it invalid.
	if err := MarkUnmounted(mounted, fixtureTime.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if s, _ = ReadState(mounted); s.Phase != PhaseInvalid {
		t.Fatalf("phase %s", s.Phase)
	}
	// No temporary files left by the atomic writes.
	ents, _ := os.ReadDir(mounted)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("stray file %s", e.Name())
		}
	}
}

func TestReadStateRejects(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) {
		if err := os.WriteFile(filepath.Join(dir, StateFile), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"format_version": 2, "name": "x"}`)
	if _, err := ReadState(dir); !errors.Is(err, ErrUnsupportedVersion) || !strings.Contains(err.Error(), "upgrade dmsnap") {
		t.Fatalf("newer state: %v", err)
	}
	write(`{"format_version": 1, "name": "x", "device": {"path": "/dev/x", "size": 4096, "major_minor": "1:2"}, "chunk_size": 3000, "phase": "armed", "times": {}}`)
	if _, err := ReadState(dir); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "chunk_size 3000") {
		t.Fatalf("bad chunk size: %v", err)
	}
	write(`{"format_version": 1, "name": "x", "device": {"path": "/dev/x", "size": 4096, "major_minor": "1:2"}, "chunk_size": 4096, "phase": "mounted", "times": {}}`)
	if _, err := ReadState(dir); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), `phase "mounted"`) {
		t.Fatalf("bad phase: %v", err)
	}
	write(`{"format_version": 1,`)
	_, err := ReadState(dir)
	var fe *FormatError
	if !errors.Is(err, ErrCorrupt) || !errors.As(err, &fe) || fe.File != filepath.Join(dir, StateFile) {
		t.Fatalf("truncated state: %v", err)
	}
	write(`{"format_version": 1, "name": "x", "device": {"path": "/dev/x", "size": 4096, "major_minor": "1:2"}, "chunk_size": "4096", "phase": "armed", "times": {}}`)
	if _, err := ReadState(dir); !errors.As(err, &fe) || fe.Offset <= 0 || !strings.Contains(err.Error(), "chunk_size") {
		t.Fatalf("chunk_size of the wrong type: %v (want its offset)", err)
	}
}
