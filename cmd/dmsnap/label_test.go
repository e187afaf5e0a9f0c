//go:build !vm

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/session/sessiontest"
	"github.com/dmsnap/dmsnap/snapstore"
)

// listJSON runs sessions list --json.
func (w *world) listJSON(t *testing.T) []sessionJSON {
	t.Helper()
	code, out, errOut := w.run(t, "", "sessions", "list", "--json")
	if code != exitOK {
		t.Fatalf("sessions list: exit %d: %s", code, errOut)
	}
	var ss []sessionJSON
	if err := decodeResult(out, &ss); err != nil {
		t.Fatal(err)
	}
	return ss
}

// activate --label and label-next label the live session, which carries
// the label into its meta.json when it closes.
func TestLabelTheLiveSession(t *testing.T) {
	w := newWorld(t)
	w.sys.Prober.Add("/dev/sdb1", sdb1)
	if code, out, errOut := w.run(t, "", "activate", "/dev/sdb1", "--label", "fresh install", "--json"); code != exitOK || !strings.Contains(out, `"label": "fresh install"`) {
		t.Fatalf("activate --label: exit %d\n%s%s", code, out, errOut)
	}
	if st, err := sessiontest.ReadState(w.registry(t).Device("sdb1").Current().Dir); err != nil || st.Label != "fresh install" || st.Pinned {
		t.Fatalf("after activate --label: %+v %v", st, err)
	}
	code, out, errOut := w.run(t, "", "label-next", "before the upgrade", "sdb1", "--pin")
	if code != exitOK || !strings.Contains(out, `label "before the upgrade", pinned`) {
		t.Fatalf("label-next: exit %d\n%s%s", code, out, errOut)
	}
	// One device: its name may be left out.
	if code, out, errOut := w.run(t, "", "label-next", "--clear"); code != exitOK || !strings.Contains(out, "no label, pinned") {
		t.Fatalf("label-next --clear: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := w.run(t, "", "label-next", "before the upgrade"); code != exitOK {
		t.Fatalf("label-next: exit %d\n%s%s", code, out, errOut)
	}
	dir := w.registry(t).Device("sdb1").Current().Dir
	if st, err := sessiontest.ReadState(dir); err != nil || st.Label != "before the upgrade" || !st.Pinned {
		t.Fatalf("state of the armed session: %+v %v", st, err)
	}
	// Closed (a mount and unmount), it keeps them.
	m := w.sys.Manager(w.state, w.store)
	w.sys.Mount(w.sys.Kernel.OriginDev("sdb1"), "/mnt", "ext4")
	if _, err := m.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	dir = w.registry(t).Device("sdb1").Current().Dir // renamed at the mount
	// Mounted, the live session began at the mount: label-next says so.
	if code, _, errOut := w.run(t, "", "label-next", "x"); code != exitOK || !strings.Contains(errOut, "the label marks the state before that mount") {
		t.Fatalf("label-next while mounted: exit %d %q", code, errOut)
	}
	if code, _, errOut := w.run(t, "", "label-next", "before the upgrade"); code != exitOK {
		t.Fatal(errOut)
	}
	w.sys.Unmount(w.sys.Kernel.OriginDev("sdb1"))
	if _, err := m.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	if m, err := sessiontest.ReadMeta(dir); err != nil || m.Label != "before the upgrade" || !m.Pinned || m.Final != "complete" {
		t.Fatalf("meta of the closed session: %+v %v", m, err)
	}
	if cur := w.registry(t).Device("sdb1").Current(); cur == nil || cur.Dir == dir {
		t.Fatalf("no new armed session: %+v", cur)
	} else if st, err := sessiontest.ReadState(cur.Dir); err != nil || st.Label != "" || st.Pinned {
		t.Fatalf("the next armed session inherited the mark: %+v %v", st, err)
	}
	for _, args := range [][]string{
		{"label-next"},
		{"label-next", "x", "--pin", "--unpin"},
		{"label-next", "x", "sdb1", "--clear"},
		{"label-next", "two\nlines"},
		{"sessions", "label", "sdb1_1"},
		{"sessions", "label", filepath.Base(dir), "x", "--clear"},
	} {
		if code, _, _ := w.run(t, "", args...); code != exitUsage {
			t.Errorf("dmsnap %q: exit %d, want %d", args, code, exitUsage)
		}
	}
	if code, _, errOut := w.run(t, "", "label-next", "x", "sdc1"); code != exitFailure || !strings.Contains(errOut, "not activated") {
		t.Errorf("label-next of a device not activated: exit %d %s", code, errOut)
	}
}

// sessions label sets and clears a finished session's label and pin in its
// meta.json, which still verifies; prune stops at a pinned session, and
// removes it once unpinned; a seed session takes neither.
func TestLabelAndPinFinishedSessions(t *testing.T) {
	w := newWorld(t)
	now := time.Now().Truncate(time.Second)
	a := closedSession(t, w.store, "sdb1", now.Add(-3*time.Hour))
	b := closedSession(t, w.store, "sdb1", now.Add(-2*time.Hour))
	closedSession(t, w.store, "sdb1", now.Add(-time.Hour))
	code, out, errOut := w.run(t, "", "sessions", "label", filepath.Base(b), "before the upgrade", "--pin", "--json")
	if code != exitOK {
		t.Fatalf("label: exit %d\n%s%s", code, out, errOut)
	}
	var res labelled
	if err := decodeResult(out, &res); err != nil || res.ID != filepath.Base(b) || res.Label != "before the upgrade" || !res.Pinned {
		t.Fatalf("label --json: %+v %v", res, err)
	}
	if code, out, errOut := w.run(t, "", "sessions", "verify", filepath.Base(b)); code != exitOK {
		t.Fatalf("verify after labelling: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = w.run(t, "", "sessions", "show", filepath.Base(b))
	if code != exitOK || !strings.Contains(out, "before the upgrade") || !strings.Contains(out, "pinned:") {
		t.Fatalf("show: %s", out)
	}
	code, out, errOut = w.run(t, "", "sessions", "prune", "sdb1", "--keep", "0")
	if _, err := os.Stat(a); code != exitOK || err == nil || !strings.Contains(errOut, "pinned") {
		t.Fatalf("prune --keep 0 with b pinned: exit %d, a still there %v\n%s%s", code, err == nil, out, errOut)
	}
	if _, err := os.Stat(b); err != nil {
		t.Fatalf("prune removed the pinned session: %v", err)
	}
	// Unpinning lets retention and prune remove it: the password first.
	setPassword(t, "hunter2")
	metaB, _ := os.ReadFile(filepath.Join(b, snapstore.MetaFile))
	if code, _, errOut := w.run(t, "wrong\n", "sessions", "label", filepath.Base(b), "--unpin", "--password-stdin"); code != exitBadPassword {
		t.Fatalf("unpin with a wrong password: exit %d %s", code, errOut)
	}
	if now, _ := os.ReadFile(filepath.Join(b, snapstore.MetaFile)); string(now) != string(metaB) {
		t.Fatal("a refused unpin changed meta.json")
	}
	if code, _, errOut := w.run(t, "", "sessions", "label", filepath.Base(b), "new label"); code != exitOK {
		t.Fatalf("a label needs no password: exit %d %s", code, errOut)
	}
	if code, _, errOut := w.run(t, "hunter2\n", "sessions", "label", filepath.Base(b), "before the upgrade", "--unpin", "--password-stdin"); code != exitOK {
		t.Fatalf("unpin: exit %d %s", code, errOut)
	}
	ss := w.listJSON(t)
	if len(ss) != 2 || ss[0].Label != "before the upgrade" || ss[0].Pinned {
		t.Fatalf("after --unpin: %+v", ss)
	}
	if code, _, errOut := w.run(t, "hunter2\n", "sessions", "prune", "sdb1", "--keep", "1", "--password-stdin"); code != exitOK {
		t.Fatalf("prune after unpin: exit %d %s", code, errOut)
	}
	if _, err := os.Stat(b); err == nil {
		t.Fatal("the unpinned session was not pruned")
	}

	// The seed's meta.json stays the seed's.
	seed := closedSession(t, w.store, "sdc1", now.Add(-time.Hour))
	metaPath := filepath.Join(seed, snapstore.MetaFile)
	raw, _ := os.ReadFile(metaPath)
	var m snapstore.Meta
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	m.Dmsnap = nil
	seedBytes, _ := snapstore.EncodeMeta(m)
	if err := os.WriteFile(metaPath, seedBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := w.run(t, "", "sessions", "label", filepath.Base(seed), "x"); code != exitFailure || !strings.Contains(errOut, "seed") {
		t.Fatalf("label of a seed session: exit %d %s", code, errOut)
	}
	if now, _ := os.ReadFile(metaPath); string(now) != string(seedBytes) {
		t.Fatal("a refused label changed the seed session's meta.json")
	}
}
