package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/dmsnap/dmsnap/internal/units"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

// Retention: the policy the watcher applies to a device's finished
// sessions (snapstore.Retention), set at activate and with dmsnap set.

func init() { register(setCmd) }

// retentionFlags are the --keep-* and --min-free flags of activate and set.
type retentionFlags struct {
	last, hourly, daily, weekly, monthly int
	within, minFree                      string
}

func (f *retentionFlags) add(fs *pflag.FlagSet) {
	fs.IntVar(&f.last, "keep-last", 0, "retention: keep the newest `N` restore points")
	fs.StringVar(&f.within, "keep-within", "", "retention: keep the sessions taken within `DURATION` (36h, 30d, 2w)")
	fs.IntVar(&f.hourly, "keep-hourly", 0, "retention: keep the newest session of each of the last `N` hours that have one")
	fs.IntVar(&f.daily, "keep-daily", 0, "retention: keep the newest session of each of the last `N` days")
	fs.IntVar(&f.weekly, "keep-weekly", 0, "retention: keep the newest session of each of the last `N` weeks")
	fs.IntVar(&f.monthly, "keep-monthly", 0, "retention: keep the newest session of each of the last `N` months")
	fs.StringVar(&f.minFree, "min-free", "", "retention: free `SIZE` the store keeps; below it the oldest sessions go (0: none)")
}

// apply sets in r what was given on the command line (fs.Changed), so
// that set changes only what it is told to.
func (f *retentionFlags) apply(fs *pflag.FlagSet, r *snapstore.Retention) error {
	ints := []struct {
		flag string
		v    int
		dst  *int
	}{{"keep-last", f.last, &r.KeepLast}, {"keep-hourly", f.hourly, &r.KeepHourly}, {"keep-daily", f.daily, &r.KeepDaily},
		{"keep-weekly", f.weekly, &r.KeepWeekly}, {"keep-monthly", f.monthly, &r.KeepMonthly}}
	for _, i := range ints {
		if fs.Changed(i.flag) {
			if i.v < 0 {
				return usagef("--%s %d: want 0 or more", i.flag, i.v)
			}
			*i.dst = i.v
		}
	}
	if fs.Changed("keep-within") {
		if f.within == "0" || f.within == "" {
			r.KeepWithin = 0
		} else {
			d, err := units.ParseAge(f.within)
			if err != nil {
				return usagef("--keep-within: %v", err)
			}
			r.KeepWithin = d
		}
	}
	if fs.Changed("min-free") {
		n, err := units.ParseSize(f.minFree)
		if err != nil {
			return usagef("--min-free: %v", err)
		}
		if n > 1<<62 {
			return usagef("--min-free %s: too large", f.minFree)
		}
		r.MinFree = int64(n)
	}
	return nil
}

func (f *retentionFlags) changed(fs *pflag.FlagSet) bool {
	for _, n := range []string{"keep-last", "keep-within", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly", "min-free"} {
		if fs.Changed(n) {
			return true
		}
	}
	return false
}

const retentionHelp = `Retention (--keep-last N, --keep-within DURATION, --keep-hourly/daily/
weekly/monthly N, --min-free SIZE) is applied by dmsnap watch after each
close and on every beat. A restore to a session needs it and every later
one, so only the oldest sessions go: those older than the oldest one any
keep rule keeps, stopping at a live, unfinished, damaged, labelled or
pinned session. Below --min-free of free space in the store, the oldest
sessions go whatever the keep rules say (never a labelled or pinned one,
nor the newest restore point), before the live session's COW runs out of
room; when nothing may go, status --check fails and the watcher warns.
Each removal is logged and noted in the store's pruned.log.`

