package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	c, err := Parse([]byte("# dmsnap\n\nstore = /srv/snap/ \n  state=/var/lib/x\n"))
	if err != nil || c != (Config{Store: "/srv/snap", State: "/var/lib/x"}) {
		t.Fatalf("Parse = %+v, %v", c, err)
	}
	for text, says := range map[string]string{
		"store /x\n":               "line 1: \"store /x\" is not key = value",
		"stor = /x\n":              "line 1: unknown key \"stor\"",
		"store = /x\nstore = /y\n": "line 2: store is set on line 1 already",
		"store = x\n":              "want an absolute path",
		"state =\n":                "want an absolute path",
	} {
		if _, err := Parse([]byte(text)); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("Parse(%q) = %v, want an error saying %q", text, err, says)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	if c, err := Load(filepath.Join(dir, "none.conf")); err != nil || c != (Config{}) {
		t.Fatalf("a missing file: %+v, %v; want nothing set, no error", c, err)
	}
	p := filepath.Join(dir, "dmsnap.conf")
	os.WriteFile(p, []byte("store = /a\n"), 0o644)
	if c, err := Load(p); err != nil || c.Store != "/a" {
		t.Fatalf("Load = %+v, %v", c, err)
	}
	os.WriteFile(p, []byte("bogus\n"), 0o644)
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("a bad file: %v; want an error naming %s", err, p)
	}
	os.WriteFile(p, make([]byte, maxSize+1), 0o644)
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("a huge file: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("store = /snapshot\nstate = /var/lib/dmsnap\n"))
	f.Add([]byte("# c\n\nstore=/a\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			return
		}
		for _, v := range []string{c.Store, c.State} {
			if v != "" && (!filepath.IsAbs(v) || filepath.Clean(v) != v) {
				t.Fatalf("Parse(%q) accepted %q: not a clean absolute path", b, v)
			}
		}
	})
}
