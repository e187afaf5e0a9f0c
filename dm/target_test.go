//go:build !vm

package dm

import (
	"strings"
	"testing"
)

func TestTargetSpecs(t *testing.T) {
	real := Dev{Major: 253, Minor: 0}
	cow := Dev{Major: 7, Minor: 1}
	cases := []struct {
		target Target
		want   string
	}{
		{Linear{Length: 131072, Device: Dev{Major: 7, Minor: 0}}, "0 131072 linear 7:0 0"},
		{Linear{Start: 8, Length: 16, Device: Dev{Major: 8, Minor: 17}, Offset: 2048}, "8 16 linear 8:17 2048"},
		{SnapshotOrigin{Length: 131072, Origin: real}, "0 131072 snapshot-origin 253:0"},
		{Snapshot{Length: 131072, Origin: real, COW: cow, ChunkSectors: 8}, "0 131072 snapshot 253:0 7:1 P 8"},
		{Snapshot{Length: 10, Origin: real, COW: Dev{Major: 259, Minor: 65536}, ChunkSectors: 1024}, "0 10 snapshot 253:0 259:65536 P 1024"},
		{SnapshotMerge{Length: 131072, Origin: real, COW: cow, ChunkSectors: 16}, "0 131072 snapshot-merge 253:0 7:1 P 16"},
	}
	for _, c := range cases {
		s, err := c.target.Spec()
		if err != nil {
			t.Errorf("%T: %v", c.target, err)
			continue
		}
		if got := s.String(); got != c.want {
			t.Errorf("%T spec = %q, want %q", c.target, got, c.want)
		}
		// Round trip through the parser used on tables read back.
		back, err := ParseTarget(s)
		if err != nil {
			t.Errorf("ParseTarget(%q): %v", c.want, err)
			continue
		}
		if back != c.target {
			t.Errorf("ParseTarget(%q) = %#v, want %#v", c.want, back, c.target)
		}
	}
}

func TestTargetSpecErrors(t *testing.T) {
	real, cow := Dev{Major: 253, Minor: 0}, Dev{Major: 7, Minor: 1}
	cases := []struct {
		target Target
		want   string
	}{
		{Linear{Length: 8}, "no device"},
		{SnapshotOrigin{Length: 8}, "no origin"},
		{Snapshot{Length: 8, COW: cow, ChunkSectors: 8}, "no origin"},
		{Snapshot{Length: 8, Origin: real, ChunkSectors: 8}, "no COW"},
		{Snapshot{Length: 8, Origin: real, COW: real, ChunkSectors: 8}, "same device"},
		{Snapshot{Length: 8, Origin: real, COW: cow, ChunkSectors: 0}, "not a power of two"},
		{Snapshot{Length: 8, Origin: real, COW: cow, ChunkSectors: 12}, "not a power of two"},
		{SnapshotMerge{Length: 8, Origin: real, COW: cow, ChunkSectors: 3}, "snapshot-merge target: chunk size 3"},
	}
	for _, c := range cases {
		_, err := c.target.Spec()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%#v: err = %v, want it to mention %q", c.target, err, c.want)
		}
	}
}

func TestSpecsContiguous(t *testing.T) {
	a := Linear{Length: 8, Device: Dev{Major: 7, Minor: 0}}
	b := Linear{Start: 8, Length: 8, Device: Dev{Major: 7, Minor: 1}}
	specs, err := Specs(a, b)
	if err != nil || len(specs) != 2 {
		t.Fatalf("Specs = %v, %v", specs, err)
	}
	if _, err := Specs(a, Linear{Start: 9, Length: 8, Device: Dev{Major: 7, Minor: 1}}); err == nil || !strings.Contains(err.Error(), "contiguous") {
		t.Errorf("gap: err = %v", err)
	}
	if _, err := Specs(Linear{Start: 1, Length: 8, Device: Dev{Major: 7, Minor: 0}}); err == nil {
		t.Error("table not starting at 0 accepted")
	}
	if _, err := Specs(); err == nil {
		t.Error("empty table accepted")
	}
	if _, err := Specs(Linear{Device: Dev{Major: 7, Minor: 0}}); err == nil || !strings.Contains(err.Error(), "zero length") {
		t.Errorf("zero length: err = %v", err)
	}
}

func TestParseTargetKernelForms(t *testing.T) {
	// The kernel reports "PO" for an overflow-aware store; we read it as P.
	got, err := ParseTarget(TargetSpec{Length: 8, Type: "snapshot", Params: "253:0 7:2 PO 8"})
	if err != nil {
		t.Fatal(err)
	}
	if s := got.(Snapshot); s.COW != (Dev{Major: 7, Minor: 2}) || s.ChunkSectors != 8 {
		t.Errorf("got %#v", s)
	}
	bad := []TargetSpec{
		{Length: 8, Type: "linear", Params: "7:0"},
		{Length: 8, Type: "linear", Params: "/dev/loop0 0"},
		{Length: 8, Type: "snapshot", Params: "253:0 7:2 N 8"},
		{Length: 8, Type: "snapshot-origin", Params: "253:0 1"},
		{Length: 8, Type: "thin", Params: "253:0 1"},
	}
	for _, s := range bad {
		if _, err := ParseTarget(s); err == nil {
			t.Errorf("ParseTarget(%q) accepted", s.String())
		}
	}
}

func TestDev(t *testing.T) {
	d, err := ParseDev("259:65536")
	if err != nil || d != (Dev{Major: 259, Minor: 65536}) {
		t.Fatalf("ParseDev = %v, %v", d, err)
	}
	if DevFromNumber(d.Number()) != d {
		t.Errorf("number round trip of %v failed", d)
	}
	for _, s := range []string{"", "7", "7:", ":1", "a:b", "7:-1", "4294967296:0"} {
		if _, err := ParseDev(s); err == nil {
			t.Errorf("ParseDev(%q) accepted", s)
		}
	}
}
