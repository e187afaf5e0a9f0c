//go:build !vm

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The sessions commands read an activated device's sessions from the store
// it was activated with, whatever --store says; a store or state directory
// that was named and does not exist is exit 6, naming it.
func TestSessionsReadTheDevicesStore(t *testing.T) {
	w := newWorld(t)
	w.sys.Prober.Add("/dev/sdb1", sdb1)
	other := filepath.Join(t.TempDir(), "other")
	if code, _, errOut := w.run(t, "", "activate", "/dev/sdb1", "--store", other); code != exitOK {
		t.Fatalf("activate --store %s: exit %d: %s", other, code, errOut)
	}
	id := filepath.Base(closedSession(t, other, "sdb1", time.Unix(1700000000, 0)))
	mine := filepath.Base(closedSession(t, w.store, "sdc1", time.Unix(1700000100, 0)))

	// All stores, then the device's only (w.run gives --store w.store).
	_, out, errOut := w.run(t, "", "sessions", "list")
	if !strings.Contains(out, id) || !strings.Contains(out, mine) {
		t.Errorf("sessions list shows %q, want %s (activated with %s) and %s (--store):\n%s", out, id, other, mine, errOut)
	}
	_, out, _ = w.run(t, "", "sessions", "list", "sdb1", "--json")
	var list []sessionJSON
	if err := decodeResult(out, &list); err != nil || len(list) == 0 || list[0].ID != id {
		t.Errorf("sessions list sdb1: %v %q", err, out)
	}
	for _, s := range list { // and its armed session, also in other
		if s.Name != "sdb1" || filepath.Dir(s.Dir) != other {
			t.Errorf("sessions list sdb1 shows %s in %s", s.ID, s.Dir)
		}
	}
	for _, args := range [][]string{{"sessions", "show", id}, {"sessions", "verify", id}, {"sessions", "show", "latest", "--name", "sdb1"}} {
		if code, out, errOut := w.run(t, "", args...); code != exitOK || !strings.Contains(out, id) {
			t.Errorf("dmsnap %q: exit %d, %q %q", args, code, out, errOut)
		}
	}
	// latest with two devices in the stores needs --name.
	if code, _, errOut := w.run(t, "", "sessions", "show", "latest"); code != exitUsage || !strings.Contains(errOut, "--name") {
		t.Errorf("sessions show latest over two devices: exit %d, %q", code, errOut)
	}
	// prune reads the device's store.
	if code, out, errOut := w.run(t, "", "sessions", "prune", "sdb1", "--keep", "0", "--dry-run"); code != exitOK || !strings.Contains(out, "would remove "+id) {
		t.Errorf("prune sdb1 --dry-run: exit %d, %q %q", code, out, errOut)
	}

	missing := filepath.Join(t.TempDir(), "typo")
	for _, args := range [][]string{
		{"--store", missing, "sessions", "list", "sdc1"},
		{"--store", missing, "sessions", "verify"},
		{"--store", missing, "sessions", "prune", "sdc1", "--keep", "1"},
		{"--state", missing, "status"},
	} {
		code, _, errOut := w.run(t, "", args...)
		if code != exitNotFound || !strings.Contains(errOut, missing+" does not exist") {
			t.Errorf("dmsnap %q: exit %d, %q; want exit %d naming %s", args, code, errOut, exitNotFound, missing)
		}
	}
}

// Settings come from the flags, else DMSNAP_STORE / DMSNAP_STATE, else the
// configuration file (DMSNAP_CONFIG in place of /etc/dmsnap/dmsnap.conf).
func TestSettingsFromEnvironmentAndConfig(t *testing.T) {
	dir := t.TempDir()
	byConf, byEnv, byFlag := filepath.Join(dir, "conf"), filepath.Join(dir, "env"), filepath.Join(dir, "flag")
	for _, s := range []string{byConf, byEnv, byFlag} {
		closedSession(t, s, filepath.Base(s), time.Unix(1700000000, 0))
	}
	conf := filepath.Join(dir, "dmsnap.conf")
	if err := os.WriteFile(conf, []byte("# test\nstore = "+byConf+"\nstate = "+filepath.Join(dir, "state")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DMSNAP_CONFIG", conf)
	list := func(args ...string) string {
		t.Helper()
		code, out, errOut := runCLI(t, append([]string{"sessions", "list"}, args...)...)
		if code != exitOK {
			t.Fatalf("sessions list %q: exit %d: %s", args, code, errOut)
		}
		return out
	}
	if out := list(); !strings.Contains(out, "conf_1700000000") {
		t.Errorf("store from the configuration file: %q", out)
	}
	t.Setenv("DMSNAP_STORE", byEnv)
	if out := list(); !strings.Contains(out, "env_1700000000") || strings.Contains(out, "conf_") {
		t.Errorf("DMSNAP_STORE over the file: %q", out)
	}
	if out := list("--store", byFlag); !strings.Contains(out, "flag_1700000000") || strings.Contains(out, "env_") {
		t.Errorf("--store over DMSNAP_STORE: %q", out)
	}
	if err := os.WriteFile(conf, []byte("stor = /x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := runCLI(t, "sessions", "list"); code != exitFailure || !strings.Contains(errOut, conf+": line 1: unknown key") {
		t.Errorf("a bad configuration file: exit %d, %q", code, errOut)
	}
}

// restore IMAGE --session ID works when the image's file name is not the
// name its sessions carry (a loop device's image: loop0_...), and --name
// names it for --session latest.
func TestRestoreImageOfAnotherName(t *testing.T) {
	fx := newRestoreFixture(t, []int{1, 2}, []int{3})
	img := filepath.Join(fx.dir, "disk.raw")
	if err := os.Rename(fx.dev, img); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := fx.run(t, nil, img, "--session", fx.ids[1], "--yes"); code != exitOK {
		t.Fatalf("restore %s --session %s: exit %d: %s", img, fx.ids[1], code, errOut)
	}
	if got, _ := os.ReadFile(img); string(got) != string(fx.states[1]) {
		t.Fatalf("restore by session ID: the image is not the device before %s", fx.ids[1])
	}
	if code, _, errOut := fx.run(t, nil, img, "--name", "dev.img", "--session", "latest", "--yes", "--to", filepath.Join(fx.dir, "out.img")); code != exitOK {
		t.Fatalf("restore --name dev.img --session latest: exit %d: %s", code, errOut)
	}
	if code, _, errOut := fx.run(t, nil, img, "--session", "latest", "--yes", "--dry-run"); code == exitOK {
		t.Errorf("restore %s --session latest without --name: exit 0, want a refusal (no sessions of disk.raw): %s", img, errOut)
	}
}
