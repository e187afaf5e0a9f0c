package trustdir

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// checkStore is ResolveStore's verdict alone.
func checkStore(p string) error {
	_, err := ResolveStore(p)
	return err
}

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
	if err := checkStore(good); err != nil {
		t.Errorf("0755 store: %v", err)
	}
	if err := checkStore(filepath.Join(base, "good/not-yet")); err != nil {
		t.Errorf("a store not made yet: %v", err)
	}
	if err := checkStore(mk("sticky/store", 0o700)); err != nil {
		t.Errorf("store under a sticky world-writable directory: %v", err)
	}
	mk("sticky", os.ModeSticky|0o777)
	if err := checkStore(filepath.Join(base, "sticky/store")); err != nil {
		t.Errorf("store under a sticky world-writable directory: %v", err)
	}
	os.Symlink(good, filepath.Join(base, "link"))
	if err := checkStore(filepath.Join(base, "link")); err != nil {
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
		err := checkStore(tc.store)
		var ie *InsecureError
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
	if err := checkStore(filepath.Join(base, "link2")); !errors.Is(err, ErrInsecureStore) || !strings.Contains(err.Error(), filepath.Join(base, "loose")) {
		t.Errorf("symlink to a loose store: %v", err)
	}
}

// symlinkWorld is a sticky directory writable by all (as /tmp) beside a
// good store, for symlinks into it.
func symlinkWorld(t *testing.T) (sticky, store string) {
	t.Helper()
	base := t.TempDir()
	sticky, store = filepath.Join(base, "tmp"), filepath.Join(base, "real", "store")
	for _, d := range []string{sticky, store} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(sticky, os.ModeSticky|0o777); err != nil {
		t.Fatal(err)
	}
	return sticky, store
}

// link makes a symlink at path to target, owned by uid.
func link(t *testing.T, target, path string, uid int) string {
	t.Helper()
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(path, uid, uid); err != nil {
		t.Fatal(err)
	}
	return path
}

// Regression: the store was checked where its symlinks led, so a symlink
// another user put in /tmp passed whenever it led to a good directory, and
// its owner could later point it elsewhere. A symlink owned by anyone but
// root (or the user running dmsnap) is refused, wherever it is on the path.
func TestResolveStoreRefusesOthersSymlinks(t *testing.T) {
	sticky, store := symlinkWorld(t)
	evil := link(t, store, filepath.Join(sticky, "store"), 4242)
	evilDir := link(t, filepath.Dir(store), filepath.Join(sticky, "dir"), 4242)
	for _, tc := range []struct{ path, link, to string }{
		{evil, evil, store},
		{filepath.Join(evilDir, "store"), evilDir, filepath.Dir(store)},
		// Through a good symlink to the bad one.
		{link(t, evil, filepath.Join(sticky, "chain"), 0), evil, store},
	} {
		got, err := ResolveStore(tc.path)
		var ie *InsecureError
		if !errors.Is(err, ErrInsecureStore) || !errors.As(err, &ie) || got != "" {
			t.Errorf("%s: %q, %v; want ErrInsecureStore", tc.path, got, err)
			continue
		}
		for _, want := range []string{"refusing the store " + tc.path + ": " + tc.link + ", a symlink on its path, is owned by uid 4242",
			"it points to " + tc.to, "give the directory itself (--store DIR)", "`chown -h root " + tc.link + "`"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %v\nwant it to say %q", tc.path, err, want)
			}
		}
		if ie.Dir != tc.link || ie.Link != tc.to {
			t.Errorf("%s: blames %s (to %s), want %s (to %s)", tc.path, ie.Dir, ie.Link, tc.link, tc.to)
		}
	}
}

// A symlink owned by root is followed, and the real path is returned: the
// one to use from then on, whatever the symlink is changed to.
func TestResolveStoreFollowsRootsSymlinks(t *testing.T) {
	sticky, store := symlinkWorld(t)
	other := filepath.Join(filepath.Dir(store), "other")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	abs := link(t, store, filepath.Join(sticky, "abs"), 0)
	for _, tc := range []struct{ path, want string }{
		{abs, store},
		{link(t, "../real/store", filepath.Join(sticky, "rel"), 0), store},
		{link(t, abs, filepath.Join(sticky, "chain"), 0), store},
		{filepath.Join(link(t, filepath.Dir(store), filepath.Join(sticky, "dir"), 0), "store"), store},
		// ".." after a symlink: the parent of where it leads.
		{filepath.Join(sticky, "dir", "store") + "/../other", other},
		{filepath.Join(sticky, "abs") + "/../other", other},
		// Not made yet, under a directory only root writes to: the path it
		// will have, and nothing made.
		{filepath.Join(sticky, "dir", "new", "store"), filepath.Join(filepath.Dir(store), "new", "store")},
	} {
		if got, err := ResolveStore(tc.path); err != nil || got != tc.want {
			t.Errorf("ResolveStore(%s) = %q, %v; want %s", tc.path, got, err, tc.want)
		}
	}
	if _, err := os.Lstat(filepath.Join(filepath.Dir(store), "new")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("resolving a store not made yet made something: %v", err)
	}
	// The path returned names the real directory: swapping the symlink
	// afterwards changes nothing for whoever holds it.
	got, err := ResolveStore(abs)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(abs); err != nil {
		t.Fatal(err)
	}
	link(t, other, abs, 0)
	if got != store {
		t.Errorf("resolved %s, want %s", got, store)
	}
	if now, err := ResolveStore(abs); err != nil || now != other {
		t.Errorf("after the swap: %q, %v; want %s", now, err, other)
	}
}

