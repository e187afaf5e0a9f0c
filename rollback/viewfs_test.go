package rollback

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// ViewFS mounts what activation recognises (fsprobe.Probe) with the options
// that keep a read-only mount from writing.
func TestViewFS(t *testing.T) {
	dir := t.TempDir()
	img := func(name string, size int, patches map[int]string) string {
		b := make([]byte, size)
		for off, p := range patches {
			copy(b[off:], p)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	const size = 1 << 20
	for _, tc := range []struct {
		name      string
		dev       string
		typ, opts string
		errSays   string
	}{
		{"ext2", img("ext2", size, map[int]string{1080: "\x53\xef"}), "ext4", "noload", ""},
		{"ext4", img("ext4", size, map[int]string{1080: "\x53\xef", 1024 + 0x60: "\xc0\x02"}), "ext4", "noload", ""},
		{"xfs", img("xfs", size, map[int]string{0: "XFSB"}), "xfs", "norecovery,nouuid", ""},
		{"btrfs", img("btrfs", size, map[int]string{0x10040: "_BHRfS_M"}), "btrfs", "nologreplay", ""},
		{"nothing", img("nothing", size, nil), "", "", "no ext4, xfs or btrfs file system found"},
		{"missing", filepath.Join(dir, "missing"), "", "", "no such file"},
	} {
		typ, opts, err := ViewFS(tc.dev)
		if typ != tc.typ || opts != tc.opts || (err == nil) != (tc.errSays == "") || err != nil && !strings.Contains(err.Error(), tc.errSays) {
			t.Errorf("%s: %q %q %v, want %q %q (error saying %q)", tc.name, typ, opts, err, tc.typ, tc.opts, tc.errSays)
		}
	}
}
