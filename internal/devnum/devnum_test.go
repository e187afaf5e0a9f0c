package devnum

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDev: the number round-trips through dev_t, text and JSON; anything
// but two decimal numbers is refused.
func TestDev(t *testing.T) {
	d := Dev{Major: 259, Minor: 65536}
	if got := FromNumber(d.Number()); got != d {
		t.Errorf("FromNumber(Number()) = %v, want %v", got, d)
	}
	if got := FromNumber(unix.Mkdev(8, 17)); got != (Dev{8, 17}) {
		t.Errorf("FromNumber(8:17) = %v", got)
	}
	if p, err := Parse(d.String()); err != nil || p != d {
		t.Errorf("Parse(%q) = %v, %v", d.String(), p, err)
	}
	b, err := json.Marshal(struct{ D Dev }{d})
	if err != nil || string(b) != `{"D":"259:65536"}` {
		t.Fatalf("json: %s, %v", b, err)
	}
	var back struct{ D Dev }
	if err := json.Unmarshal(b, &back); err != nil || back.D != d {
		t.Errorf("json back: %v, %v", back.D, err)
	}
	for _, s := range []string{"", "8", "8:", ":1", "a:1", "1:b", "-1:2", "4294967296:0", "1:2:3"} {
		if _, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) accepted", s)
		}
	}
	if !(Dev{}).IsZero() || d.IsZero() {
		t.Error("IsZero")
	}
}

func TestDevName(t *testing.T) {
	dir := t.TempDir()
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "uevent"), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("MAJOR=8\nMINOR=17\nDEVNAME=sdb1\nDEVTYPE=partition\n")
	if name, err := DevName(dir); err != nil || name != "sdb1" {
		t.Fatalf("DevName = %q, %v; want sdb1", name, err)
	}
	for _, bad := range []string{"MAJOR=8\n", "DEVNAME=\n", "DEVNAME=../etc/passwd\n"} {
		write(bad)
		if name, err := DevName(dir); err == nil || !strings.Contains(err.Error(), "names no device node") {
			t.Errorf("uevent %q: %q, %v; want no node", bad, name, err)
		}
	}
	var pe *fs.PathError
	if _, err := DevName(filepath.Join(dir, "missing")); !errors.As(err, &pe) {
		t.Errorf("no uevent file: %v; want the *fs.PathError", err)
	}
	// The host's own block devices, as the kernel names them.
	ents, _ := os.ReadDir("/sys/dev/block")
	for _, e := range ents {
		name, err := DevName(filepath.Join("/sys/dev/block", e.Name()))
		if err != nil {
			t.Fatalf("/sys/dev/block/%s: %v", e.Name(), err)
		}
		if _, err := os.Stat("/sys/class/block/" + filepath.Base(name)); err != nil {
			t.Errorf("/sys/dev/block/%s names %q, not a block device of sysfs", e.Name(), name)
		}
	}
}
