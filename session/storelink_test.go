package session_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/session"
)

// symlinkStore makes w's store a directory reached through a root-owned
// symlink, with another directory beside it; it returns the link, the real
// store and the other directory.
func symlinkStore(t *testing.T, w *world) (link, real, other string) {
	t.Helper()
	base := filepath.Dir(w.store)
	real, other, link = filepath.Join(base, "real"), filepath.Join(base, "other"), filepath.Join(base, "link")
	for _, d := range []string{real, other} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	w.store = link
	return link, real, other
}

func swap(t *testing.T, link, to string) {
	t.Helper()
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(to, link); err != nil {
		t.Fatal(err)
	}
}

// Activate records the store's real path, so that the symlink it was given
// through, changed later, cannot redirect the sessions.
func TestActivateRecordsTheRealStore(t *testing.T) {
	w := newWorld(t)
	link, real, other := symlinkStore(t, w)
	d := w.activate()
	if d.Store != real {
		t.Fatalf("registered store %s, want the real path %s", d.Store, real)
	}
	// The manager is still given the symlink (--store): its sessions are
	// known by their real directories all the same, never "relocated" to
	// the path through the symlink.
	w.reconcile()
	if s := w.device().Current(); s == nil || filepath.Dir(s.Dir) != real {
		t.Fatalf("armed session %+v, want it in %s", s, real)
	}
	swap(t, link, other)
	w.tick(time.Minute)
	if _, err := w.manager().Rotate(bgctx, "sdb1", "test"); err != nil {
		t.Fatal(err)
	}
	s := w.device().Current()
	if s == nil || filepath.Dir(s.Dir) != real {
		t.Fatalf("session armed after the swap: %+v, want it in %s", s, real)
	}
	if ents, _ := os.ReadDir(other); len(ents) != 0 {
		t.Fatalf("the swapped symlink redirected sessions into %s: %v", other, ents)
	}
}

// A store recorded as a symlink (by an older dmsnap, or edited by hand) is
// resolved when a session is armed: the new session goes where the checked
// path leads, and a symlink owned by someone else stops arming.
func TestArmUsesTheResolvedStore(t *testing.T) {
	w := newWorld(t)
	link, real, _ := symlinkStore(t, w)
	w.activate()
	reg := w.registry()
	reg.Device("sdb1").Store = link
	if err := reg.Save(w.state); err != nil {
		t.Fatal(err)
	}
	w.tick(time.Minute)
	rep, err := w.manager().Rotate(bgctx, "sdb1", "test")
	if err != nil {
		t.Fatal(err)
	}
	if s := w.device().Current(); s == nil || filepath.Dir(s.Dir) != real {
		t.Fatalf("session armed through the symlink: %+v, want it in %s", s, real)
	}
	// Armed there at once, not armed through the symlink and moved after.
	for _, a := range rep.Done {
		if a.Kind == session.ActRelocate {
			t.Fatalf("the armed session was relocated: %+v", rep.Done)
		}
	}

	if err := os.Lchown(link, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	w.tick(time.Minute)
	_, err = w.manager().Rotate(bgctx, "sdb1", "test")
	rep, _ = w.manager().Reconcile(bgctx)
	all := errors.Join(err, errors.New(strings.Join(issues(rep), "; ")))
	if !strings.Contains(all.Error(), "chown -h root "+link) {
		t.Fatalf("arming through a symlink owned by uid 4242: %v", all)
	}
	for _, s := range w.device().Sessions {
		if s.Dir != "" && filepath.Dir(s.Dir) != real {
			t.Fatalf("session %d in %s", s.N, s.Dir)
		}
	}
}

func issues(rep session.Report) []string {
	var out []string
	for _, i := range rep.Issues {
		out = append(out, i.String())
	}
	return out
}
