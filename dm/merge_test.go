//go:build !vm

package dm_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/dm"
	"golang.org/x/sys/unix"
)

func TestMergeStartStatusRotateEnd(t *testing.T) {
	f, s, _ := newStack(t)
	if err := s.Build(); err != nil {
		t.Fatal(err)
	}
	armed := cowLoop(t, f, 80<<20)
	if err := s.AddSnapshot(1, armed.Path, 8); err != nil {
		t.Fatal(err)
	}
	store := cowLoop(t, f, 8<<20)
	f.ResetLog()
	if err := s.StartMerge(store.Path, 8); err != nil {
		t.Fatal(err)
	}
	// LVM's order for an active origin: load, suspend, resume; the armed
	// snapshot stays.
	wantLog(t, f, "load dmsnap-sdb1 snapshot-merge", "suspend dmsnap-sdb1", "resume dmsnap-sdb1")
	wantDevices(t, f, "dmsnap-sdb1", "dmsnap-sdb1-real", "dmsnap-sdb1-snap1")
	if merging, err := s.Merging(); err != nil || !merging {
		t.Fatalf("Merging = %v, %v", merging, err)
	}
	real, _ := f.Info("dmsnap-sdb1-real")
	tbl, _ := f.Table("dmsnap-sdb1")
	if want := (dm.SnapshotMerge{Length: sdbSectors, Origin: real.Dev, COW: store.Dev, ChunkSectors: 8}); len(tbl) != 1 || mustParse(t, tbl[0]) != dm.Target(want) {
		t.Fatalf("origin table %v, want %+v", tbl, want)
	}

	f.SetSnapshotUsage("dmsnap-sdb1", 1000)
	st, merging, err := s.MergeStatus()
	if err != nil || !merging || st.MergeDone() || st.DataSectors() != 1000 {
		t.Fatalf("MergeStatus = %+v, %v, %v", st, merging, err)
	}
	if err := s.EndMerge(false); err == nil || !strings.Contains(err.Error(), "not finished") {
		t.Fatalf("EndMerge of a running merge: %v", err)
	}
	if err := s.StartMerge(store.Path, 8); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("second StartMerge: %v", err)
	}
	// Sessions rotate during a merge; the origin keeps its merge table.
	next := cowLoop(t, f, 80<<20)
	f.ResetLog()
	if err := s.Rotate(1, 2, next.Path, 8); err != nil {
		t.Fatal(err)
	}
	for _, l := range f.Log() {
		if strings.HasPrefix(l, "load dmsnap-sdb1 ") {
			t.Fatalf("rotation during a merge reloaded the origin: %q", f.Log())
		}
	}
	if merging, _ := s.Merging(); !merging {
		t.Fatal("rotation ended the merge")
	}
	// Deactivation waits for the merge.
	if err := s.Teardown(); !errors.Is(err, dm.ErrBusy) || !strings.Contains(err.Error(), "snapshot-merge") {
		t.Fatalf("Teardown during a merge: %v", err)
	}
	wantDevices(t, f, "dmsnap-sdb1", "dmsnap-sdb1-real", "dmsnap-sdb1-snap2")

	f.SetSnapshotUsage("dmsnap-sdb1", 0) // only metadata left (the fake reports none)
	f.ResetLog()
	if err := s.EndMerge(false); err != nil {
		t.Fatal(err)
	}
	wantLog(t, f, "load dmsnap-sdb1 snapshot-origin", "suspend dmsnap-sdb1", "resume dmsnap-sdb1")
	if _, merging, err := s.MergeStatus(); err != nil || merging {
		t.Fatalf("after EndMerge: merging %v, %v", merging, err)
	}
	if err := s.EndMerge(false); err != nil {
		t.Fatalf("EndMerge of a stack not merging: %v", err)
	}
	if err := s.Teardown(); err != nil {
		t.Fatal(err)
	}
}

func TestStartMergeRefusedLeavesTheStack(t *testing.T) {
	for _, op := range []string{"load", "suspend"} {
		f, s, _ := newStack(t)
		if err := s.Build(); err != nil {
			t.Fatal(err)
		}
		store := cowLoop(t, f, 8<<20)
		f.FailNext(op, "dmsnap-sdb1", unix.EINVAL)
		if err := s.StartMerge(store.Path, 8); !errors.Is(err, unix.EINVAL) {
			t.Fatalf("%s refused: err = %v", op, err)
		}
		if merging, _ := s.Merging(); merging || f.Suspended("dmsnap-sdb1") || f.HasInactive("dmsnap-sdb1") {
			t.Fatalf("%s refused: stack left merging, suspended or with an inactive table", op)
		}
	}
}

func mustParse(t *testing.T, s dm.TargetSpec) dm.Target {
	t.Helper()
	tg, err := dm.ParseTarget(s)
	if err != nil {
		t.Fatal(err)
	}
	return tg
}
