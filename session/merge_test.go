package session_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/session"
)

// fakeMerges is session.MergeKernel with a merge the test moves along.
type fakeMerges struct {
	p       session.MergeProgress
	calls   []string
	resumes bool // ResumeMerge finds chunks left
}

func (f *fakeMerges) MergeStatus(_ context.Context, name string) (session.MergeProgress, error) {
	return f.p, nil
}

func (f *fakeMerges) EndMerge(_ context.Context, name string) error {
	f.calls = append(f.calls, "EndMerge "+name)
	f.p = session.MergeProgress{}
	return nil
}

func (f *fakeMerges) RemoveCOW(_ context.Context, file string) error {
	f.calls = append(f.calls, "RemoveCOW "+filepath.Base(file))
	if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func (f *fakeMerges) ResumeMerge(_ context.Context, name, file string, chunkSectors uint32) (bool, error) {
	f.calls = append(f.calls, "ResumeMerge "+name)
	if f.resumes {
		f.p = session.MergeProgress{Merging: true, Allocated: 48, Metadata: 16}
	}
	return f.resumes, nil
}

// startMerge records a running merge of sdb1 recorded by its armed session.
func (w *world) startMerge(phase string) session.Merge {
	w.t.Helper()
	cur := w.device().Current()
	cow := filepath.Join(w.state, "merges", "sdb1.cow")
	if err := os.MkdirAll(filepath.Dir(cow), 0o700); err != nil {
		w.t.Fatal(err)
	}
	if err := os.WriteFile(cow, []byte("cow"), 0o600); err != nil {
		w.t.Fatal(err)
	}
	mg := session.Merge{Device: "sdb1", Session: "sdb1_1600000000", COW: cow, Recording: cur.N, Started: t0, Phase: phase}
	if err := session.SaveMerges(w.state, []session.Merge{mg}); err != nil {
		w.t.Fatal(err)
	}
	return mg
}

func (w *world) merges() []session.Merge {
	w.t.Helper()
	ms, err := session.LoadMerges(w.state)
	if err != nil {
		w.t.Fatal(err)
	}
	return ms
}

func TestFinishMergesWaitsThenRestoresTheStack(t *testing.T) {
	w := newWorld(t)
	w.activate()
	rec := w.device().Current()
	mg := w.startMerge(session.MergeRunning)
	k := &fakeMerges{p: session.MergeProgress{Merging: true, Allocated: 1040, Metadata: 16, Total: 4096}}

	outs, err := w.manager().FinishMerges(bgctx, k)
	if err != nil {
		t.Fatal(err)
	}
	if len(outs) != 1 || outs[0].Finished || outs[0].Progress.Remaining() != 1024 || len(k.calls) != 0 {
		t.Fatalf("running merge: %+v, calls %v", outs, k.calls)
	}
	if len(w.merges()) != 1 {
		t.Fatal("a running merge lost its record")
	}

	k.p.Allocated = 16 // only metadata left: done
	outs, err = w.manager().FinishMerges(bgctx, k)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"EndMerge sdb1", "RemoveCOW sdb1.cow"}; strings.Join(k.calls, ",") != strings.Join(want, ",") {
		t.Fatalf("calls %v, want %v", k.calls, want)
	}
	if len(outs) != 1 || !outs[0].Finished || outs[0].Undo != filepath.Base(rec.Dir) {
		t.Fatalf("finished merge: %+v, want undo %s", outs, filepath.Base(rec.Dir))
	}
	if len(w.merges()) != 0 {
		t.Fatal("merge record left")
	}
	if _, err := os.Stat(mg.COW); !os.IsNotExist(err) {
		t.Fatalf("merge store left: %v", err)
	}
	// The recording session was closed (it has an ID to restore) and the
	// next one armed.
	w.steady(rec.N+1, false)
}

func TestFinishMergesLeavesAMountedRecordingSessionOpen(t *testing.T) {
	w := newWorld(t)
	w.activate()
	rec := w.device().Current()
	w.startMerge(session.MergeRunning)
	w.mount()
	w.reconcile()
	k := &fakeMerges{p: session.MergeProgress{Merging: true, Allocated: 16, Metadata: 16}}
	outs, err := w.manager().FinishMerges(bgctx, k)
	if err != nil {
		t.Fatal(err)
	}
	if len(outs) != 1 || !outs[0].Finished || outs[0].Undo != "" {
		t.Fatalf("%+v", outs)
	}
	if cur := w.device().Current(); cur.N != rec.N || cur.State != session.SessionOpen {
		t.Fatalf("recording session %+v, want session %d still open", cur, rec.N)
	}
}

