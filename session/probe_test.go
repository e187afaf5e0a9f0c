package session

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/internal/devid"
)

// A regular file is identified as an image: what a loop device over it
// would show (its absolute path, device and inode), no device number; a
// file put in its place under the same name and size is told apart. A
// directory and a missing path are errors.
func TestSystemProberIdentifiesImageFiles(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "img")
	if err := os.WriteFile(f, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	id, err := (SystemProber{}).Identify(context.Background(), "img")
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(f, &st); err != nil {
		t.Fatal(err)
	}
	if !id.Image || !id.Dev.IsZero() || id.Size != 4096 || id.Stable == nil || id.Stable.Kind != devid.KindLoop ||
		id.Stable.LoopFile != f || id.Stable.LoopFileDev != st.Dev || id.Stable.LoopFileInode != st.Ino {
		t.Fatalf("identity %+v, stable %+v (want an image of 4096 bytes, file %s inode %d)", id, id.Stable, f, st.Ino)
	}
	// Replaced: same name, same size, same (no) filesystem.
	if err := os.WriteFile(f+".new", make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(f+".new", f); err != nil {
		t.Fatal(err)
	}
	again, err := (SystemProber{}).Identify(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	if err := id.Matches(again); !errors.Is(err, ErrIdentityMismatch) {
		t.Fatalf("the replaced file matches the one identified before: %v", err)
	}
	if _, err := (SystemProber{}).Identify(context.Background(), dir); err == nil {
		t.Fatal("a directory was identified")
	}
	if _, err := (SystemProber{}).Identify(context.Background(), "/nonexistent"); err == nil {
		t.Fatal("a missing path was identified")
	}
}
