//go:build !vm

package dm

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/internal/filemap"
)

// tableMapper answers List and Table from a map; nothing else is used.
type tableMapper struct {
	Mapper
	tables map[string][]TargetSpec
}

func (m tableMapper) List() ([]ListItem, error) {
	var out []ListItem
	for n := range m.tables {
		out = append(out, ListItem{Name: n})
	}
	return out, nil
}

func (m tableMapper) Table(name string) ([]TargetSpec, error) { return m.tables[name], nil }

func bindLoop(t *testing.T, sys string, n int, backing string, offset uint64) {
	t.Helper()
	writeSysFile(t, sys, fmt.Sprintf("block/loop%d/dev", n), fmt.Sprintf("7:%d\n", n))
	writeSysFile(t, sys, fmt.Sprintf("block/loop%d/loop/backing_file", n), backing+"\n")
	writeSysFile(t, sys, fmt.Sprintf("block/loop%d/loop/offset", n), fmt.Sprintf("%d\n", offset))
}

func TestFileUsers(t *testing.T) {
	dir := t.TempDir()
	cow := filepath.Join(dir, "cow.img")
	other := filepath.Join(dir, "other.img")
	for _, p := range []string{cow, other} {
		if err := os.WriteFile(p, make([]byte, 8192), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A node of the block device the files' filesystem is on, as the loop
	// device over the store's device names it.
	var st unix.Stat_t
	if err := unix.Stat(cow, &st); err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(dir, "storedev")
	if err := unix.Mknod(store, unix.S_IFBLK|0o600, int(st.Dev)); err != nil {
		t.Fatalf("mknod (the test needs root): %v", err)
	}
	// cow.img lies at bytes [1 MiB, 1 MiB + 64 KiB) of the store device.
	exts := func(f *os.File) ([]filemap.Extent, error) {
		if f.Name() != cow {
			return nil, nil
		}
		return []filemap.Extent{{Logical: 0, Physical: 1 << 20, Length: 64 << 10}}, nil
	}
	// loop3 shows the store device from 512 KiB on.
	seg := func(offsetBytes, lengthBytes uint64) []TargetSpec {
		spec, err := Linear{Start: 0, Length: lengthBytes / SectorSize, Device: Dev{Major: 7, Minor: 3}, Offset: offsetBytes / SectorSize}.Spec()
		if err != nil {
			t.Fatal(err)
		}
		return []TargetSpec{spec}
	}
	for _, tc := range []struct {
		name   string
		loops  map[int]string // loop number → backing file
		tables map[string][]TargetSpec
		file   string
		want   []string // substrings, one per user
	}{
		{name: "nothing", file: cow},
		{name: "a loop over the file", loops: map[int]string{0: cow}, file: cow, want: []string{"loop0 is bound"}},
		{name: "a loop over another file", loops: map[int]string{0: other}, file: cow},
		{name: "a table maps its blocks", loops: map[int]string{3: store},
			tables: map[string][]TargetSpec{"dmsnap-x-cow2": seg(512<<10+4096, 1<<20)}, file: cow, want: []string{"dmsnap-x-cow2 maps its blocks through /dev/loop3"}},
		{name: "a table maps other blocks of the device", loops: map[int]string{3: store},
			tables: map[string][]TargetSpec{"dmsnap-x-cow2": seg(0, 512<<10)}, file: cow},
		{name: "the window ends just before the file", loops: map[int]string{3: store},
			tables: map[string][]TargetSpec{"dmsnap-x-cow2": seg(0, 1<<20-512<<10)}, file: cow},
		{name: "both", loops: map[int]string{0: cow, 3: store},
			tables: map[string][]TargetSpec{"dmsnap-x-cow2": seg(512<<10, 8192)}, file: cow, want: []string{"loop0", "dmsnap-x-cow2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sys := t.TempDir()
			for n, b := range tc.loops {
				off := uint64(0)
				if b == store {
					off = 512 << 10
				}
				bindLoop(t, sys, n, b, off)
			}
			got, err := fileUsers(sys, tableMapper{tables: tc.tables}, tc.file, exts)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("users %q, want %d like %q", got, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("user %d is %q, want it to say %q", i, got[i], w)
				}
			}
		})
	}
}
