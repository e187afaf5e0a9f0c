package rollback_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/internal/devid"
	"github.com/dmsnap/dmsnap/restore"
	"github.com/dmsnap/dmsnap/rollback"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/session/sessiontest"
	"github.com/dmsnap/dmsnap/snapstore"
)

// The flows of package rollback on the host, against session/sessiontest's
// fakes with ModelData: the device is a file, written in place of the
// origin, and each session records the pre-images of what changed in it
// as a real store session. The VM suite proves the same flows on
// device-mapper; these prove the sequencing, and what a crash between any
// two steps leaves.

const (
	chunk   = 4096
	devSize = 16 * chunk
)

type world struct {
	sys          *sessiontest.System
	dev          string
	state, store string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	sys := sessiontest.NewSystem()
	sys.ModelData()
	dir := t.TempDir()
	w := &world{sys: sys, dev: filepath.Join(dir, "sdb1.img"), state: filepath.Join(dir, "state"), store: filepath.Join(dir, "store")}
	for _, d := range []string{w.state, w.store} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	b := make([]byte, devSize)
	rand.Read(b)
	if err := os.WriteFile(w.dev, b, 0o600); err != nil {
		t.Fatal(err)
	}
	sys.Prober.Add(w.dev, session.Identity{Dev: session.DevNum{Major: 8, Minor: 17}, Size: devSize,
		Stable: &devid.ID{Kind: devid.KindDisk, Serial: "TEST-SDB"}})
	if _, err := w.manager().Activate(context.Background(), session.ActivateRequest{Device: w.dev, Name: "sdb1", ChunkSize: chunk, Store: w.store}); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *world) manager() *session.Manager {
	m := w.sys.Manager(w.state, w.store)
	m.LockWait = 2 * time.Second
	return m
}

func (w *world) config(p restore.Progress) rollback.Config {
	return rollback.Config{State: w.state, Store: w.store, Manager: w.manager, Progress: p,
		OriginPath: func(string) string { return w.dev }}
}

