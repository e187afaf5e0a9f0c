package main

import (
	"errors"
	"fmt"
	"os"
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
		sessionsOpenCmd(e), sessionsMountCmd(e), sessionsCloseCmd(e))
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
	s := sessionJSON{ID: info.ID, Name: info.Name, Dir: info.Dir}
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
	var asJSON bool
	c := &cobra.Command{
		Use:               "list [NAME]",
		Short:             "list the sessions of the store (of device NAME only when given), oldest first",
		Args:              argsBetween(0, 1, "sessions list takes at most one NAME"),
		ValidArgsFunction: completeDevices(e),
		RunE:              func(c *cobra.Command, args []string) error { return runSessionsList(e, asJSON, args) },
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON (see dmsnap sessions --help)")
	return c
}

func runSessionsList(e *env, asJSON bool, args []string) error {
	name := ""
	if len(args) == 1 {
		name = args[0]
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
		if len(args) == 1 && info.Name != args[0] {
			continue
		}
		out = append(out, withRestorability(describeSession(info), points[info.ID]))
	}
	if asJSON {
		return printJSON(e.stdout, out)
	}
	if len(out) == 0 {
		fmt.Fprintf(e.stdout, "no sessions in %s\n", strings.Join(stores, ", "))
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tDEVICE\tSTATE\tRESTORABLE\tMOUNTED\tUNMOUNTED\tBLOCKS\tBYTES")
	var why []string // one line per session that breaks a chain
	seen := map[string]bool{}
	for _, s := range out {
		restorable := "yes"
		if !s.Restorable {
			restorable = "no"
			if p := points[s.ID]; p.Blocker != "" && !seen[p.Blocker] {
				seen[p.Blocker] = true
				why = append(why, p.Blocker+" "+points[p.Blocker].Why)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", s.ID, s.Device, s.State, restorable, fmtTime(s.Mounted), fmtTime(s.Unmounted), s.Blocks, units.FormatBytes(uint64(max(s.Bytes, 0))))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, w := range why {
		fmt.Fprintf(e.stdout, "not restorable: %s, so it and every session before it cannot be restored to\n", w)
	}
	return nil
}

func fmtTime(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

func sessionsShowCmd(e *env) *cobra.Command {
	var (
		asJSON bool
		name   string
	)
	c := &cobra.Command{
		Use:   "show ID|latest",
		Short: "show one session",
		Long: `Shows one session, by ID or the latest finished one (of device --name NAME,
which may be left out when the stores hold the sessions of one device only).`,
		Args:              argsBetween(1, 1, "sessions show takes one session ID, or latest"),
		ValidArgsFunction: completeSessions(e, true),
		RunE:              func(c *cobra.Command, args []string) error { return runSessionsShow(e, asJSON, name, args[0]) },
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON (see dmsnap sessions --help)")
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

func runSessionsShow(e *env, asJSON bool, name, id string) error {
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
	if asJSON {
		return printJSON(e.stdout, s)
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
			fmt.Fprintf(e.stdout, "no finished sessions in %s\n", strings.Join(stores, ", "))
			return nil
		}
	}
	for _, id := range args {
		dir, err := e.findSession(id)
		if err != nil {
			return err
		}
		dirs = append(dirs, dir)
	}
	failed, unverified := 0, 0
	for _, dir := range dirs {
		if err := e.ctx.Err(); err != nil {
			return err
		}
		switch verifyOne(e, dir) {
		case verifyFailed:
			failed++
		case verifyUnreadable:
			unverified++
		}
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

// The outcomes of verifyOne.
const (
	verifyOK         = iota
	verifyFailed     // damaged, or not a finished session
	verifyUnreadable // the OS would not read a file: nothing is known
)

// verifyOne verifies a session and prints the outcome.
func verifyOne(e *env, dir string) int {
	id := filepath.Base(dir)
	if _, err := os.Stat(filepath.Join(dir, snapstore.MetaFile)); errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(e.stdout, "%s: not finished (no meta.json): it is live or waiting for `dmsnap watch` to convert it\n", id)
		return verifyFailed
	}
	res, err := snapstore.Verify(e.ctx, dir)
	var ve *snapstore.VerifyError
	switch {
	case errors.As(err, &ve):
		fmt.Fprintf(e.stdout, "%s: DAMAGED\n", id)
		for _, p := range res.Problems {
			fmt.Fprintf(e.stdout, "  %v\n", p)
		}
		if ve.Stopped != nil {
			fmt.Fprintf(e.stdout, "  and verification stopped there: %v\n", ve.Stopped)
		}
		return verifyFailed
	case errors.Is(err, snapstore.ErrCannotVerify):
		// err reads "cannot verify: <what the OS said>".
		fmt.Fprintf(e.stdout, "%s: %v (an OS error, not damage)\n", id, err)
		return verifyUnreadable
	case err != nil:
		fmt.Fprintf(e.stdout, "%s: verification failed: %v\n", id, err)
		return verifyFailed
	}
	var notes []string
	if res.Unverified {
		notes = append(notes, "unverified: a seed session without checksums, structure checked only")
	}
	if res.Invalid {
		notes = append(notes, "flagged invalid: the kernel dropped its snapshot, its pre-images are incomplete")
	}
	extra := ""
	if len(notes) > 0 {
		extra = "; " + strings.Join(notes, "; ")
	}
	fmt.Fprintf(e.stdout, "%s: ok, %d records, %s%s\n", id, res.Records, units.FormatBytes(uint64(max(res.Bytes, 0))), extra)
	return verifyOK
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
		Use:   "prune NAME (--keep N | --older-than DURATION)",
		Short: "remove the oldest finished sessions of device NAME",
		Long: `Removes the oldest finished sessions of device NAME: all but the newest N,
or those that started more than DURATION ago (a Go duration such as 36h, or
whole days or weeks: 30d, 2w; at most 100 years). Live sessions are never
removed. Runs under the state lock. Asks for the control password first when
one is set (dmsnap passwd), except with --dry-run: the sessions it removes
are restore points.`,
		Args:              argsBetween(1, 1, "sessions prune takes one device NAME"),
		ValidArgsFunction: completeDevices(e),
		RunE:              func(c *cobra.Command, args []string) error { return runSessionsPrune(e, c.Flags(), f, args[0]) },
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
	if fs.Changed("keep") == fs.Changed("older-than") {
		return usagef("sessions prune needs exactly one of --keep N and --older-than DURATION")
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
	lock, err := newManager(e).Lock(e.ctx)
	if err != nil {
		return fmt.Errorf("prune %s: %w", name, err)
	}
	defer lock.Release()
	reg, err := session.LoadRegistry(e.state)
	if err != nil {
		return fmt.Errorf("prune %s: %w", name, err)
	}
	held := map[string]bool{} // directories the registry still owns
	for _, d := range reg.Devices {
		for _, s := range d.Sessions {
			if s.Dir != "" {
				held[filepath.Clean(s.Dir)] = true
			}
		}
	}
	now := time.Now()
	if done, err := snapstore.FinishPrunes(store, now); err != nil {
		return fmt.Errorf("prune %s: finishing an interrupted prune in %s: %w", name, store, err)
	} else if len(done) > 0 {
		fmt.Fprintf(e.stderr, "dmsnap sessions prune: finished removing %s (an interrupted prune)\n", strings.Join(done, ", "))
	}
	infos, err := snapstore.ListSessions(store)
	if err != nil {
		return fmt.Errorf("list the store %s: %w", store, err)
	}
	plan := snapstore.PlanPrune(infos, snapstore.PruneRequest{Name: name, Keep: keepN, OlderThan: age, Now: now, Held: held})
	if plan.Short != "" {
		fmt.Fprintf(e.stderr, "dmsnap sessions prune: %s\n", plan.Short)
	}
	for _, info := range plan.Remove {
		if f.dry {
			fmt.Fprintf(e.stdout, "would remove %s\n", info.ID)
			continue
		}
		err := snapstore.PruneSession(store, info, time.Now(), func(step string) { session.Crashpoint(session.CrashpointPrune + step) })
		if err != nil {
			return fmt.Errorf("remove session %s: %w", info.ID, err)
		}
		fmt.Fprintf(e.stdout, "removed %s\n", info.ID)
	}
	if len(plan.Remove) == 0 {
		fmt.Fprintf(e.stdout, "nothing to prune for %s\n", name)
	}
	left := "no restore point is left"
	if plan.Oldest != "" {
		left = fmt.Sprintf("the oldest is the state before %s", plan.Oldest)
	}
	verb := "left"
	if f.dry {
		verb = "would be left"
	}
	fmt.Fprintf(e.stdout, "%s: %d restore point(s) %s of %d; %s\n", name, plan.PointsAfter, verb, plan.Points, left)
	return nil
}
