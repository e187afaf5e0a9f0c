//go:build !vm

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/internal/devnum"
	"github.com/dmsnap/dmsnap/storedev"
)

// The store commands' mistakes are refused before anything is touched:
// a wrong --fs, a wrong password, a path that is no block device.
func TestStoreCommandsRefuse(t *testing.T) {
	w := newWorld(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		stdin string
		args  []string
		code  int
		want  string
	}{
		{"", []string{"store", "create", "/dev/sdz", "--fs", "btrfs"}, exitUsage, "--fs btrfs: use ext4 or xfs"},
		{"", []string{"store", "create"}, exitUsage, "store create takes one DEVICE"},
		{"", []string{"store", "create", img}, exitFailure, "is not a block device"},
		{"", []string{"store", "up", img}, exitFailure, "is not a block device"},
		{"", []string{"store", "list", "extra"}, exitUsage, "store list takes no arguments"},
	}
	for _, c := range cases {
		if code, _, errOut := w.run(t, c.stdin, c.args...); code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("dmsnap %q: exit %d, want %d with %q:\n%s", c.args, code, c.code, c.want, errOut)
		}
	}
	setPassword(t, "right")
	if code, _, errOut := w.run(t, "wrong\n", "store", "create", img, "--password-stdin"); code != exitBadPassword {
		t.Errorf("store create with a wrong password: exit %d: %s", code, errOut)
	}
	if b, _ := os.ReadFile(img); strings.Contains(string(b), storedev.Magic) {
		t.Error("a refused store create wrote a header")
	}
	if _, err := os.Stat(filepath.Join(w.state, storedev.RecordsFile)); !os.IsNotExist(err) {
		t.Errorf("a refused store create wrote %s: %v", storedev.RecordsFile, err)
	}
}

// store list shows what stores.json records, mounted or not (--json too).
func TestStoreList(t *testing.T) {
	w := newWorld(t)
	if code, out, _ := w.run(t, "", "store", "list"); code != exitOK || !strings.Contains(out, "no managed store") {
		t.Fatalf("empty list: exit %d\n%s", code, out)
	}
	path := filepath.Join(t.TempDir(), "snap")
	rs := &storedev.Records{Version: 1, Stores: []storedev.Record{{Path: path, UUID: "0123456789abcdef0123456789abcdef", FS: "xfs",
		Device: "/dev/sdb1", Dev: devnum.Dev{Major: 8, Minor: 17}, Created: 1}}}
	if err := rs.Save(w.state); err != nil {
		t.Fatal(err)
	}
	code, out, _ := w.run(t, "", "store", "list")
	if code != exitOK || !strings.Contains(out, path+"  xfs on /dev/sdb1 (/dev/mapper/dmsnap_store-0123456789ab), not mounted") {
		t.Fatalf("list: exit %d\n%s", code, out)
	}
	var got []storeInfo
	_, out, _ = w.run(t, "", "store", "list", "--json")
	if err := decodeResult(out, &got); err != nil || len(got) != 1 || got[0].Mounted || got[0].UUID != rs.Stores[0].UUID {
		t.Fatalf("list --json: %+v, %v\n%s", got, err, out)
	}
	// A damaged stores.json is an error, not an empty list.
	os.WriteFile(filepath.Join(w.state, storedev.RecordsFile), []byte("{"), 0o644)
	if code, _, errOut := w.run(t, "", "store", "list"); code != exitFailure || !strings.Contains(errOut, "is damaged") {
		t.Fatalf("damaged: exit %d: %s", code, errOut)
	}
}

// activate refuses a managed store that is not mounted: its sessions would
// go to the empty directory below the store's mount point.
func TestActivateRefusesUnmountedManagedStore(t *testing.T) {
	w := newWorld(t)
	w.sys.Prober.Add("/dev/sdb1", sdb1)
	rs := &storedev.Records{Version: 1, Stores: []storedev.Record{{Path: w.store, UUID: "0123456789abcdef0123456789abcdef", FS: "ext4", Device: "/dev/vdz"}}}
	if err := rs.Save(w.state); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := w.run(t, "", "activate", "/dev/sdb1")
	if code != exitFailure || !strings.Contains(errOut, "is a managed store that is not mounted: `dmsnap store up /dev/vdz`") {
		t.Fatalf("activate: exit %d: %s", code, errOut)
	}
	if code, out, _ := w.run(t, "", "status"); code != exitOK || strings.Contains(out, "sdb1") {
		t.Fatalf("after a refused activate: %s", out)
	}
}
