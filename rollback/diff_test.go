package rollback

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// diffTrees finds what was added, deleted and modified (content of the
// same size, mode, owner, link target, type), and nothing else.
func TestDiffTrees(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	write := func(root, p, s string, mode os.FileMode) {
		t.Helper()
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(s), mode); err != nil {
			t.Fatal(err)
		}
	}
	for _, root := range []string{a, b} {
		write(root, "same/file", "unchanged", 0o644)
		write(root, "content", "aaaa", 0o644)
		write(root, "mode", "m", 0o644)
		write(root, "owner", "o", 0o644)
		write(root, "kind", "k", 0o644)
	}
	write(a, "gone/old", "12345", 0o644)
	write(b, "new/file", "1234567", 0o644)
	write(b, "content", "bbbb", 0o644)
	if err := os.Chmod(filepath.Join(b, "mode"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(b, "owner"), 1234, 1234); err != nil {
		t.Fatal(err)
	}
	os.Symlink("x", filepath.Join(a, "link"))
	os.Symlink("y", filepath.Join(b, "link"))
	os.Remove(filepath.Join(b, "kind"))
	os.Mkdir(filepath.Join(b, "kind"), 0o755)
	// A directory whose entries changed is not itself a change.
	got, err := diffTrees(a, b)
	if err != nil {
		t.Fatal(err)
	}
	want := []DiffEntry{
		{Path: "/content", Change: "modified", Type: "file", Before: 4, After: 4, What: []string{"content"}},
		{Path: "/gone", Change: "deleted", Type: "dir", Before: got[1].Before},
		{Path: "/gone/old", Change: "deleted", Type: "file", Before: 5},
		{Path: "/kind", Change: "modified", Type: "dir", Before: 1, After: got[3].After, What: []string{"type", "mode"}},
		{Path: "/link", Change: "modified", Type: "symlink", Before: 1, After: 1, What: []string{"target"}},
		{Path: "/mode", Change: "modified", Type: "file", Before: 1, After: 1, What: []string{"mode"}},
		{Path: "/new", Change: "added", Type: "dir", After: got[6].After},
		{Path: "/new/file", Change: "added", Type: "file", After: 7},
		{Path: "/owner", Change: "modified", Type: "file", Before: 1, After: 1, What: []string{"owner"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("diff:\n got %+v\nwant %+v", got, want)
	}
}

// A file-level restore refuses, before any view is touched, a path named
// twice or inside another, the whole filesystem, and a copy that would
// land on something that exists.
func TestRestoreFilesRefusals(t *testing.T) {
	to := t.TempDir()
	if err := os.MkdirAll(filepath.Join(to, "home", "ann"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := Config{State: filepath.Join(t.TempDir(), "no-state")}
	for _, c := range []struct {
		paths []string
		says  string
	}{
		{[]string{"/etc", "/etc/passwd"}, "overlap"},
		{[]string{"/etc/passwd", "etc/passwd"}, "overlap"},
		{[]string{"/"}, "whole filesystem"},
		{[]string{"/home/ann"}, "exists"},
	} {
		_, err := RestoreFiles(t.Context(), cfg, "sdb1_1700000000", c.paths, to)
		if err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("RestoreFiles %q: %v, want %q", c.paths, err, c.says)
		}
	}
	if _, err := os.Stat(cfg.State); err == nil {
		t.Error("a refused restore made the state directory")
	}
}
