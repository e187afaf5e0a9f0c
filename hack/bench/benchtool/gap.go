package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
)

// The gap part repeats the one job dmsnap loses to LVM on, random 4 KiB
// first touches, in rounds: every configuration once per round, the order
// rotated from round to round, each on a freshly filled device. Every ratio
// is taken within a round (against that round's raw device and LVM runs),
// and the report gives the median and the range over the rounds, where the
// write part has one run of each, whose noise in the emulated guest is of
// the size of the differences that matter.

const gapRounds = 5

// GapRow is one configuration's rounds.
type GapRow struct {
	Config  string    `json:"config"`
	Seconds []float64 `json:"seconds"`     // the job's time, one per round
	Cost    []float64 `json:"cost_vs_raw"` // against the same round's raw run
	OverLVM []float64 `json:"over_lvm"`    // against the same round's LVM run
}

// GapSet is the gap part on one kind of device.
type GapSet struct {
	Where  string   `json:"where"`
	Job    string   `json:"job"`
	Rounds int      `json:"rounds"`
	Rows   []GapRow `json:"rows"`
}

// gapConfigs picks the gap part's configurations out of all, by name: the
// raw device first and LVM second (the baselines), then the rest.
func gapConfigs(all []config, raw, lvm string, rest ...string) ([]config, error) {
	var out []config
	for _, name := range append([]string{raw, lvm}, rest...) {
		i := slices.IndexFunc(all, func(c config) bool { return c.name == name })
		if i < 0 {
			return nil, fmt.Errorf("gap: no configuration %q", name)
		}
		out = append(out, all[i])
	}
	return out, nil
}

// runGap runs the rounds of job over cs (cs[0] the raw device, cs[1] LVM).
func runGap(where string, cs []config, size int64, job fioJob) (GapSet, error) {
	set := GapSet{Where: where, Job: job.name, Rounds: gapRounds, Rows: make([]GapRow, len(cs))}
	for i, c := range cs {
		set.Rows[i].Config = c.name
	}
	for r := 0; r < gapRounds; r++ {
		for k := range cs {
			i := (k + r) % len(cs)
			row := WriteRow{Config: cs[i].name}
			t, err := cs[i].setup(size, fillDevice)
			if err != nil {
				return set, fmt.Errorf("gap, %s: %w", cs[i].name, err)
			}
			err = runFio(&row, t.origin, []fioJob{job})
			if terr := t.teardown(); err == nil {
				err = terr
			}
			if err != nil {
				return set, fmt.Errorf("gap, %s: %w", cs[i].name, err)
			}
			set.Rows[i].Seconds = append(set.Rows[i].Seconds, row.Jobs[0].Seconds)
		}
		logf("gap, %s: round %d of %d done", where, r+1, gapRounds)
	}
	set.ratios()
	return set, nil
}

// ratios fills each row's per-round cost against the same round's raw run
// (Rows[0]) and LVM run (Rows[1]).
func (set *GapSet) ratios() {
	for i := range set.Rows {
		set.Rows[i].Cost, set.Rows[i].OverLVM = nil, nil
		for r, s := range set.Rows[i].Seconds {
			set.Rows[i].Cost = append(set.Rows[i].Cost, s/set.Rows[0].Seconds[r])
			set.Rows[i].OverLVM = append(set.Rows[i].OverLVM, s/set.Rows[1].Seconds[r])
		}
	}
}

// benchGap runs the gap part on tmpfs loops (when tmpfs is set) and on the
// virtio disks (when disks is set; mounting their stores as the disks
// part does).
func benchGap(rep *Report, scale int64, tmpfs, disks bool) error {
	size := max(int64(256<<20)/scale, 64<<20)
	job := fioJobs(scale)[2]
	all := append(configs(chunkSize), attribConfigs(chunkSize)...)
	// Random first touches, with the rows that take dmsnap's mapped COW
	// apart between the one-loop row and dmsnap's (attrib.go).
	cs, err := gapConfigs(all, "raw device", "LVM2 classic snapshot origin",
		"the same kernel targets, COW behind one more loop device (direct I/O)",
		cfgHopLinear, cfgStore, cfgStoreLinear, cfgStoreLinearTail,
		"dmsnap origin, session armed (store: ext4)", cfgLVMStore, cfgManagedStore,
		cfgFile, cfgFileDmsnapOptions,
		"dmsnap origin, session armed (store: tmpfs, no journal)")
	if err != nil {
		return err
	}
	if !tmpfs {
		return benchGapDisks(rep, size, job)
	}
	set, err := runGap("tmpfs loops", cs, size, job)
	if err != nil {
		return err
	}
	rep.Gap = append(rep.Gap, set)
	// Sequential first touches through a COW file (a store dmsnap cannot
	// map): a snapshot stacked by hand over one loop device against
	// dmsnap's loop options and linear device, and dmsnap.
	if cs, err = gapConfigs(all, "raw device", "LVM2 classic snapshot origin",
		"the same kernel targets, COW behind one more loop device (direct I/O)",
		"dmsnap origin, session armed (store: ext4)", cfgLVMStore, cfgManagedStore,
		cfgFile, cfgFileDmsnapOptions,
		"dmsnap origin, session armed (store: tmpfs, no journal)"); err != nil {
		return err
	}
	if set, err = runGap("tmpfs loops", cs, size, fioJobs(scale)[0]); err != nil {
		return err
	}
	rep.Gap = append(rep.Gap, set)
	if !disks {
		return nil
	}
	return benchGapDisks(rep, size, job)
}

// benchGapDisks runs the gap rounds on the virtio disks.
func benchGapDisks(rep *Report, size int64, job fioJob) error {
	unmount, err := mountDiskStore()
	if err != nil {
		return err
	}
	defer unmount()
	cs, err := gapConfigs(diskConfigs(chunkSize), "raw disk", "LVM2 classic snapshot origin (PV: its own disk)",
		"the same kernel targets, COW on a loop device (direct I/O) over its own disk",
		"dmsnap origin, session armed (store: ext4 on its own disk)", cfgDiskLVMStore, cfgDiskManaged)
	if err != nil {
		return err
	}
	set, err := runGap("virtio disks", cs, size, job)
	if err != nil {
		return err
	}
	rep.Gap = append(rep.Gap, set)
	return nil
}

// median of xs (not empty), the mean of the middle two for an even count.
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func writeGapMarkdown(w io.Writer, sets []GapSet) {
	for _, set := range sets {
		fmt.Fprintf(w, "\n## The gap to LVM, %s: %s, %d rounds\n\n", set.Where, set.Job, set.Rounds)
		fmt.Fprintf(w, "Each round runs every configuration once on a freshly filled device, in an order rotated from round to round; each ratio is taken within its round. Median (range).\n\n")
		fmt.Fprintf(w, "| configuration | cost vs raw | × LVM | seconds, round by round |\n|---|---:|---:|---|\n")
		for _, r := range set.Rows {
			secs := make([]string, len(r.Seconds))
			for i, s := range r.Seconds {
				secs[i] = fmt.Sprintf("%.2f", s)
			}
			fmt.Fprintf(w, "| %s | **%.2f** (%.2f–%.2f) | **%.2f** (%.2f–%.2f) | %s |\n", r.Config,
				median(r.Cost), slices.Min(r.Cost), slices.Max(r.Cost),
				median(r.OverLVM), slices.Min(r.OverLVM), slices.Max(r.OverLVM), strings.Join(secs, ", "))
		}
	}
}
