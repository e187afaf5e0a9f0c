package hostfiles

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStoresDropIn(t *testing.T) {
	got, err := StoresDropIn("/var/lib/dmsnap/registry.json", []string{"/srv/snaps", "/snapshot", "/srv/snaps"})
	if err != nil {
		t.Fatal(err)
	}
	want := `# dmsnap: the stores of the activated devices, mounted before the unit starts.
# Generated from /var/lib/dmsnap/registry.json by ` + "`dmsnap activate` and `dmsnap deactivate`" + `; edits are lost.
[Unit]
RequiresMountsFor=/snapshot /srv/snaps
`
	if got != want {
		t.Fatalf("drop-in:\n%s\nwant:\n%s", got, want)
	}
	if _, err := StoresDropIn("r", []string{"/srv/my snaps"}); err == nil || !strings.Contains(err.Error(), `"/srv/my snaps"`) {
		t.Fatalf("a store path with a space: err %v, want a refusal naming it", err)
	}
}

func TestWriteStoresDropIns(t *testing.T) {
	dir := t.TempDir()
	changed, err := WriteStoresDropIns(dir, "reg", []string{"/srv/a"})
	if err != nil || !changed {
		t.Fatalf("first write: changed %v, err %v", changed, err)
	}
	paths := DropInPaths(dir)
	if len(paths) != 2 || !strings.HasSuffix(paths[0], "dmsnap-attach@.service.d/"+DropInName) || !strings.HasSuffix(paths[1], "dmsnap-watch.service.d/"+DropInName) {
		t.Fatalf("drop-in paths %v", paths)
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), "RequiresMountsFor=/srv/a\n") {
			t.Fatalf("%s: %q, %v", p, b, err)
		}
	}
	if changed, err := WriteStoresDropIns(dir, "reg", []string{"/srv/a"}); err != nil || changed {
		t.Fatalf("same stores again: changed %v, err %v; want nothing written", changed, err)
	}
	if changed, err := WriteStoresDropIns(dir, "reg", []string{"/srv/a", "/srv/b"}); err != nil || !changed {
		t.Fatalf("a store more: changed %v, err %v", changed, err)
	}
	if b, _ := os.ReadFile(paths[1]); !strings.Contains(string(b), "RequiresMountsFor=/srv/a /srv/b\n") {
		t.Fatalf("after a store more: %q", b)
	}
	// A refused path changes nothing.
	if _, err := WriteStoresDropIns(dir, "reg", []string{"relative"}); err == nil {
		t.Fatal("a relative store path was accepted")
	}
	if b, _ := os.ReadFile(paths[0]); !strings.Contains(string(b), "RequiresMountsFor=/srv/a /srv/b\n") {
		t.Fatalf("a refused write changed the drop-in: %q", b)
	}
	// No store: both files go, and so do their directories.
	if changed, err := WriteStoresDropIns(dir, "reg", nil); err != nil || !changed {
		t.Fatalf("no store: changed %v, err %v", changed, err)
	}
	for _, p := range paths {
		if _, err := os.Stat(filepath.Dir(p)); !os.IsNotExist(err) {
			t.Fatalf("%s still there (%v)", filepath.Dir(p), err)
		}
	}
	if changed, err := WriteStoresDropIns(dir, "reg", nil); err != nil || changed {
		t.Fatalf("no store again: changed %v, err %v", changed, err)
	}
}
