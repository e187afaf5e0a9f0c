package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/dmsnap/dmsnap/internal/units"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

func init() { register(sessionsCmd) }

const sessionsHelp = `The sessions in the store: list them, show one, verify their checksums,
prune the oldest, and open read-only views of a device as it was before one.

--json output of list is an array of sessions, of show one session:
  {"id": "sdb1_1700000000",          directory name, <name>_<unix seconds>
   "name": "sdb1",                   dmsnap name of the device
   "device": "/dev/sdb1",            device path at activation ("" unknown)
   "dir": "/snapshot/sdb1_1700000000",
   "state": "closed",                closed | invalid | unverified (a seed
                                     session, no checksums) | damaged |
                                     unreadable (meta.json could not be read:
                                     an OS error, not damage) |
                                     armed | open | closing (not converted yet)
   "invalid_reason": "...",          when invalid
   "error": "...",                   why damaged or unreadable
   "chunk_size": 4096,               bytes
   "fs_type": "ext4",
   "armed": "RFC 3339", "mounted": ..., "unmounted": ..., "closed": ...
                                     (left out when not known or not yet)
   "blocks": 12,                     pre-images saved (blocks.map records)
   "bytes": 49152,                   bytes of pre-images
   "restorable": true,               the device can still be put back to its
                                     state before this session: it and every
                                     later session are whole (an invalid or
                                     damaged session breaks the chain for
                                     itself and every session before it)
   "not_restorable_because": "..."}  when not
show adds "meta": meta.json as stored, for finished sessions.

Exit codes: 0 ok, 1 failure (a damaged session for verify), 2 usage,
3 wrong password (prune), 4 state locked, 5 cannot verify (verify could not
read a session's files for a reason of the OS: permission, too many open
files, an I/O error; that is not damage, and no session was found damaged).`

func sessionsCmd(e *env) *cobra.Command {
	c := group(&cobra.Command{
		Use:   "sessions",
		Short: "list, show, verify and prune the sessions in the store; open views of them",
		Long:  sessionsHelp,
	})
	c.AddCommand(sessionsListCmd(e), sessionsShowCmd(e), sessionsVerifyCmd(e), sessionsPruneCmd(e),
		sessionsLabelCmd(e), sessionsDiffCmd(e), sessionsOpenCmd(e), sessionsMountCmd(e), sessionsCloseCmd(e))
	return c
}

// sessionJSON is one session in --json output; its shape is documented in
// sessionsHelp and kept stable.
type sessionJSON struct {
	ID            string     `json:"id"`
	Name          string     `json:"name"`
	Device        string     `json:"device"`
	Dir           string     `json:"dir"`
	State         string     `json:"state"`
	InvalidReason string     `json:"invalid_reason,omitempty"`
	Error         string     `json:"error,omitempty"`
	ChunkSize     uint32     `json:"chunk_size,omitempty"`
	FSType        string     `json:"fs_type,omitempty"`
	Armed         *time.Time `json:"armed,omitempty"`
	Mounted       *time.Time `json:"mounted,omitempty"`
	Unmounted     *time.Time `json:"unmounted,omitempty"`
	Closed        *time.Time `json:"closed,omitempty"`
	Blocks        int64      `json:"blocks"`
	Bytes         int64      `json:"bytes"`
	// Restorable: the device can still be put back to its state before
	// this session (it and every later session are whole); when not,
	// NotRestorable says why.
	Restorable    bool            `json:"restorable"`
	NotRestorable string          `json:"not_restorable_because,omitempty"`
	Label         string          `json:"label,omitempty"`
	Pinned        bool            `json:"pinned"`
	Meta          *snapstore.Meta `json:"meta,omitempty"`
}

// restorePoints computes whether each session of a store listing
// (ListSessions: by device, in the order taken) can be restored to.
func restorePoints(infos []snapstore.SessionInfo) map[string]snapstore.RestorePoint {
	out := map[string]snapstore.RestorePoint{}
	for i := 0; i < len(infos); {
		j := i
		for j < len(infos) && infos[j].Name == infos[i].Name {
			j++
		}
		for k, p := range snapstore.RestorePoints(infos[i:j]) {
			out[infos[i+k].ID] = p
		}
		i = j
	}
	return out
}

// withRestorability fills in whether s can be restored to.
func withRestorability(s sessionJSON, p snapstore.RestorePoint) sessionJSON {
	s.Restorable = p.OK
	if !p.OK {
		s.NotRestorable = p.Sentence(s.ID)
	}
	return s
}

