//go:build vm

package vmtest

import (
	"os"
	"strings"
	"testing"
)

// TestGuest proves the harness itself: device-mapper is there, the modules
// dmsnap needs are loaded and the tools the suites call run.
func TestGuest(t *testing.T) {
	RequireDM(t)
	mods, err := os.ReadFile("/proc/modules")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"dm_mod", "dm_snapshot", "loop", "xfs", "btrfs"} {
		if !strings.Contains(string(mods), m+" ") {
			t.Errorf("module %s is not loaded in the guest", m)
		}
	}
	img := TempFile(t, t.TempDir(), "fs.img", 320<<20)
	// mkfs.xfs wants at least 300 MiB.
	for _, mkfs := range [][]string{{"mkfs.ext4", "-q", "-F"}, {"mkfs.xfs", "-q", "-f"}, {"mkfs.btrfs", "-q", "-f"}} {
		Run(t, mkfs[0], append(mkfs[1:], img)...)
	}
	if got := SHA256(t, img); len(got) != 64 {
		t.Fatalf("sha256 of %s: %q", img, got)
	}
}
