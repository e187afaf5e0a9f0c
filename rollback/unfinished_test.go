package rollback

import (
	"context"
	"errors"
	"io/fs"
	"strings"
	"syscall"
	"testing"

	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

// Regression: a restore with --dry-run or --to ran while a crash had left a
// session closing (not converted): the plan silently lacked its pre-images.
// Only the live session may be left out; an ending one refuses.
func TestRestoreRefusesUnfinishedSessions(t *testing.T) {
	r := &Restorer{Name: "sdb1", Active: &session.Device{Name: "sdb1", Sessions: []*session.Session{
		{N: 4, State: session.SessionArmed},
	}}}
	if err := r.RefuseUnfinished(); err != nil {
		t.Fatalf("only the armed session: %v", err)
	}
	for _, st := range []session.SessionState{session.SessionClosing, session.SessionInvalid} {
		r.Active.Sessions = []*session.Session{{N: 3, State: st}, {N: 4, State: session.SessionArmed}}
		err := r.RefuseUnfinished()
		if err == nil || !strings.Contains(err.Error(), "session 3 of sdb1 is still being closed") || !strings.Contains(err.Error(), "dmsnap attach sdb1") {
			t.Errorf("%s session: error %v", st, err)
		}
	}
	if err := (&Restorer{Name: "img"}).RefuseUnfinished(); err != nil {
		t.Errorf("a device that is not activated: %v", err)
	}
}

// TestRestoreRefusesUnreadableSession: a restore through a session the OS
// would not read says so, apart from damage, (snapstore.ErrCannotVerify: exit 5); it used to call
// the session damaged.
func TestRestoreRefusesUnreadableSession(t *testing.T) {
	osErr := &fs.PathError{Op: "open", Path: "/snapshot/sdb1_1700000000/meta.json", Err: syscall.EACCES}
	info := snapstore.SessionInfo{ID: "sdb1_1700000000", Name: "sdb1", Status: snapstore.StatusUnreadable,
		Err: snapstore.ClassifyReadError(osErr)}
	r := &Restorer{Name: "sdb1"}
	_, _, err := r.plan(context.Background(), []snapstore.SessionInfo{info}, nil)
	if err == nil || !errors.Is(err, snapstore.ErrCannotVerify) || !errors.Is(err, syscall.EACCES) ||
		!strings.Contains(err.Error(), "not damage") || strings.Contains(err.Error(), "damaged") || !strings.Contains(err.Error(), "nothing was written") {
		t.Fatalf("plan through an unreadable session: %v ", err)
	}
}
