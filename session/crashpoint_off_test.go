//go:build !crashpoints

package session

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestReleaseIgnoresCrashpoints runs this test binary again as a child with
// DMSNAP_CRASHPOINT aimed at every crash point the child then reaches (the
// life cycle's, and a first, third or later arrival): a release build must
// go on as if it were unset, never SIGKILL itself.
func TestReleaseIgnoresCrashpoints(t *testing.T) {
	points := append([]string{"restore:write"}, Crashpoints...)
	if os.Getenv("DMSNAP_CRASHPOINT_CHILD") == "1" {
		for i := 1; i <= 3; i++ {
			for _, p := range points {
				Crashpoint(p)
			}
			fmt.Printf("passed %d\n", i)
		}
		os.Exit(0)
	}
	if CrashpointsBuilt {
		t.Fatal("CrashpointsBuilt in a build without the crashpoints tag")
	}
	for _, arm := range []string{points[0], points[1], points[len(points)-1], points[2] + "#3"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestReleaseIgnoresCrashpoints$")
		cmd.Env = append(os.Environ(), "DMSNAP_CRASHPOINT_CHILD=1", CrashpointEnv+"="+arm)
		out, err := cmd.CombinedOutput()
		if err != nil || strings.Count(string(out), "passed ") != 3 {
			t.Errorf("%s=%s: the release build's child ended with %v after %q; want it to ignore the crash point",
				CrashpointEnv, arm, err, out)
		}
	}
}
