package session

import (
	"testing"

	"github.com/dmsnap/dmsnap/snapstore"
)

// TestCrashpointsAreSteps checks that every listed crash point is a step
// kind or one of the named mid-step points, so a renamed step cannot leave
// the crash tests aiming at a point never reached.
func TestCrashpointsAreSteps(t *testing.T) {
	kinds := map[string]bool{CrashpointOpenMarked: true}
	for _, k := range []ActionKind{ActOpen, ActClose, ActNewSession, ActArm, ActAttach, ActMarkArmed, ActRemoveSnapshot, ActConvert, ActForgetSession} {
		kinds[string(k)] = true
	}
	for _, s := range snapstore.ConvertSteps {
		kinds[CrashpointConvert+s] = true
	}
	for _, p := range Crashpoints {
		if !kinds[p] {
			t.Errorf("crash point %q is not a step", p)
		}
		delete(kinds, p)
	}
	if len(kinds) != 0 {
		t.Errorf("steps without a crash point in Crashpoints: %v", kinds)
	}
}
