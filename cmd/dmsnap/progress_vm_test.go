//go:build vm

package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/dmsnap/dmsnap/internal/vmtest"
)

// TestCLIRestoreProgressIn80Columns runs a restore (16 MiB) on a terminal of 80
// columns (a tmux pane) and reads the screen back: each phase (verify,
// write) is one line, drawn to the width, ended with "done", and no line
// wrapped or was left behind half drawn.
func TestCLIRestoreProgressIn80Columns(t *testing.T) {
	c := newCLI(t)
	raw := rawDevice(t, 64<<20)
	const name = "tp"
	origin := "/dev/mapper/dmsnap-" + name
	c.activate(t, raw, name)
	w := c.watch(t)
	mnt := t.TempDir()
	vmtest.Run(t, "mount", origin, mnt)
	vmtest.Sh(t, "dd if=/dev/urandom of="+mnt+"/big bs=1M count=16 conv=fsync 2>/dev/null")
	vmtest.Run(t, "umount", mnt)
	var ss []listed
	eventually(t, "the session to close", 60*time.Second, func() bool {
		ss = c.list(t, name)
		return countStates(ss)["closed"] == 1
	})
	w.stop(t)

	const session = "dmsnap-progress"
	script := fmt.Sprintf("%s --state %s --store %s restore %s --session %s --yes; echo EXIT=$?; sleep 600",
		dmsnapBin, c.state, c.store, name, ss[0].ID)
	tmux := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("tmux", args...)
		// tmux wants a UTF-8 locale; glibc has C.UTF-8 built in.
		cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8", "TERM=xterm")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("tmux %q: %v\n%s", args, err, out)
		}
		return string(out)
	}
	tmux("-u", "new-session", "-d", "-s", session, "-x", "80", "-y", "40", "sh", "-c", script)
	t.Cleanup(func() { exec.Command("tmux", "kill-server").Run() })
	var screen string
	eventually(t, "the restore to end", 120*time.Second, func() bool {
		// -J joins lines the terminal wrapped: a wrapped line comes back
		// longer than the pane.
		screen = tmux("capture-pane", "-p", "-J", "-t", session)
		return strings.Contains(screen, "EXIT=")
	})
	t.Logf("screen:\n%s", screen)
	if !strings.Contains(screen, "EXIT=0") {
		t.Fatalf("restore failed:\n%s", screen)
	}
	phases := map[string]int{}
	for _, line := range strings.Split(strings.TrimRight(screen, "\n"), "\n") {
		if n := utf8.RuneCountInString(line); n > 80 {
			t.Errorf("a line of %d columns (wrapped on 80): %q", n, line)
		}
		f := strings.Fields(line)
		if len(f) > 0 && (f[0] == "verify" || f[0] == "write") {
			phases[f[0]]++
			if !strings.HasSuffix(strings.TrimSpace(line), "done") {
				t.Errorf("phase line not finished: %q", line)
			}
		}
	}
	if phases["verify"] != 1 || phases["write"] != 1 {
		t.Errorf("phase lines: %v, want one verify and one write", phases)
	}
}
