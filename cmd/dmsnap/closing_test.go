//go:build !vm

package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/session"
)

// A restore of a device whose only finished session is still closing (its
// conversion has not run yet) says so, and that a retry will do, instead of
// "nothing to restore".
func TestRestoreSaysTheSessionIsClosing(t *testing.T) {
	w := newWorld(t)
	w.sys.Prober.Add("/dev/sdb1", sdb1)
	if code, _, errOut := w.run(t, "", "activate", "/dev/sdb1"); code != exitOK {
		t.Fatalf("activate: %s", errOut)
	}
	m := w.sys.Manager(w.state, w.store)
	origin := w.sys.Kernel.OriginDev("sdb1")
	w.sys.Mount(origin, "/mnt", "ext4")
	if _, err := m.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	w.sys.FailCalls("Convert ", errors.New("not yet"))
	w.sys.Unmount(origin)
	m.Reconcile(context.Background()) // fails at the conversion: session 1 stays closing
	closing := false
	for _, s := range w.registry(t).Device("sdb1").Sessions {
		closing = closing || (s.N == 1 && s.State == session.SessionClosing)
	}
	if !closing {
		t.Fatalf("session 1 is not closing: %+v", w.registry(t).Device("sdb1").Sessions)
	}
	code, _, errOut := w.run(t, "", "restore", "sdb1", "--session", "latest", "--yes")
	if code == exitOK || !strings.Contains(errOut, "session 1 is closing") || !strings.Contains(errOut, "retry") {
		t.Fatalf("restore while session 1 is closing: exit %d: %s", code, errOut)
	}
}