func TestResolveStoreBadPaths(t *testing.T) {
	sticky, store := symlinkWorld(t)
	file := filepath.Join(store, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	link(t, filepath.Join(sticky, "b"), filepath.Join(sticky, "a"), 0)
	link(t, filepath.Join(sticky, "a"), filepath.Join(sticky, "b"), 0)
	for path, says := range map[string]string{
		file:                       "is not a directory",
		filepath.Join(file, "x"):   "is not a directory",
		filepath.Join(sticky, "a"): "too many levels of symbolic links",
		link(t, "gone/../x", filepath.Join(sticky, "dots"), 0): "does not exist",
	} {
		got, err := ResolveStore(path)
		if err == nil || errors.Is(err, ErrInsecureStore) || !strings.Contains(err.Error(), "store "+path+": ") || !strings.Contains(err.Error(), says) {
			t.Errorf("ResolveStore(%s) = %q, %v; want an error saying %q", path, got, err, says)
		}
	}
}

// A store not made yet, directly in a directory others can write to, is
// made at once (0755) and checked: left missing, someone could put a
// symlink of theirs in its place before activate or the watcher make it.
func TestResolveStoreMakesMissingUnderSticky(t *testing.T) {
	sticky, _ := symlinkWorld(t)
	want := filepath.Join(sticky, "new", "store")
	got, err := ResolveStore(want)
	if err != nil || got != want {
		t.Fatalf("ResolveStore(%s) = %q, %v", want, got, err)
	}
	for _, d := range []string{filepath.Dir(want), want} {
		fi, err := os.Lstat(d)
		if err != nil {
			t.Errorf("%s was not made: %v", d, err)
		} else if !fi.IsDir() || fi.Mode().Perm()&0o022 != 0 {
			t.Errorf("%s: %v; want a directory others cannot write to", d, fi.Mode())
		}
	}
}

// The state directory follows the same rules, and says it is the state
// directory.
func TestResolveStateDir(t *testing.T) {
	sticky, store := symlinkWorld(t)
	state := filepath.Dir(store) // a good directory
	evil := link(t, state, filepath.Join(sticky, "state"), 4242)
	got, err := ResolveStateDir(evil)
	var ie *InsecureError
	if !errors.Is(err, ErrInsecureStateDir) || errors.Is(err, ErrInsecureStore) || !errors.As(err, &ie) || ie.Dir != evil || got != "" {
		t.Fatalf("ResolveStateDir(%s) = %q, %v; want ErrInsecureStateDir blaming the symlink", evil, got, err)
	}
	for _, want := range []string{"refusing the state directory " + evil, "owned by uid 4242", "rewrite the registry", "--state DIR", "chown -h root " + evil} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%v\nwant it to say %q", err, want)
		}
	}
	good := link(t, state, filepath.Join(sticky, "good"), 0)
	if got, err := ResolveStateDir(good); err != nil || got != state {
		t.Errorf("ResolveStateDir(%s) = %q, %v; want %s", good, got, err, state)
	}
	missing := filepath.Join(good, "not-yet")
	if got, err := ResolveStateDir(missing); err != nil || got != filepath.Join(state, "not-yet") {
		t.Errorf("ResolveStateDir(%s) = %q, %v", missing, got, err)
	}
	loose := filepath.Join(state, "loose")
	if err := os.Mkdir(loose, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(loose, 0o777)
	if _, err := ResolveStateDir(loose); !errors.Is(err, ErrInsecureStateDir) || !strings.Contains(err.Error(), "chmod go-w "+loose) ||
		!strings.Contains(err.Error(), "refusing the state directory "+loose) {
		t.Errorf("a world-writable state directory: %v", err)
	}
}