// Session states as the CLI shows them.
const (
	stateClosed     = "closed"
	stateInvalid    = "invalid"
	stateUnverified = "unverified"
	stateDamaged    = "damaged"
	stateUnreadable = "unreadable"
)

func describeSession(info snapstore.SessionInfo) sessionJSON {
	s := sessionJSON{ID: info.ID, Name: info.Name, Dir: info.Dir, Label: info.Label, Pinned: info.Pinned}
	if info.Err != nil {
		s.Error = info.Err.Error()
	}
	switch info.Status {
	case snapstore.StatusComplete:
		s.State = stateClosed
	case snapstore.StatusInvalid:
		s.State = stateInvalid
	case snapstore.StatusUnverified:
		s.State = stateUnverified
	case snapstore.StatusDamaged:
		s.State = stateDamaged
	case snapstore.StatusUnreadable:
		s.State = stateUnreadable
	case snapstore.StatusIncomplete:
		s.State = string(info.Phase)
		if st, err := snapstore.ReadState(info.Dir); err == nil {
			s.Device, s.ChunkSize, s.FSType, s.InvalidReason = st.Device.Path, st.ChunkSize, st.FsType, st.InvalidReason
			s.Armed, s.Mounted, s.Unmounted = timeOrNil(st.Times.Armed), timeOrNil(st.Times.Mounted), timeOrNil(st.Times.Unmounted)
		}
		if s.State == "" {
			s.State = "incomplete"
		}
	default:
		s.State = string(info.Status)
	}
	if m := info.Meta; m != nil {
		s.Device, s.FSType, s.ChunkSize = m.Device, m.FsType, m.BlockSize
		s.Blocks, s.Bytes = m.TotalBlocksSaved, m.TotalBlocksSaved*int64(m.BlockSize)
		if d := m.Dmsnap; d != nil {
			s.ChunkSize, s.InvalidReason = d.ChunkSize, d.InvalidReason
			s.Armed, s.Mounted, s.Unmounted, s.Closed = timeOrNil(d.Times.Armed), timeOrNil(d.Times.Mounted), timeOrNil(d.Times.Unmounted), timeOrNil(d.Times.Closed)
		} else if m.Timestamp != 0 {
			s.Mounted = timeOrNil(time.Unix(0, m.Timestamp))
		}
	}
	return s
}

func sessionsListCmd(e *env) *cobra.Command {
	var f listFlags
	c := &cobra.Command{
		Use:               "list [NAME|DEVICE|FILE]",
		Short:             "list the sessions of the store (of device NAME only when given), oldest first",
		Args:              argsBetween(0, 1, "sessions list takes at most one NAME, DEVICE or FILE"),
		ValidArgsFunction: completeDevices(e),
		RunE:              func(c *cobra.Command, args []string) error { return runSessionsList(e, f, args) },
	}
	c.Flags().StringVarP(&f.fields, "output", "o", "", "the `FIELDS` to show, comma-separated, of: "+strings.Join(sessionColumns.allNames(), ","))
	c.Flags().BoolVar(&f.noHeadings, "no-headings", false, "leave out the heading line and the notes below the table (for scripts)")
	return c
}

// listFlags are the output flags of a list command.
type listFlags struct {
	fields     string
	noHeadings bool
}

