package session

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckStore(t *testing.T) {
	base := t.TempDir()
	mk := func(rel string, mode os.FileMode) string {
		p := filepath.Join(base, rel)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := mk("good/store", 0o755)
	if err := CheckStore(good); err != nil {
		t.Errorf("0755 store: %v", err)
	}
	if err := CheckStore(filepath.Join(base, "good/not-yet")); err != nil {
		t.Errorf("a store not made yet: %v", err)
	}
	if err := CheckStore(mk("sticky/store", 0o700)); err != nil {
		t.Errorf("store under a sticky world-writable directory: %v", err)
	}
	mk("sticky", os.ModeSticky|0o777)
	if err := CheckStore(filepath.Join(base, "sticky/store")); err != nil {
		t.Errorf("store under a sticky world-writable directory: %v", err)
	}
	os.Symlink(good, filepath.Join(base, "link"))
	if err := CheckStore(filepath.Join(base, "link")); err != nil {
		t.Errorf("symlink to a good store: %v", err)
	}

	for _, tc := range []struct {
		store, dir string // the store checked, the directory blamed
		fix, why   string
	}{
		{mk("loose", 0o777), "loose", "chmod go-w", "writable by group or others"},
		{mk("group", 0o775), "group", "chmod go-w", "writable by group or others"},
		{mk("tmp-like", os.ModeSticky|0o777), "tmp-like", "chmod go-w", "sticky bit does not make a store safe"},
		{mk("open/store", 0o755), "open", "chmod go-w", "a directory above the store"},
		{mk("owned", 0o755), "owned", "chown root", "owned by uid 4242"},
	} {
		if tc.dir == "open" {
			mk("open", 0o777)
		}
		if tc.dir == "owned" {
			if err := os.Chown(tc.store, 4242, 4242); err != nil {
				t.Fatal(err)
			}
		}
		err := CheckStore(tc.store)
		var ie *InsecureStoreError
		if !errors.Is(err, ErrInsecureStore) || !errors.As(err, &ie) {
			t.Errorf("%s: %v, want ErrInsecureStore", tc.store, err)
			continue
		}
		blamed := filepath.Join(base, tc.dir)
		if ie.Dir != blamed || !strings.Contains(err.Error(), tc.fix+" "+blamed) || !strings.Contains(err.Error(), tc.why) ||
			!strings.Contains(err.Error(), "refusing the store "+tc.store) {
			t.Errorf("%s: %v; want it to blame %s, say %q and %q", tc.store, err, blamed, tc.why, tc.fix)
		}
	}
	// Through a symlink, the real directory is the one checked and named.
	os.Symlink(filepath.Join(base, "loose"), filepath.Join(base, "link2"))
	if err := CheckStore(filepath.Join(base, "link2")); !errors.Is(err, ErrInsecureStore) || !strings.Contains(err.Error(), filepath.Join(base, "loose")) {
		t.Errorf("symlink to a loose store: %v", err)
	}
}
