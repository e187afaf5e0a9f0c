//go:build !vm

package dm

import "testing"

func TestParseSnapshotStatus(t *testing.T) {
	cases := []struct {
		in        string
		want      SnapshotStatus
		valid     bool
		mergeDone bool
	}{
		// A fresh snapshot with 4 KiB chunks on a 80 MiB COW: header and the
		// first metadata area, 2 chunks of 8 sectors.
		{"16/163840 16", SnapshotStatus{SnapshotActive, 16, 163840, 16}, true, true},
		{"24/163840 16", SnapshotStatus{SnapshotActive, 24, 163840, 16}, true, false},
		// After growing the COW (LOOP_SET_CAPACITY) only total changes.
		{"16/143360 16", SnapshotStatus{SnapshotActive, 16, 143360, 16}, true, true},
		{"  4120/8192 32\n", SnapshotStatus{SnapshotActive, 4120, 8192, 32}, true, false},
		{"Invalid", SnapshotStatus{State: SnapshotInvalid}, false, false},
		{"Overflow", SnapshotStatus{State: SnapshotOverflow}, false, false},
		{"Merge failed", SnapshotStatus{State: SnapshotMergeFailed}, false, false},
		{"Unknown", SnapshotStatus{State: SnapshotUnknown}, false, false},
	}
	for _, c := range cases {
		got, err := ParseSnapshotStatus(c.in)
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if got != c.want {
			t.Errorf("%q = %+v, want %+v", c.in, got, c.want)
		}
		if got.Valid() != c.valid || got.MergeDone() != c.mergeDone {
			t.Errorf("%q: Valid=%v MergeDone=%v, want %v %v", c.in, got.Valid(), got.MergeDone(), c.valid, c.mergeDone)
		}
	}
	bad := []string{"", "16/163840", "16 16", "x/1 1", "1/x 1", "1/1 x", "8/100 16", "invalid", "16/163840 16 extra"}
	for _, s := range bad {
		if got, err := ParseSnapshotStatus(s); err == nil {
			t.Errorf("%q accepted as %+v", s, got)
		}
	}
}

func TestSnapshotStatusFigures(t *testing.T) {
	s := SnapshotStatus{State: SnapshotActive, Allocated: 40, Total: 100, Metadata: 16}
	if s.DataSectors() != 24 || s.Free() != 60 {
		t.Errorf("DataSectors=%d Free=%d, want 24 60", s.DataSectors(), s.Free())
	}
	if s.String() != "40/100 16" {
		t.Errorf("String = %q", s.String())
	}
	if got := (SnapshotStatus{State: SnapshotMergeFailed}).String(); got != "Merge failed" {
		t.Errorf("String = %q", got)
	}
	// Merge progress: allocated shrinks to the metadata.
	merging := []string{"1040/8192 32", "520/8192 32", "32/8192 32"}
	for i, in := range merging {
		st, err := ParseSnapshotStatus(in)
		if err != nil {
			t.Fatal(err)
		}
		if done := st.MergeDone(); done != (i == len(merging)-1) {
			t.Errorf("%q: MergeDone = %v", in, done)
		}
	}
}