func runSessionsList(e *env, f listFlags, args []string) error {
	fields, err := sessionColumns.pick(f.fields)
	if err != nil {
		return err
	}
	name := ""
	if len(args) == 1 {
		name = e.deviceName(args[0])
	}
	// What the stores hold is restored onto devices: sessionStores refuses
	// one that others could have written to.
	stores, err := e.sessionStores(name)
	if err != nil {
		return err
	}
	infos, err := listStores(stores)
	if err != nil {
		return err
	}
	points := restorePoints(infos)
	out := []sessionJSON{}
	for _, info := range infos {
		if name != "" && info.Name != name {
			continue
		}
		out = append(out, withRestorability(describeSession(info), points[info.ID]))
	}
	if e.json {
		return e.emit(out, nil)
	}
	if len(out) == 0 {
		fmt.Fprintf(e.stdout, "no sessions in %s\n", strings.Join(stores, ", "))
		return nil
	}
	var why []string // one line per session that breaks a chain
	seen := map[string]bool{}
	for _, s := range out {
		if p := points[s.ID]; !s.Restorable && p.Blocker != "" && !seen[p.Blocker] {
			seen[p.Blocker] = true
			why = append(why, p.Blocker+" "+points[p.Blocker].Why)
		}
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	sessionColumns.write(tw, fields, out, f.noHeadings)
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, w := range why {
		if !f.noHeadings {
			fmt.Fprintf(e.stdout, "not restorable: %s, so it and every session before it cannot be restored to\n", w)
		}
	}
	return nil
}

// sessionColumns are the fields of sessions list (-o).
var sessionColumns = columns[sessionJSON]{
	names: []string{"id", "device", "state", "restorable", "mounted", "unmounted", "blocks", "bytes", "label"},
	head: map[string]string{"id": "ID", "name": "NAME", "device": "DEVICE", "state": "STATE", "restorable": "RESTORABLE",
		"armed": "ARMED", "mounted": "MOUNTED", "unmounted": "UNMOUNTED", "closed": "CLOSED", "blocks": "BLOCKS", "bytes": "BYTES",
		"size": "SIZE", "dir": "DIR", "fs": "FS", "chunk": "CHUNK", "label": "LABEL", "pinned": "PINNED"},
	value: map[string]func(sessionJSON) string{
		"id":     func(s sessionJSON) string { return s.ID },
		"name":   func(s sessionJSON) string { return s.Name },
		"device": func(s sessionJSON) string { return cmp.Or(s.Device, "-") },
		"state":  func(s sessionJSON) string { return s.State },
		"restorable": func(s sessionJSON) string {
			if s.Restorable {
				return "yes"
			}
			return "no"
		},
		"armed":     func(s sessionJSON) string { return fmtTime(s.Armed) },
		"mounted":   func(s sessionJSON) string { return fmtTime(s.Mounted) },
		"unmounted": func(s sessionJSON) string { return fmtTime(s.Unmounted) },
		"closed":    func(s sessionJSON) string { return fmtTime(s.Closed) },
		"blocks":    func(s sessionJSON) string { return strconv.FormatInt(s.Blocks, 10) },
		"bytes":     func(s sessionJSON) string { return units.FormatBytes(uint64(max(s.Bytes, 0))) },
		"size":      func(s sessionJSON) string { return strconv.FormatInt(s.Bytes, 10) },
		"dir":       func(s sessionJSON) string { return s.Dir },
		"fs":        func(s sessionJSON) string { return cmp.Or(s.FSType, "-") },
		"chunk":     func(s sessionJSON) string { return strconv.FormatUint(uint64(s.ChunkSize), 10) },
		"label": func(s sessionJSON) string {
			if s.Pinned {
				return strings.TrimSpace("[pinned] " + s.Label)
			}
			return cmp.Or(s.Label, "-")
		},
		"pinned": func(s sessionJSON) string {
			if s.Pinned {
				return "yes"
			}
			return "-"
		},
	},
}

func fmtTime(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return localTime(*t)
}

func sessionsShowCmd(e *env) *cobra.Command {
	var name string
	c := &cobra.Command{
		Use:   "show ID|latest",
		Short: "show one session",
		Long: `Shows one session, by ID or the latest finished one (of device --name NAME,
which may be left out when the stores hold the sessions of one device only).`,
		Args:              argsBetween(1, 1, "sessions show takes one session ID, or latest"),
		ValidArgsFunction: completeSessions(e, true),
		RunE:              func(c *cobra.Command, args []string) error { return runSessionsShow(e, name, args[0]) },
	}
	c.Flags().StringVar(&name, "name", "", "with latest: the device `NAME`")
	c.RegisterFlagCompletionFunc("name", completeDevices(e))
	return c
}

// latestSession finds the newest finished session of device name ("": of
// the only device the stores hold).
func (e *env) latestSession(name string) (string, error) {
	stores, err := e.sessionStores(name)
	if err != nil {
		return "", err
	}
	infos, err := listStores(stores)
	if err != nil {
		return "", err
	}
	var names []string
	latest := ""
	for _, info := range infos {
		if name != "" && info.Name != name {
			continue
		}
		if !slices.Contains(names, info.Name) {
			names = append(names, info.Name)
		}
		if info.Status != snapstore.StatusIncomplete {
			latest = info.Dir
		}
	}
	switch {
	case len(names) > 1:
		return "", usagef("the stores hold sessions of %s: name one with --name", strings.Join(names, ", "))
	case latest == "" && name != "":
		return "", fmt.Errorf("no finished session of %s in %s", name, strings.Join(stores, ", "))
	case latest == "":
		return "", fmt.Errorf("no finished session in %s", strings.Join(stores, ", "))
	}
	return latest, nil
}

func runSessionsShow(e *env, name, id string) error {
	var dir string
	var err error
	switch {
	case id == "latest":
		dir, err = e.latestSession(name)
	case name != "":
		return usagef("--name goes with latest only: a session ID names its device")
	default:
		dir, err = e.findSession(id)
	}
	if err != nil {
		return err
	}
	info := snapstore.Inspect(dir)
	s := describeSession(info)
	s.Meta = info.Meta
	if infos, err := snapstore.ListSessions(filepath.Dir(dir)); err == nil {
		s = withRestorability(s, restorePoints(infos)[info.ID])
	}
	if e.json {
		return e.emit(s, nil)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	row("id", s.ID)
	row("device", s.Device)
	row("directory", s.Dir)
	row("state", s.State)
	if s.Restorable {
		row("restorable", "yes")
	} else {
		row("restorable", "no: "+s.NotRestorable)
	}
	row("invalid because", s.InvalidReason)
	row("problem", s.Error)
	row("label", s.Label)
	if s.Pinned {
		row("pinned", "yes: prune never removes it nor any later session")
	}
	row("filesystem", s.FSType)
	if s.ChunkSize > 0 {
		row("chunk size", units.FormatBytes(uint64(s.ChunkSize)))
	}
	for _, t := range []struct {
		k string
		v *time.Time
	}{{"armed", s.Armed}, {"mounted", s.Mounted}, {"unmounted", s.Unmounted}, {"closed", s.Closed}} {
		if t.v != nil {
			row(t.k, fmtTime(t.v))
		}
	}
	row("blocks", strconv.FormatInt(s.Blocks, 10))
	row("bytes", fmt.Sprintf("%d (%s)", s.Bytes, units.FormatBytes(uint64(max(s.Bytes, 0)))))
	if s.Meta != nil && s.Meta.Dmsnap != nil {
		for _, n := range s.Meta.Dmsnap.Notes {
			row("note", n)
		}
	}
	return tw.Flush()
}

func sessionsVerifyCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "verify [ID...]",
		Short: "check every checksum of the given sessions (all finished ones when none is given)",
		Long: `Checks every checksum of the given sessions (all finished ones when none is
given). Exit 1 naming each damaged file, offset and record; exit 5 when a
session could not be read for a reason of the OS (not damage).`,
		ValidArgsFunction: completeSessions(e, false),
		RunE:              func(c *cobra.Command, args []string) error { return runSessionsVerify(e, args) },
	}
}