func setCmd(e *env) *cobra.Command {
	var (
		f         retentionFlags
		onUnmount string
		pw        passwordFlags
	)
	c := &cobra.Command{
		Use:   "set NAME|DEVICE|FILE [--keep-... N] [--min-free SIZE] [--on-unmount keep|revert]",
		Short: "change an activated device's retention policy or unmount mode",
		Long: `Changes what is given of the retention policy of an activated device; a
value of 0 turns that rule off. Asks for the control password when one is
set (dmsnap passwd): the policy removes restore points, and revert mode
puts the device back at every unmount.

` + retentionHelp + `

` + onUnmountHelp + ` Switched on with set, the
state put back is the device's state now (when it is mounted: its state
before that mount, put back at the unmount).

Exit codes: 0 ok, 1 failure, 2 usage, 3 wrong password, 4 an instant
restore is still merging.`,
		Args:              argsBetween(1, 1, "set takes one device"),
		ValidArgsFunction: completeDevices(e),
		RunE: func(c *cobra.Command, args []string) error {
			modeSet := c.Flags().Changed("on-unmount")
			if !f.changed(c.Flags()) && !modeSet {
				return usagef("set: give at least one of --keep-last, --keep-within, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --min-free, --on-unmount")
			}
			var probe snapstore.Retention
			if err := f.apply(c.Flags(), &probe); err != nil {
				return err
			}
			mode, err := parseOnUnmount(onUnmount)
			if err != nil {
				return err
			}
			if err := pw.check(); err != nil {
				return err
			}
			if err := requireSecret(e, &pw); err != nil {
				return err
			}
			m := newManager(e)
			res := struct {
				Device    string              `json:"device"`
				Retention snapstore.Retention `json:"retention"`
				OnUnmount string              `json:"on_unmount"`
			}{Device: args[0]}
			if mode == "" {
				mode = session.OnUnmountKeep
			}
			if modeSet {
				d, err := m.SetOnUnmount(e.ctx, args[0], mode)
				if err != nil {
					return err
				}
				if d.Retention != nil {
					res.Retention = *d.Retention
				}
				res.OnUnmount = d.OnUnmountMode()
			}
			if f.changed(c.Flags()) || !modeSet {
				var ferr error
				r, err := m.SetRetention(e.ctx, args[0], func(r *snapstore.Retention) { ferr = f.apply(c.Flags(), r) })
				if err = errors.Join(ferr, err); err != nil {
					return err
				}
				res.Retention = r
			}
			if res.OnUnmount == "" {
				reg, err := m.Registry()
				if err != nil {
					return err
				}
				if d, err := reg.Lookup(args[0]); err == nil {
					res.OnUnmount = d.OnUnmountMode()
				}
			}
			return e.emit(res, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "%s: %s; on unmount: %s\n", args[0], res.Retention, res.OnUnmount)
				return err
			})
		},
	}
	f.add(c.Flags())
	c.Flags().StringVar(&onUnmount, "on-unmount", session.OnUnmountKeep, "keep, or revert: put the device back to its state before the mount at every unmount")
	pw.add(c.Flags())
	return c
}

// onUnmountHelp describes --on-unmount for activate and set.
const onUnmountHelp = `--on-unmount revert puts the device back, at every unmount, to its state
before the mount (kiosk, lab and CI machines): the watcher holds the device
from the moment it sees the unmount (a mount meanwhile fails as busy),
closes the session as usual and starts an instant restore, so the device
shows the state put back at once while the kernel copies it in the
background. The sessions stay, per the retention policy, so a revert can be
looked into (sessions diff) or undone (restore the session that recorded
it). A crash or power cut before the revert started reverts at the next
attach, before anything mounts the device; one during its copy resumes it
there. --on-unmount keep (the default) leaves the device as the session
left it.`

// parseOnUnmount checks an --on-unmount value: "" for keep (the
// registry's default), session.OnUnmountRevert for revert.
func parseOnUnmount(v string) (string, error) {
	switch v {
	case session.OnUnmountKeep, "":
		return "", nil
	case session.OnUnmountRevert:
		return session.OnUnmountRevert, nil
	}
	return "", usagef("--on-unmount %q: want keep or revert", v)
}
