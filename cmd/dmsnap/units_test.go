//go:build !vm

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/internal/hostfiles"
)

// The units install-files writes pass systemd's own checks: systemd-analyze
// verify loads them as systemd would (directives, specifiers, dependencies,
// the ExecStart binary) and opens every man page their Documentation=
// names, here the pages install-files wrote beside them. (make host-deps
// installs systemd and man-db.)
func TestInstalledUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze not found (make host-deps installs Debian's systemd): %v", err)
	}
	w := newWorld(t)
	bin, err := os.Executable() // an executable for ExecStart to name
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if code, _, errOut := w.run(t, "", "install-files", "--binary", bin, "--prefix", "/usr", root); code != exitOK {
		t.Fatalf("install-files: exit %d: %s", code, errOut)
	}
	units := []string{filepath.Join(root, hostfiles.SystemdUnitPath), filepath.Join(root, hostfiles.AttachUnitPath), filepath.Join(root, hostfiles.StoreUnitPath),
		filepath.Join(root, hostfiles.VerifyServicePath), filepath.Join(root, hostfiles.VerifyTimerPath)}
	cmd := exec.Command(analyze, append([]string{"verify"}, units...)...)
	cmd.Env = append(os.Environ(), "MANPATH="+filepath.Join(root, "usr/share/man"), "SYSTEMD_LOG_LEVEL=notice")
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) != 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// Without the man pages, verify fails: it does check them.
	cmd = exec.Command(analyze, append([]string{"verify"}, units...)...)
	cmd.Env = append(os.Environ(), "MANPATH="+t.TempDir())
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "man dmsnap-watch(8)") {
		t.Fatalf("systemd-analyze verify without the man pages: %v\n%s", err, out)
	}
	// How exposed the watcher is, as systemd rates it (for the log).
	out, _ = exec.Command(analyze, "security", "--offline=yes", units[0]).CombinedOutput()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	t.Logf("systemd-analyze security: %s", lines[len(lines)-1])
}