func runSessionsVerify(e *env, args []string) error {
	var dirs []string
	if len(args) == 0 {
		stores, err := e.sessionStores("")
		if err != nil {
			return err
		}
		infos, err := listStores(stores)
		if err != nil {
			return err
		}
		for _, info := range infos {
			if info.Status == snapstore.StatusIncomplete {
				continue // live or not converted yet: nothing to verify
			}
			dirs = append(dirs, info.Dir)
		}
		if len(dirs) == 0 {
			return e.emit([]snapstore.Verified{}, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "no finished sessions in %s\n", strings.Join(stores, ", "))
				return err
			})
		}
	}
	for _, id := range args {
		dir, err := e.findSession(id)
		if err != nil {
			return err
		}
		dirs = append(dirs, dir)
	}
	results := []snapstore.Verified{}
	failed, unverified := 0, 0
	p := newProgress(e.stderr, e.json)
	for _, dir := range dirs {
		if err := e.ctx.Err(); err != nil {
			return err
		}
		v := snapstore.VerifySession(e.ctx, dir, p)
		if !e.json {
			printVerified(e.stdout, v)
		}
		results = append(results, v)
		switch v.Outcome {
		case snapstore.VerifyDamaged, snapstore.VerifyNotFinished, snapstore.VerifyFailed:
			failed++
		case snapstore.VerifyUnreadable:
			unverified++
		}
	}
	if e.json {
		e.emit(results, nil)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d sessions failed verification: restoring through them would be wrong; see the problems above", failed, len(dirs))
	}
	if unverified > 0 {
		return fmt.Errorf("%d of %d sessions could not be read, so whether they are intact is not known (%w: an OS error, not damage): fix what is named above and verify them again",
			unverified, len(dirs), snapstore.ErrCannotVerify)
	}
	return nil
}

