package main

import (
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/session"
)

// Regression: a restore with --dry-run or --to ran while a crash had left a
// session closing (not converted): the plan silently lacked its pre-images.
// Only the live session may be left out; an ending one refuses.
func TestRestoreRefusesUnfinishedSessions(t *testing.T) {
	r := &restorer{name: "sdb1", active: &session.Device{Name: "sdb1", Sessions: []*session.Session{
		{N: 4, State: session.SessionArmed},
	}}}
	if err := r.refuseUnfinished(); err != nil {
		t.Fatalf("only the armed session: %v", err)
	}
	for _, st := range []session.SessionState{session.SessionClosing, session.SessionInvalid} {
		r.active.Sessions = []*session.Session{{N: 3, State: st}, {N: 4, State: session.SessionArmed}}
		err := r.refuseUnfinished()
		if err == nil || !strings.Contains(err.Error(), "session 3 of sdb1 is still being closed") || !strings.Contains(err.Error(), "dmsnap attach sdb1") {
			t.Errorf("%s session: error %v", st, err)
		}
	}
	if err := (&restorer{name: "img"}).refuseUnfinished(); err != nil {
		t.Errorf("a device that is not activated: %v", err)
	}
}
