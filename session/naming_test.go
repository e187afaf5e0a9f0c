package session

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSanitizeName(t *testing.T) {
	cases := map[string]string{
		"/dev/sdb1":                  "sdb1",
		"/dev/mapper/vg-lv":          "vg-lv",
		"/dev/disk/by-id/usb-X:0":    "usb-X_0",
		"/dev/nvme0n1p2":             "nvme0n1p2",
		"/tmp/my disk.img":           "my_disk.img",
		"/dev/é":                     "__",
		"":                           "dev",
		"/":                          "dev",
		"/dev/":                      "dev",
		"..":                         "dev",
		"/dev/mmcblk0p1":             "mmcblk0p1",
		"/dev/disk/by-label/A+B=C@D": "A_B_C_D",
	}
	for in, want := range cases {
		if got := SanitizeName(in); got != want {
			t.Errorf("SanitizeName(%q) = %q, want %q", in, got, want)
		}
		if err := ValidateName(SanitizeName(in)); err != nil && !strings.Contains(err.Error(), "ends like") {
			t.Errorf("sanitized %q is not a valid name: %v", in, err)
		}
	}
}

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"sdb1", "a", "vg-lv", "x.y_z", strings.Repeat("a", MaxNameLen)} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "a/b", "a b", "a+b", "d-real", "d-snap12", strings.Repeat("a", MaxNameLen+1), "a\x00"} {
		if err := ValidateName(bad); err == nil {
			t.Errorf("ValidateName(%q) accepted", bad)
		}
	}
}

func TestFreeSessionDir(t *testing.T) {
	store := t.TempDir()
	at := time.Unix(1700000000, 999e6)
	if got := SessionDirName("sdb1", at); got != "sdb1_1700000000" {
		t.Fatalf("SessionDirName = %s", got)
	}
	d1, err := FreeSessionDir(store, "sdb1", at, nil)
	if err != nil || d1 != filepath.Join(store, "sdb1_1700000000") {
		t.Fatalf("first: %s %v", d1, err)
	}
	os.Mkdir(d1, 0o755)
	os.WriteFile(filepath.Join(store, "sdb1_1700000001"), nil, 0o644) // a file takes the name too
	d2, err := FreeSessionDir(store, "sdb1", at, nil)
	if err != nil || d2 != filepath.Join(store, "sdb1_1700000002") {
		t.Fatalf("next free: %s %v", d2, err)
	}
	planned := filepath.Join(store, "sdb1_1700000002")
	d3, err := FreeSessionDir(store, "sdb1", at, func(p string) (bool, error) {
		if p == planned {
			return true, nil
		}
		return pathExists(p)
	})
	if err != nil || d3 != filepath.Join(store, "sdb1_1700000003") {
		t.Fatalf("with a planned name: %s %v", d3, err)
	}
	boom := errors.New("boom")
	if _, err := FreeSessionDir(store, "sdb1", at, func(string) (bool, error) { return false, boom }); !errors.Is(err, boom) {
		t.Fatalf("taken's error: %v", err)
	}
}

func TestValidateSessionID(t *testing.T) {
	for _, ok := range []string{"sdb1_1700000000", "x", "a..b", ".hidden"} {
		if err := ValidateSessionID(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "../x", "a/b", "/abs", "a\x00b"} {
		if err := ValidateSessionID(bad); !errors.Is(err, ErrInvalidSessionID) {
			t.Errorf("%q: %v, want ErrInvalidSessionID", bad, err)
		}
	}
}

func TestResolveSessionDir(t *testing.T) {
	root := t.TempDir()
	store := filepath.Join(root, "store")
	outside := filepath.Join(root, "outside")
	for _, d := range []string{filepath.Join(store, "sdb1_1"), filepath.Join(store, "sdb1_2"), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(store, "file"), nil, 0o644)
	os.Symlink(filepath.Join(store, "sdb1_1"), filepath.Join(store, "inside-link"))
	os.Symlink(outside, filepath.Join(store, "evil"))
	os.Symlink("../outside", filepath.Join(store, "evil-rel"))
	os.Symlink("/etc", filepath.Join(store, "etc"))
	// A store reached through a symlink still works.
	os.Symlink(store, filepath.Join(root, "store-link"))

	got, err := ResolveSessionDir(store, "sdb1_2")
	if err != nil || got != filepath.Join(store, "sdb1_2") {
		t.Fatalf("plain: %s %v", got, err)
	}
	got, err = ResolveSessionDir(store, "inside-link")
	if err != nil || got != filepath.Join(store, "sdb1_1") {
		t.Fatalf("symlink inside the store: %s %v", got, err)
	}
	got, err = ResolveSessionDir(filepath.Join(root, "store-link"), "sdb1_1")
	if err != nil || got != filepath.Join(store, "sdb1_1") {
		t.Fatalf("store through a symlink: %s %v", got, err)
	}
	for _, id := range []string{"evil", "evil-rel", "etc", "..", "../outside", "file", "sdb1_2/..", ""} {
		if _, err := ResolveSessionDir(store, id); !errors.Is(err, ErrInvalidSessionID) {
			t.Errorf("%q: %v, want ErrInvalidSessionID", id, err)
		}
	}
	if _, err := ResolveSessionDir(store, "missing"); err == nil || !strings.Contains(err.Error(), "no such session") {
		t.Errorf("missing: %v", err)
	}
}