// print writes v as text.
func printVerified(w io.Writer, v snapstore.Verified) {
	switch v.Outcome {
	case snapstore.VerifyNotFinished:
		fmt.Fprintf(w, "%s: not finished (no meta.json): it is live or waiting for `dmsnap watch` to convert it\n", v.ID)
	case snapstore.VerifyDamaged:
		fmt.Fprintf(w, "%s: DAMAGED\n", v.ID)
		for _, p := range v.Problems {
			fmt.Fprintf(w, "  %s\n", p)
		}
		if v.Error != "" {
			fmt.Fprintf(w, "  and %s\n", v.Error)
		}
	case snapstore.VerifyUnreadable:
		fmt.Fprintf(w, "%s: %s (an OS error, not damage)\n", v.ID, v.Error)
	case snapstore.VerifyFailed:
		fmt.Fprintf(w, "%s: verification failed: %s\n", v.ID, v.Error)
	default:
		var notes []string
		if v.Unverified {
			notes = append(notes, "unverified: a seed session without checksums, structure checked only")
		}
		if v.Invalid {
			notes = append(notes, "flagged invalid: the kernel dropped its snapshot, its pre-images are incomplete")
		}
		extra := ""
		if len(notes) > 0 {
			extra = "; " + strings.Join(notes, "; ")
		}
		fmt.Fprintf(w, "%s: ok, %d records, %s%s\n", v.ID, v.Records, units.FormatBytes(uint64(max(v.Bytes, 0))), extra)
	}
}

type pruneFlags struct {
	keep  int
	older string
	dry   bool
	pw    passwordFlags
}

func sessionsPruneCmd(e *env) *cobra.Command {
	var f pruneFlags
	c := &cobra.Command{
		Use:   "prune NAME [--keep N | --older-than DURATION]",
		Short: "remove the oldest finished sessions of device NAME",
		Long: `Removes the oldest finished sessions of device NAME: all but the newest N,
or those that started more than DURATION ago (a Go duration such as 36h, or
whole days or weeks: 30d, 2w; at most 100 years). Live sessions are never
removed. Runs under the state lock. Asks for the control password first when
one is set (dmsnap passwd), except with --dry-run: the sessions it removes
are restore points.

With neither --keep nor --older-than it applies the device's retention
policy (activate --keep-*, dmsnap set) now, as the watcher does; --dry-run
shows what that would remove.`,
		Args:              argsBetween(1, 1, "sessions prune takes one device NAME"),
		ValidArgsFunction: completeDevices(e),
		RunE: func(c *cobra.Command, args []string) error {
			return runSessionsPrune(e, c.Flags(), f, e.deviceName(args[0]))
		},
	}
	fs := c.Flags()
	fs.IntVar(&f.keep, "keep", 0, "keep the newest `N` finished sessions")
	fs.StringVar(&f.older, "older-than", "", "remove sessions that started more than `DURATION` ago (e.g. 36h, 30d, 2w)")
	fs.BoolVar(&f.dry, "dry-run", false, "show what would be removed")
	f.pw.add(fs)
	return c
}