func (w *world) read(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(w.dev)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// session writes chunks of the device (a session's writes) and closes the
// session that recorded them, arming the next. It returns the closed
// session's ID.
func (w *world) session(t *testing.T, chunks ...int) string {
	t.Helper()
	cur := w.current(t)
	w.write(t, chunks...)
	if _, err := w.manager().Rotate(context.Background(), "sdb1", "test"); err != nil {
		t.Fatal(err)
	}
	return filepath.Base(cur.Dir)
}

// write writes random data over chunks of the device.
func (w *world) write(t *testing.T, chunks ...int) {
	t.Helper()
	f, err := os.OpenFile(w.dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, c := range chunks {
		b := make([]byte, chunk)
		rand.Read(b)
		if _, err := f.WriteAt(b, int64(c)*chunk); err != nil {
			t.Fatal(err)
		}
	}
}

func (w *world) current(t *testing.T) *session.Session {
	t.Helper()
	reg, err := session.LoadRegistry(w.state)
	if err != nil {
		t.Fatal(err)
	}
	return reg.Device("sdb1").Current()
}

// restore restores the device to its state before session id, undoably,
// and returns the session that undoes it.
func (w *world) restore(t *testing.T, id string, p restore.Progress) (*rollback.Result, error) {
	t.Helper()
	r, err := rollback.Open(w.config(p), "sdb1", id)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	sessions, err := r.Sessions()
	if err != nil {
		return nil, err
	}
	target, err := r.Find(sessions, id)
	if err != nil {
		return nil, err
	}
	if err := r.CheckTarget(sessions, target); err != nil {
		return nil, err
	}
	pd, err := r.Prepare(context.Background(), sessions, target, rollback.DeviceOptions{})
	if err != nil {
		return nil, err
	}
	return pd.Run(context.Background())
}

func (w *world) mustRestore(t *testing.T, id string, want []byte, what string) *rollback.Result {
	t.Helper()
	res, err := w.restore(t, id, nil)
	if err != nil {
		t.Fatalf("%s: restore to before %s: %v", what, id, err)
	}
	if !bytes.Equal(w.read(t), want) {
		t.Fatalf("%s: after the restore to before %s the device differs from its state then", what, id)
	}
	if !res.Undoable || res.Undo == "" {
		t.Fatalf("%s: the restore to before %s cannot be undone: %+v", what, id, res)
	}
	return res
}

// TestUndoableRestore: a restore through the origin puts the device back
// byte for byte, across sessions; the session that recorded it undoes it;
// undoing the undo goes forward again.
func TestUndoableRestore(t *testing.T) {
	w := newWorld(t)
	a := w.read(t)
	s1 := w.session(t, 1, 2, 15)
	b := w.read(t)
	s2 := w.session(t, 2, 7)
	// Written while the next session is armed, not closed yet: the
	// restore closes it first and undoes these writes too.
	w.write(t, 3, 7)
	c := w.read(t)

	res := w.mustRestore(t, s2, b, "back one session and the live one")
	// The plan: s2 and the session armed after it, which the restore
	// closed first.
	if res.Through != w.dev || len(res.Sessions) != 2 || res.Sessions[0] != s2 {
		t.Errorf("result: %+v", res)
	}
	w.mustRestore(t, res.Undo, c, "undo")
	res = w.mustRestore(t, s1, a, "back to the start, across the restore and its undo")
	undo := w.mustRestore(t, res.Undo, c, "undo")
	w.mustRestore(t, undo.Undo, a, "undo the undo")
	if len(w.sys.Violations) > 0 {
		t.Errorf("the fakes saw: %v", w.sys.Violations)
	}
}

// panicAt panics at the k-th write of a restore, as a crash half-way
// through the write pass would stop it.
type panicAt struct {
	restore.Quiet
	k, n    int
	writing bool
}

type writeCrash struct{}

func (p *panicAt) Begin(phase string, _ uint64) { p.writing = phase == "write" }

func (p *panicAt) Add(uint64) {
	if p.writing {
		if p.n++; p.n == p.k {
			panic(writeCrash{})
		}
	}
}

// TestUndoableRestoreCrashes: a restore killed between any two of its
// steps (before or after each call of the session fakes, at each write)
// leaves a device that the next command puts right: after the reconcile
// the watcher or attach runs first, the restore runs again to the same
// state, it can be undone to the state the crash left, and the state
// before the crashed restore is still reachable.
func TestUndoableRestoreCrashes(t *testing.T) {
	type crash struct {
		call  int  // the call-th mutating call of the fakes crashes (0: none)
		after bool // after its effect, not before
		write int  // the write-th write of the restore crashes (0: none)
	}
	// Each kind of crash at its first step, its second, ... until one is
	// placed past the restore's last step of that kind.
	kinds := []func(k int) crash{
		func(k int) crash { return crash{call: k} },
		func(k int) crash { return crash{call: k, after: true} },
		func(k int) crash { return crash{write: k} },
	}
	seen := map[string]int{}
	for _, kind := range kinds {
		for k := 1; ; k++ {
			if !crashOnce(t, kind(k).call, kind(k).after, kind(k).write, seen) {
				break
			}
		}
	}
	if seen["write"] == 0 || seen["Convert"] == 0 || seen["RemoveSnapshot"] == 0 || seen["AttachSnapshot"] == 0 {
		t.Fatalf("crashed at %v only: the fakes or the restore changed", seen)
	}
	t.Logf("crashed at %v", seen)
}

// crashOnce sets up a device with two sessions, runs the restore to before
// the first with the crash placed (crashedRestore) and checks what it
// left. It reports whether the restore crashed.
func crashOnce(t *testing.T, call int, after bool, write int, seen map[string]int) bool {
	t.Helper()
	c := fmt.Sprintf("call %d (after: %v), write %d", call, after, write)
	w := newWorld(t)
	a := w.read(t)
	s1 := w.session(t, 1, 2, 15)
	w.session(t, 2, 7)
	b := w.read(t)
	armed := w.current(t).N // closed by the restore first
	where := w.crashedRestore(t, s1, call, after, write)
	if where == "" {
		return false
	}
	seen[where]++
	// What the next command does first: finish what was interrupted.
	if _, err := w.manager().Reconcile(context.Background()); err != nil {
		t.Fatalf("crash at %s (%s): reconcile: %v", c, where, err)
	}
	left := w.read(t)
	res := w.mustRestore(t, s1, a, "after a crash at "+where)
	w.mustRestore(t, res.Undo, left, "undo after a crash at "+where)
	if !bytes.Equal(left, b) {
		// The crashed restore wrote: the session its first rotation
		// armed recorded that, and takes the device back to b.
		w.mustRestore(t, w.sessionNumbered(t, armed+1), b, "undo of the restore that crashed at "+where)
	}
	if len(w.sys.Violations) > 0 {
		t.Fatalf("crash at %s (%s): the fakes saw: %v", c, where, w.sys.Violations)
	}
	return true
}

// crashedRestore runs the restore to before id with a crash placed at the
// call-th mutating call of the fakes from now (before its effect, or after
// with after) or at its write-th write. It returns where it crashed: the
// call, "write", or "" when the restore ran to the end (the crash was
// placed past its last step; the device is then checked restored).
func (w *world) crashedRestore(t *testing.T, id string, call int, after bool, write int) (where string) {
	t.Helper()
	defer func() {
		switch v := recover().(type) {
		case nil:
		case sessiontest.Crash:
			where = strings.Fields(v.Call)[0]
		case writeCrash:
			where = "write"
		default:
			panic(v)
		}
		w.sys.CrashBefore(0)
	}()
	if after {
		w.sys.CrashAfter(call)
	} else {
		w.sys.CrashBefore(call)
	}
	if _, err := w.restore(t, id, &panicAt{k: write}); err != nil {
		t.Fatalf("restore with a crash placed at call %d (after: %v), write %d: %v", call, after, write, err)
	}
	return ""
}

// sessionNumbered is the ID of the device's session number n.
func (w *world) sessionNumbered(t *testing.T, n int) string {
	t.Helper()
	list, err := snapstore.ListSessions(w.store)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list {
		if s.Meta != nil && s.Meta.Dmsnap != nil && s.Meta.Dmsnap.Sequence == n {
			return s.ID
		}
	}
	t.Fatalf("no session numbered %d in %s", n, w.store)
	return ""
}

// TestDirectRestore: a device that is not activated (deactivated here) is
// restored by writing it directly, which no session records: it cannot be
// undone, and restores.log then refuses the sessions it left behind, a
// state the device never had. A dry run writes nothing.
func TestDirectRestore(t *testing.T) {
	w := newWorld(t)
	a := w.read(t)
	s1 := w.session(t, 1, 2, 15)
	s2 := w.session(t, 2, 7)
	c := w.read(t)
	if err := w.manager().Deactivate(context.Background(), "sdb1"); err != nil {
		t.Fatal(err)
	}
	// By name: the device is the one its newest session recorded.
	r, err := rollback.Open(w.config(nil), "sdb1", s2)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Active != nil || r.Name != "sdb1" || r.Device != w.dev {
		t.Fatalf("opened %s on %s (activated: %v), want sdb1 not activated, on %s", r.Name, r.Device, r.Active != nil, w.dev)
	}
	sessions, err := r.Sessions()
	if err != nil {
		t.Fatal(err)
	}
	// Deactivation closed the armed session: three closed sessions.
	if len(sessions) != 3 || sessions[0].ID != s1 || sessions[1].ID != s2 {
		t.Fatalf("sessions: %v", rollback.IDs(sessions))
	}
	target, err := r.Find(sessions, s1)
	if err != nil {
		t.Fatal(err)
	}
	dry, err := r.DryRun(context.Background(), sessions, target, false)
	if err != nil || !dry.DryRun || dry.Summary.Bytes != 4*chunk || !bytes.Equal(w.read(t), c) {
		t.Fatalf("dry run: %+v, %v (it must write nothing)", dry, err)
	}
	pd, err := r.Prepare(context.Background(), sessions, target, rollback.DeviceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := pd.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(w.read(t), a) || res.Undoable || res.Undo != "" || res.Active {
		t.Fatalf("direct restore: %+v; device restored: %v", res, bytes.Equal(w.read(t), a))
	}
	// The device no longer has the past s2 describes: a restore to before
	// s2 would write s2's pre-images over a, giving a state the device never had.
	r2, err := rollback.Open(w.config(nil), "sdb1", s2)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	sessions, _ = r2.Sessions()
	i, _ := r2.Find(sessions, s2)
	if err := r2.CheckTarget(sessions, i); err == nil {
		t.Fatalf("a restore to before %s after a direct restore to before %s was not refused", s2, s1)
	}
	if i, _ := r2.Find(sessions, s1); r2.CheckTarget(sessions, i) != nil {
		t.Errorf("restoring to before %s again is refused: %v", s1, r2.CheckTarget(sessions, i))
	}
}
