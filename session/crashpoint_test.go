//go:build crashpoints

package session

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// TestCrashpoint runs this test binary again as a child that reaches the
// point "a" three times, printing after each arrival, and checks where the
// child died (or that it did not).
func TestCrashpoint(t *testing.T) {
	if os.Getenv("DMSNAP_CRASHPOINT_CHILD") == "1" {
		for i := 1; i <= 3; i++ {
			Crashpoint("b")
			Crashpoint("a")
			fmt.Printf("passed %d\n", i)
		}
		os.Exit(0)
	}
	for _, tc := range []struct {
		env    string
		passed int  // arrivals that returned
		killed bool // died by SIGKILL
	}{
		{"", 3, false},
		{"a", 0, true},
		{"a#1", 0, true},
		{"a#3", 2, true},
		{"a#4", 3, false},
		{"c", 3, false},
		{"a#0", 3, false}, // malformed: nothing armed
		{"a#x", 3, false},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashpoint$")
		cmd.Env = append(os.Environ(), "DMSNAP_CRASHPOINT_CHILD=1", CrashpointEnv+"="+tc.env)
		out, err := cmd.Output()
		killed := false
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			ws, ok := ee.Sys().(syscall.WaitStatus)
			killed = ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
			if !killed {
				t.Errorf("%s=%q: %v (%s)", CrashpointEnv, tc.env, err, ee.Stderr)
			}
		} else if err != nil {
			t.Fatal(err)
		}
		passed := strings.Count(string(out), "passed ")
		if passed != tc.passed || killed != tc.killed {
			t.Errorf("%s=%q: passed %d, killed %v; want %d, %v", CrashpointEnv, tc.env, passed, killed, tc.passed, tc.killed)
		}
		if killed && !strings.Contains(string(ee.Stderr), "crash point a reached") {
			t.Errorf("%s=%q: stderr %q does not name the point", CrashpointEnv, tc.env, ee.Stderr)
		}
	}
}
