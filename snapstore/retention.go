package snapstore

import (
	"fmt"
	"strings"
	"time"
)

// Retention is a device's retention policy: which of its finished
// sessions the watcher keeps (`dmsnap activate --keep-*`, `dmsnap set`).
// The zero value keeps everything.
//
// A restore to a session needs it and every later session, so only the
// oldest sessions can go: a policy removes the sessions older than the
// oldest one any of its rules keeps, and stops early at a session that
// must stay (live, unfinished, damaged, labelled or pinned). Each keep rule
// is as restic's `forget --keep-*`: KeepLast the newest N restore points;
// KeepWithin those taken within the duration; KeepHourly (Daily, Weekly,
// Monthly) the newest session of each of the last N hours (days, ISO
// weeks, months) that have one. MinFree is the free space the store must
// keep: below it the oldest sessions go whatever the keep rules say (still
// never a labelled or pinned one, nor the newest restore point), so that
// the live session's COW can grow instead of the kernel dropping it.
type Retention struct {
	KeepLast    int           `json:"keep_last,omitempty"`
	KeepWithin  time.Duration `json:"keep_within,omitempty"`
	KeepHourly  int           `json:"keep_hourly,omitempty"`
	KeepDaily   int           `json:"keep_daily,omitempty"`
	KeepWeekly  int           `json:"keep_weekly,omitempty"`
	KeepMonthly int           `json:"keep_monthly,omitempty"`
	MinFree     int64         `json:"min_free,omitempty"` // bytes
}

// HasKeepRules reports whether any keep rule is set (without one, the
// rules keep everything and only MinFree removes).
func (r Retention) HasKeepRules() bool {
	return r.KeepLast > 0 || r.KeepWithin > 0 || r.KeepHourly > 0 || r.KeepDaily > 0 || r.KeepWeekly > 0 || r.KeepMonthly > 0
}

// IsZero reports whether r keeps everything and asks for no free space.
func (r Retention) IsZero() bool { return !r.HasKeepRules() && r.MinFree == 0 }

// Validate refuses negative values.
func (r Retention) Validate() error {
	for _, v := range []struct {
		name string
		n    int64
	}{{"keep-last", int64(r.KeepLast)}, {"keep-within", int64(r.KeepWithin)}, {"keep-hourly", int64(r.KeepHourly)},
		{"keep-daily", int64(r.KeepDaily)}, {"keep-weekly", int64(r.KeepWeekly)}, {"keep-monthly", int64(r.KeepMonthly)}, {"min-free", r.MinFree}} {
		if v.n < 0 {
			return fmt.Errorf("%s %d: want 0 or more", v.name, v.n)
		}
	}
	return nil
}

// String describes the policy for status and logs.
func (r Retention) String() string {
	if r.IsZero() {
		return "keep every session"
	}
	var parts []string
	add := func(name string, n int) {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", name, n))
		}
	}
	add("keep-last", r.KeepLast)
	if r.KeepWithin > 0 {
		parts = append(parts, "keep-within "+r.KeepWithin.String())
	}
	add("keep-hourly", r.KeepHourly)
	add("keep-daily", r.KeepDaily)
	add("keep-weekly", r.KeepWeekly)
	add("keep-monthly", r.KeepMonthly)
	if r.MinFree > 0 {
		parts = append(parts, fmt.Sprintf("min-free %d bytes", r.MinFree))
	}
	return strings.Join(parts, ", ")
}

// RetentionRequest is one run of a policy over a device's sessions.
type RetentionRequest struct {
	Name   string
	Policy Retention
	Now    time.Time
	// Need is how many bytes the store is short of Policy.MinFree now (0:
	// none); Size gives what removing a session frees.
	Need int64
	Size func(SessionInfo) int64
	// Held are the session directories a registry still holds.
	Held map[string]bool
	// Restores are the device's restores no session recorded (RestoresOf):
	// the sessions they left behind are no restore points any more.
	Restores []Restore
	// KeepFrom, when above 0, keeps the sessions of sequence KeepFrom and
	// later: a device that reverts on unmount restores to the state before
	// session KeepFrom every time.
	KeepFrom int
}

// RetentionPlan is what a run of a policy removes, oldest first.
type RetentionPlan struct {
	Remove []SessionInfo
	// Why says, per removed session ID, which part of the policy removes
	// it: "keep rules" or "min-free".
	Why map[string]string
	// Freed is what the removals free (by Size); Short, when the store is
	// still short of MinFree after them, says what stopped the run.
	Freed int64
	Short string
}