func runSessionsPrune(e *env, fs *pflag.FlagSet, f pruneFlags, name string) error {
	// Changed, not the values: a given --keep -1 or --older-than "" is a
	// mistake to name, not an absent flag.
	if !fs.Changed("keep") && !fs.Changed("older-than") {
		return runPolicyPrune(e, f, name)
	}
	if fs.Changed("keep") && fs.Changed("older-than") {
		return usagef("sessions prune takes one of --keep N and --older-than DURATION (neither: the device's retention policy)")
	}
	keepN, age := -1, time.Duration(0) // pruneVictims: keepN < 0 prunes by age
	if fs.Changed("keep") {
		if keepN = f.keep; keepN < 0 {
			return usagef("--keep %d: want 0 or more", f.keep)
		}
	} else {
		var err error
		if age, err = units.ParseAge(f.older); errors.Is(err, units.ErrZeroAge) {
			return usagef("--older-than %s would remove every finished session: give a positive DURATION, or --keep 0 to remove them all", f.older)
		} else if err != nil {
			return usagef("--older-than: %v", err)
		}
	}
	if err := f.pw.check(); err != nil {
		return err
	}
	if !f.dry {
		// Asked before the lock is taken, so a slow typist holds up no one.
		if err := requireSecret(e, &f.pw); err != nil {
			return err
		}
	}
	stores, err := e.sessionStores(name)
	if err != nil {
		return err
	}
	store := stores[0] // name's: the registry's, else --store
	res := pruned{Name: name, DryRun: f.dry, Removed: []string{}}
	plan, err := newManager(e).Prune(e.ctx, store, snapstore.PruneRequest{Name: name, Keep: keepN, OlderThan: age}, f.dry, func(info snapstore.SessionInfo) {
		res.Removed = append(res.Removed, info.ID)
		if !e.json {
			fmt.Fprintf(e.stdout, "removed %s\n", info.ID)
		}
	})
	if len(plan.Finished) > 0 {
		fmt.Fprintf(e.stderr, "dmsnap sessions prune: finished removing %s (an interrupted prune)\n", strings.Join(plan.Finished, ", "))
	}
	if err != nil {
		if e.json && len(plan.Remove) > 0 {
			e.emit(res, nil) // the removal failed: what was removed before it
		}
		return fmt.Errorf("prune %s: %w", name, err)
	}
	if plan.Short != "" {
		fmt.Fprintf(e.stderr, "dmsnap sessions prune: %s\n", plan.Short)
	}
	res.PointsBefore, res.PointsAfter, res.Oldest = plan.Points, plan.PointsAfter, plan.Oldest
	if f.dry {
		for _, info := range plan.Remove {
			if !e.json {
				fmt.Fprintf(e.stdout, "would remove %s\n", info.ID)
			}
			res.Removed = append(res.Removed, info.ID)
		}
	}
	return e.emit(res, func(w io.Writer) error {
		if len(plan.Remove) == 0 {
			fmt.Fprintf(w, "nothing to prune for %s\n", name)
		}
		left := "no restore point is left"
		if plan.Oldest != "" {
			left = fmt.Sprintf("the oldest is the state before %s", plan.Oldest)
		}
		verb := "left"
		if f.dry {
			verb = "would be left"
		}
		_, err := fmt.Fprintf(w, "%s: %d restore point(s) %s of %d; %s\n", name, plan.PointsAfter, verb, plan.Points, left)
		return err
	})
}

// pruned is prune's result.
type pruned struct {
	Name         string   `json:"name"`
	DryRun       bool     `json:"dry_run"`
	Removed      []string `json:"removed"` // or, with dry_run, would be
	PointsBefore int      `json:"restore_points_before"`
	PointsAfter  int      `json:"restore_points_after"`
	Oldest       string   `json:"oldest_restore_point,omitempty"`
}

// runPolicyPrune is sessions prune NAME without --keep or --older-than:
// the device's retention policy, applied now (retain).
func runPolicyPrune(e *env, f pruneFlags, name string) error {
	reg, err := session.LoadRegistry(e.state)
	if err != nil {
		return err
	}
	d := reg.Device(name)
	if d == nil || d.Retention == nil {
		return usagef("%s has no retention policy (activate --keep-*, dmsnap set): give --keep N or --older-than DURATION", name)
	}
	if err := f.pw.check(); err != nil {
		return err
	}
	if !f.dry {
		if err := requireSecret(e, &f.pw); err != nil {
			return err
		}
	}
	res := pruned{Name: name, DryRun: f.dry, Removed: []string{}}
	plan, err := newManager(e).Retain(e.ctx, name, f.dry, func(info snapstore.SessionInfo, why string) {
		res.Removed = append(res.Removed, info.ID)
		if !e.json {
			fmt.Fprintf(e.stdout, "removed %s (%s)\n", info.ID, why)
		}
	})
	if err != nil {
		return fmt.Errorf("prune %s: %w", name, err)
	}
	if f.dry {
		for _, info := range plan.Remove {
			res.Removed = append(res.Removed, info.ID)
			if !e.json {
				fmt.Fprintf(e.stdout, "would remove %s (%s)\n", info.ID, plan.Why[info.ID])
			}
		}
	}
	if plan.Short != "" {
		fmt.Fprintf(e.stderr, "dmsnap sessions prune: %s\n", plan.Short)
	}
	return e.emit(res, func(w io.Writer) error {
		if len(plan.Remove) == 0 {
			fmt.Fprintf(w, "nothing to prune for %s (%s)\n", name, d.Retention)
		}
		return nil
	})
}
