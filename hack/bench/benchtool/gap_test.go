package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		in := slices.Clone(c.in)
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", in, got, c.want)
		}
		if !slices.Equal(in, c.in) {
			t.Errorf("median reordered its input: %v, was %v", c.in, in)
		}
	}
}

// The ratios are taken within a round: a slow round slows every row alike
// and leaves them unchanged.
func TestGapRatiosWithinRound(t *testing.T) {
	set := GapSet{Where: "test", Job: "rand", Rounds: 2, Rows: []GapRow{
		{Config: "raw", Seconds: []float64{1, 2}},
		{Config: "lvm", Seconds: []float64{2, 4}},
		{Config: "dmsnap", Seconds: []float64{3, 6}},
	}}
	set.ratios()
	for i, want := range [][2]float64{{1, 0.5}, {2, 1}, {3, 1.5}} {
		r := set.Rows[i]
		if !slices.Equal(r.Cost, []float64{want[0], want[0]}) || !slices.Equal(r.OverLVM, []float64{want[1], want[1]}) {
			t.Errorf("%s: cost %v, × LVM %v; want %v and %v in both rounds", r.Config, r.Cost, r.OverLVM, want[0], want[1])
		}
	}
	var b bytes.Buffer
	writeGapMarkdown(&b, []GapSet{set})
	if !strings.Contains(b.String(), "| dmsnap | **3.00** (3.00–3.00) | **1.50** (1.50–1.50) | 3.00, 6.00 |") {
		t.Errorf("report row missing:\n%s", b.String())
	}
}

func TestGapConfigs(t *testing.T) {
	all := []config{{name: "a"}, {name: "raw"}, {name: "b"}, {name: "lvm"}}
	cs, err := gapConfigs(all, "raw", "lvm", "b")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range cs {
		names = append(names, c.name)
	}
	if !slices.Equal(names, []string{"raw", "lvm", "b"}) {
		t.Errorf("picked %v, want raw, lvm, b in that order", names)
	}
	if _, err := gapConfigs(all, "raw", "lvm", "missing"); err == nil || !strings.Contains(err.Error(), `"missing"`) {
		t.Errorf("a missing configuration gave %v, want an error naming it", err)
	}
}