// PlanRetention decides which of a store's sessions (ListSessions) a run
// of req.Policy removes. It changes nothing.
func PlanRetention(infos []SessionInfo, req RetentionRequest) RetentionPlan {
	all, points := chainOf(infos, req.Name)
	for i := range all {
		if points[i].OK && CheckRestored(all, all[i].ID, req.Restores) != nil {
			points[i] = RestorePoint{Why: "a restore that no session recorded went past it (restores.log)"}
		}
	}
	plan := RetentionPlan{Why: map[string]string{}}

	// byRules: how many of the oldest sessions the keep rules let go.
	byRules := 0
	if req.Policy.HasKeepRules() {
		byRules = oldestKept(all, points, req.Policy, req.Now)
	}
	// The newest restore point always stays.
	newest := len(all)
	for i := len(all) - 1; i >= 0; i-- {
		if points[i].OK {
			newest = i
			break
		}
	}
	for i, info := range all {
		rules := i < byRules
		// Space goes only as far as the newest restore point: with none,
		// what the sessions hold cannot be judged, and nothing goes.
		space := req.Need > plan.Freed && req.Policy.MinFree > 0 && newest < len(all)
		if !rules && !space {
			break
		}
		why := keptBecause(info, req.Held)
		switch {
		case why == "" && info.Label != "":
			why = fmt.Sprintf("labelled %q", info.Label)
		case why == "" && i >= newest:
			why = "the newest restore point"
		case why == "" && req.KeepFrom > 0 && info.Sequence >= req.KeepFrom:
			why = "the state its reverts on unmount put back is the one before it"
		}
		if why != "" {
			if space {
				plan.Short = fmt.Sprintf("the store is %d bytes short of min-free and session %s is %s: nothing newer may be removed (a restore to %s needs them); free space, or lower min-free",
					req.Need-plan.Freed, info.ID, why, info.ID)
			}
			break
		}
		plan.Remove = append(plan.Remove, info)
		if rules {
			plan.Why[info.ID] = "keep rules"
		} else {
			plan.Why[info.ID] = "min-free"
		}
		if req.Size != nil {
			plan.Freed += req.Size(info)
		}
	}
	if req.Need > plan.Freed && plan.Short == "" && req.Policy.MinFree > 0 {
		if newest == len(all) {
			plan.Short = fmt.Sprintf("the store is %d bytes short of min-free and %s has no restore point, so nothing is removed (dmsnap sessions list %s says why)", req.Need-plan.Freed, req.Name, req.Name)
		} else {
			plan.Short = fmt.Sprintf("the store is %d bytes short of min-free and no finished session of %s is left to remove", req.Need-plan.Freed, req.Name)
		}
	}
	return plan
}

// oldestKept returns the index of the oldest session any keep rule of p
// keeps (len(all) when none keeps any).
func oldestKept(all []SessionInfo, points []RestorePoint, p Retention, now time.Time) int {
	oldest := len(all)
	keep := func(i int) { oldest = min(oldest, i) }
	if p.KeepLast > 0 {
		n := 0
		for i := len(all) - 1; i >= 0 && n < p.KeepLast; i-- {
			if points[i].OK {
				n++
				keep(i)
			}
		}
		if n < p.KeepLast {
			keep(0) // not more restore points than to keep: all stay
		}
	}
	if p.KeepWithin > 0 {
		for i := len(all) - 1; i >= 0; i-- {
			if now.Sub(all[i].Time) <= p.KeepWithin {
				keep(i)
			}
		}
	}
	buckets := []struct {
		n   int
		key func(time.Time) string
	}{
		{p.KeepHourly, func(t time.Time) string { return t.Format("2006-01-02T15") }},
		{p.KeepDaily, func(t time.Time) string { return t.Format("2006-01-02") }},
		{p.KeepWeekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%d-W%02d", y, w) }},
		{p.KeepMonthly, func(t time.Time) string { return t.Format("2006-01") }},
	}
	for _, b := range buckets {
		if b.n <= 0 {
			continue
		}
		seen := map[string]bool{}
		for i := len(all) - 1; i >= 0 && len(seen) < b.n; i-- {
			k := b.key(all[i].Time.Local())
			if !seen[k] {
				seen[k] = true
				keep(i)
			}
		}
	}
	return oldest
}