func TestFinishMergesAfterTheStackWasRebuilt(t *testing.T) {
	// The origin is not merging: a record still starting whose store is
	// gone is a restore that never got its table (dropped); one starting
	// with its store, or running, may be a merge a reboot interrupted — a
	// power cut right after the kernel took the table leaves the record at
	// starting — so it is resumed (or dropped when the store holds
	// nothing).
	for _, c := range []struct {
		phase   string
		noStore bool
		resumes bool
		mounted bool
		calls   string
		kept    bool
		problem bool
		undo    bool // the session that recorded the merge is closed: it undoes the restore
	}{
		{phase: session.MergeStarting, noStore: true, calls: "RemoveCOW sdb1.cow"},
		{phase: session.MergeStarting, resumes: true, calls: "ResumeMerge sdb1", kept: true},
		{phase: session.MergeStarting, calls: "ResumeMerge sdb1,RemoveCOW sdb1.cow", undo: true},
		{phase: session.MergeRunning, resumes: true, calls: "ResumeMerge sdb1", kept: true},
		{phase: session.MergeRunning, calls: "ResumeMerge sdb1,RemoveCOW sdb1.cow", undo: true},
		{phase: session.MergeRunning, resumes: true, mounted: true, kept: true, problem: true},
	} {
		w := newWorld(t)
		w.activate()
		mg := w.startMerge(c.phase)
		if c.noStore {
			os.Remove(mg.COW)
		}
		if c.mounted {
			w.mount()
		}
		k := &fakeMerges{resumes: c.resumes}
		outs, err := w.manager().FinishMerges(bgctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(k.calls, ","); got != c.calls {
			t.Errorf("%+v: calls %q, want %q", c, got, c.calls)
		}
		if kept := len(w.merges()) == 1; kept != c.kept {
			t.Errorf("%+v: record kept %v", c, kept)
		}
		if len(outs) != 1 || (outs[0].Problem != "") != c.problem {
			t.Errorf("%+v: outcome %+v", c, outs)
		}
		// A merge that ran and was finished after a crash (the watcher died
		// between its steps) closes its recording session as the normal
		// end does, so the next session starts from the restored state.
		if len(outs) == 1 && (outs[0].Undo != "") != c.undo {
			t.Errorf("%+v: undo session %q, want one: %v", c, outs[0].Undo, c.undo)
		}
	}
}

func TestDeactivateRefusesOpenViewsAndMerges(t *testing.T) {
	w := newWorld(t)
	w.activate()
	views := []session.View{
		{ID: "sdb1_1600000000", Name: "sdb1", DM: "dmsnap-sdb1-at1600000000", COW: filepath.Join(w.state, "views", "sdb1_1600000000.cow")},
		{ID: "other_1", Name: "other", DM: "dmsnap-other-at1", COW: filepath.Join(w.state, "views", "other_1.cow")},
	}
	if err := session.SaveViews(w.state, views); err != nil {
		t.Fatal(err)
	}
	err := w.manager().Deactivate(bgctx, "sdb1")
	if !errors.Is(err, session.ErrBusy) || !strings.Contains(err.Error(), "sdb1_1600000000") || strings.Contains(err.Error(), "other_1") {
		t.Fatalf("deactivate with an open view: %v", err)
	}
	w.steady(1, false) // nothing changed
	if err := session.SaveViews(w.state, views[1:]); err != nil {
		t.Fatal(err)
	}
	w.startMerge(session.MergeRunning)
	if err := w.manager().Deactivate(bgctx, "sdb1"); !errors.Is(err, session.ErrBusy) || !strings.Contains(err.Error(), "instant restore") {
		t.Fatalf("deactivate during a merge: %v", err)
	}
	w.steady(1, false)
	if err := session.SaveMerges(w.state, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.manager().Deactivate(bgctx, "sdb1"); err != nil {
		t.Fatalf("deactivate with another device's view open: %v", err)
	}
}
