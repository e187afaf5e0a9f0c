package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/restore"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

func init() {
	register(command{name: "restore", summary: "return a device to its state before a session", run: runRestore})
}

const restoreUsage = `usage: dmsnap restore [NAME|DEVICE] [--session ID|latest] [--to FILE [--force]] [--dry-run] [--no-undo] [--merge] [--yes] [--json]
                      [--password-stdin|--password-file FILE]

Returns the device to its state before session ID: the pre-images of that
session and of every later one are written back, the oldest winning. Every
session of the plan is verified before a byte is written.

An activated device is restored through dmsnap-NAME while a new session
records what the restore overwrites, so the restore can itself be undone
(the output names the session to restore); --no-undo writes dmsnap-NAME-real
directly instead, and asks for the control password first when one is set
(dmsnap passwd), as it leaves no way back. A device that is not activated is
restored directly.

--merge restores instantly (an activated device only): the plan is written
as a COW store and loaded as a snapshot-merge target in place of the origin,
which shows the restored state at once while the kernel copies the chunks
back in the background (progress in dmsnap status; dmsnap watch puts the
stack back when the kernel is done). The session armed for the restore
records what the merge overwrites, so a merge restore can be undone too:
once that session is closed (dmsnap watch closes it after the merge, or the
next unmount does), restoring it puts the device back. Where the kernel
refuses the merge table, the normal restore runs instead and says so.

--to FILE writes the restored image to FILE and only reads the device (for
an activated device, its live session's snapshot). FILE must not be what the
restore reads: the device or image file, the raw device, the file behind a
loop device of them, a file on a filesystem of them, or a session's file
(compared by device and inode, so links do not hide it). An existing FILE
that is not empty, or a block device, is overwritten only with --force.

Without --session on a terminal, the device's sessions are listed and one is
asked for; then the restore is confirmed (--yes skips that). Without a
terminal, --session and --yes are required for a restore of the device.

exit codes: 0 ok (for --merge: merging, or restored normally where the
kernel refused the merge), 1 failure (a damaged session, a device of another
size, ...), 2 usage, 3 wrong password (--no-undo), 4 device mounted or open
elsewhere, or an instant restore of it still merging, 5 a session could not
be read to be checked (an OS error such as permission denied or too many open
files, not damage; nothing was written)
`

type restoreFlags struct {
	session string
	to      string
	force   bool
	dryRun  bool
	noUndo  bool
	merge   bool
	yes     bool
	json    bool
	pw      passwordFlags // asked for with --no-undo
}

func runRestore(e *env, args []string) error {
	fs := newFlags(e, "restore")
	var f restoreFlags
	fs.StringVar(&f.session, "session", "", "restore to the state before this session (an ID, or latest)")
	fs.StringVar(&f.to, "to", "", "write the restored image to `FILE`; the device is only read")
	fs.BoolVar(&f.force, "force", false, "with --to: overwrite FILE when it is not empty, or is a block device")
	fs.BoolVar(&f.dryRun, "dry-run", false, "print the plan and write nothing")
	fs.BoolVar(&f.noUndo, "no-undo", false, "write the raw device directly: faster, but the restore cannot be undone")
	fs.BoolVar(&f.merge, "merge", false, "restore instantly: the kernel merges the plan back in the background (snapshot-merge)")
	fs.BoolVarP(&f.yes, "yes", "y", false, "do not ask for confirmation")
	fs.BoolVar(&f.json, "json", false, "print the result as JSON")
	f.pw.add(fs)
	fs.Usage = func() {
		fmt.Fprint(e.stderr, restoreUsage, "\nflags:\n", flagUsages(fs))
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return usagef("restore takes at most one device (NAME or DEVICE), got %q", fs.Args())
	}
	if f.force && f.to == "" {
		return usagef("--force goes with --to only: it allows overwriting the image file")
	}
	if f.to != "" && f.noUndo {
		return usagef("--no-undo and --to do not go together: --to leaves the device untouched")
	}
	if f.merge && (f.to != "" || f.noUndo) {
		return usagef("--merge goes with neither --to nor --no-undo: it merges through the origin, recorded by a session")
	}
	if f.session != "" && f.session != "latest" {
		if err := session.ValidateSessionID(f.session); err != nil {
			return usagef("--session %q: %v", f.session, err)
		}
	}
	if err := f.pw.check(); err != nil {
		return err
	}
	r := &restorer{e: e, f: f, arg: fs.Arg(0), tty: isTerminal(e.stdin)}
	return r.run()
}

// isTerminal reports whether r is a terminal one can ask questions on.
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// restorer is one run of `dmsnap restore`.
type restorer struct {
	e   *env
	f   restoreFlags
	arg string
	tty bool // stdin is a terminal: the session may be picked and the restore confirmed

	name   string          // session name: the <name> of <name>_<secs>
	device string          // raw device (or image file) path
	active *session.Device // registry entry when the device is activated
	store  string          // where the device's sessions live
	in     *bufio.Reader   // answers, on a terminal
	opened []*snapstore.Session
	// verified: sessions whose files snapstore.Verify checked in this run.
	verified map[string]bool
	// points: whether each session of the device can be restored to
	// (deviceSessions); all: every session of the device, in order.
	points map[string]snapstore.RestorePoint
	all    []snapstore.SessionInfo
}

// restoreResult is the --json output of a restore (and of --to, --dry-run).
type restoreResult struct {
	Device   string             `json:"device"`
	Name     string             `json:"name"`
	Session  string             `json:"session"`  // the target: restored to the state before it
	Sessions []string           `json:"sessions"` // the plan, oldest first
	DryRun   bool               `json:"dry_run,omitempty"`
	To       string             `json:"to,omitempty"`
	Image    *restore.CopyStats `json:"image,omitempty"`
	// Through is where the restore wrote: dmsnap-NAME (undoable), -real
	// (--no-undo) or the raw device (not activated); "" for --to and --dry-run.
	Through string `json:"through,omitempty"`
	// Undo is the session to restore to undo this restore; "" when it
	// cannot be undone.
	Undo     string          `json:"undo_session,omitempty"`
	Undoable bool            `json:"undoable"`
	Written  uint64          `json:"bytes_written"`
	Writes   int64           `json:"writes"`
	Summary  restore.Summary `json:"summary"`
	// ArmedCloses: a dry run of an activated device; the real restore first
	// closes the armed session, which then joins the plan.
	ArmedCloses bool `json:"armed_session_closes_first,omitempty"`
	// Merge: --merge was given; whether the merge started or the normal
	// restore ran instead (and why).
	Merge    *mergeJSON `json:"merge,omitempty"`
	Warnings []string   `json:"warnings"`
}

func (r *restorer) close() {
	for _, s := range r.opened {
		s.Close()
	}
	r.opened = nil
}

func (r *restorer) run() error {
	defer r.close()
	if r.tty {
		r.in = bufio.NewReader(r.e.stdin)
	}
	if err := r.resolveDevice(); err != nil {
		return err
	}
	sessions, err := r.deviceSessions()
	if err != nil {
		return err
	}
	if len(sessions) == 0 {
		return fmt.Errorf("no closed sessions of %s in %s: nothing to restore", r.name, r.store)
	}
	target, err := r.pickTarget(sessions)
	if err != nil {
		return err
	}
	if err := r.checkTarget(sessions, target); err != nil {
		return err
	}
	if r.f.dryRun || r.f.to != "" {
		// Only a restore of the device closes the armed session and
		// finishes those a crash left closing; without their pre-images
		// a plan or an image would be wrong without a word.
		if err := r.refuseUnfinished(); err != nil {
			return err
		}
	}
	switch {
	case r.f.dryRun:
		return r.dryRun(sessions, target)
	case r.f.to != "":
		return r.toFile(sessions, target)
	}
	return r.restoreDevice(sessions, target)
}

// resolveDevice finds the device from the argument, the registry and the
// store, and checks the device's store: a store others could write to may
// hold planted sessions, never to be written onto a device. From then on
// r.store is the store's real path (session.ResolveStore), so that a
// symlink swapped after the check cannot redirect the restore.
func (r *restorer) resolveDevice() error {
	if err := r.findDevice(); err != nil {
		return err
	}
	var err error
	r.store, err = session.ResolveStore(r.store)
	return err
}

func (r *restorer) findDevice() error {
	reg, err := session.LoadRegistry(r.e.state)
	if err != nil {
		return err
	}
	r.store = r.e.store
	arg := r.arg
	if arg == "" && r.f.session != "" && r.f.session != "latest" {
		// The session names the device: read it only from a checked store.
		if r.store, err = session.ResolveStore(r.store); err != nil {
			return err
		}
		info := snapstore.Inspect(filepath.Join(r.store, r.f.session))
		if info.Name == "" {
			return fmt.Errorf("no session %s in %s (see dmsnap sessions list)", r.f.session, r.store)
		}
		arg = info.Name
	}
	if arg != "" {
		d, err := reg.Lookup(arg)
		if fi, serr := os.Stat(arg); err != nil && serr == nil && fi.Mode().IsRegular() {
			// An image file of the device: never activated.
			err = session.ErrNotActivated
		}
		switch {
		case err == nil:
			r.active, r.name, r.device = d, d.Name, d.Path
			if d.Store != "" {
				r.store = d.Store
			}
			return nil
		case !errors.Is(err, session.ErrNotActivated):
			return err
		case strings.Contains(arg, "/"):
			r.device, r.name = arg, snapstore.SanitizeName(arg)
			return nil
		}
		r.name = arg
	} else {
		if r.store, err = session.ResolveStore(r.store); err != nil {
			return err
		}
		names, err := storeNames(r.store)
		if err != nil {
			return err
		}
		switch len(names) {
		case 0:
			return fmt.Errorf("no sessions in %s: nothing to restore", r.store)
		case 1:
			r.name = names[0]
		default:
			return usagef("the store %s holds sessions of %s: name the device to restore", r.store, strings.Join(names, ", "))
		}
		if d := reg.Device(r.name); d != nil {
			r.active, r.device = d, d.Path
			return nil
		}
	}
	// Not activated, given by name: the device the newest session recorded,
	// read only from a checked store.
	if r.store, err = session.ResolveStore(r.store); err != nil {
		return err
	}
	sessions, err := r.deviceSessions()
	if err != nil {
		return err
	}
	for i := len(sessions) - 1; i >= 0; i-- {
		if m := sessions[i].Meta; m != nil && m.Device != "" {
			r.device = m.Device
			return nil
		}
	}
	return fmt.Errorf("%s is not activated and no session of it in %s records its device: give the device path", r.name, r.store)
}

func storeNames(store string) ([]string, error) {
	list, err := snapstore.ListSessions(store)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, s := range list {
		if len(names) == 0 || names[len(names)-1] != s.Name {
			names = append(names, s.Name)
		}
	}
	return names, nil
}

// deviceSessions lists the device's sessions, oldest first, without the
// live session of an activated device (it is still recording).
func (r *restorer) deviceSessions() ([]snapstore.SessionInfo, error) {
	list, err := snapstore.ListSessions(r.store)
	if err != nil {
		return nil, err
	}
	// Sessions the registry still holds: the live one, and any a crash left
	// closing (not converted yet). The rotation before the restore writes
	// finishes them, and the chain is listed again after it.
	held := map[string]bool{}
	if r.active != nil {
		for _, s := range r.active.Sessions {
			if s.Dir != "" {
				held[filepath.Base(s.Dir)] = true
			}
		}
	}
	var all, out []snapstore.SessionInfo
	for _, s := range list {
		if s.Name == r.name {
			all = append(all, s)
		}
	}
	// In the order they were taken, by sequence number: the clock may
	// have stepped back between two of them.
	slices.SortStableFunc(all, snapstore.Order)
	// Restore points are judged over every session, the held ones too: a
	// session the kernel invalidated breaks the chain before it is
	// converted.
	r.all = all
	r.points = map[string]snapstore.RestorePoint{}
	for i, p := range snapstore.RestorePoints(all) {
		r.points[all[i].ID] = p
		if !held[all[i].ID] {
			out = append(out, all[i])
		}
	}
	return out, nil
}

// refuseUnfinished fails when the registry holds a session of the device
// that has ended but is not converted yet (a command was interrupted while
// closing it): its pre-images are not in the store.
func (r *restorer) refuseUnfinished() error {
	if r.active == nil {
		return nil
	}
	for _, s := range r.active.Sessions {
		if s.State.Ending() {
			return fmt.Errorf("session %d of %s is still being closed (an interrupted command left it): its pre-images are not in the store yet; run dmsnap attach %s (or start dmsnap watch) to finish it, then retry",
				s.N, r.name, r.name)
		}
	}
	return nil
}

// checkTarget refuses a target the device cannot be put back to: a broken
// chain (an invalid or damaged session on the way), or sessions that a
// restore no session recorded (not activated, --no-undo) left behind.
func (r *restorer) checkTarget(sessions []snapstore.SessionInfo, target int) error {
	id := sessions[target].ID
	if p, ok := r.points[id]; ok && !p.OK {
		return fmt.Errorf("%s cannot be restored to its state before session %s: %s; nothing was written; %s",
			r.name, id, p.Sentence(id), oldestRestorable(r.name, sessions))
	}
	restores, err := snapstore.RestoresOf(r.store, r.name)
	if err != nil {
		return fmt.Errorf("read %s in %s: %w", snapstore.RestoresLog, r.store, err)
	}
	if err := snapstore.CheckRestored(r.all, id, restores); err != nil {
		return fmt.Errorf("%s cannot be restored to its state before session %s: %w; nothing was written", r.name, id, err)
	}
	return nil
}

// noteRestore records, in the store, a restore that no session recorded,
// so that a later restore to a session it left behind is refused
// (snapstore.CheckRestored).
func (r *restorer) noteRestore(chain []snapstore.SessionInfo, how string) error {
	return snapstore.NoteRestore(r.store, r.name, chain[0].ID, chain[len(chain)-1].ID, how, time.Now())
}

// pickTarget finds the session --session names, or asks for one.
func (r *restorer) pickTarget(sessions []snapstore.SessionInfo) (int, error) {
	switch r.f.session {
	case "latest":
		return len(sessions) - 1, nil
	case "":
		if !r.tty {
			return 0, usagef("--session ID is required when stdin is not a terminal (see dmsnap sessions list %s)", r.name)
		}
		return pickSession(r.in, r.e.stdout, r.name, sessions)
	}
	for i, s := range sessions {
		if s.ID == r.f.session {
			return i, nil
		}
	}
	if err := prunedTarget(r.store, r.f.session, r.name, sessions); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no closed session %s of %s in %s (see dmsnap sessions list %s)", r.f.session, r.name, r.store, r.name)
}

// pickSession lists the sessions and asks which one to restore to.
func pickSession(in *bufio.Reader, out io.Writer, name string, sessions []snapstore.SessionInfo) (int, error) {
	fmt.Fprintf(out, "Sessions of %s (restoring to one undoes it and every later one):\n", name)
	fmt.Fprintf(out, "  %3s  %-28s  %-20s  %8s  %10s  %s\n", "#", "SESSION", "TIME (UTC)", "BLOCKS", "SIZE", "STATUS")
	for i, s := range sessions {
		blocks, size := "-", "-"
		if m := s.Meta; m != nil {
			blocks = strconv.FormatInt(m.TotalBlocksSaved, 10)
			size = restore.FormatBytes(uint64(m.TotalBlocksSaved) * uint64(m.BlockSize))
		}
		fmt.Fprintf(out, "  %3d  %-28s  %-20s  %8s  %10s  %s\n", i+1, s.ID, s.Time.UTC().Format(time.DateTime), blocks, size, s.Status)
	}
	for {
		fmt.Fprintf(out, "Restore to the state before which session? [1-%d, q to quit]: ", len(sessions))
		line, err := in.ReadString('\n')
		ans := strings.TrimSpace(line)
		if ans == "q" || (err != nil && ans == "") {
			return 0, errors.New("no session chosen: nothing was written")
		}
		n, cerr := strconv.Atoi(ans)
		if cerr == nil && n >= 1 && n <= len(sessions) {
			return n - 1, nil
		}
		for i, s := range sessions {
			if s.ID == ans {
				return i, nil
			}
		}
		fmt.Fprintf(out, "%q is not one of the sessions above.\n", ans)
		if err != nil {
			return 0, errors.New("no session chosen: nothing was written")
		}
	}
}

// confirm asks a yes/no question; only "y" or "yes" is yes.
func confirm(in *bufio.Reader, out io.Writer, question string) bool {
	fmt.Fprintf(out, "%s [y/N]: ", question)
	line, _ := in.ReadString('\n')
	ans := strings.ToLower(strings.TrimSpace(line))
	return ans == "y" || ans == "yes"
}

// plan opens the sessions from target to the newest, runs the preflight
// checks against dev (nil: none) and verifies every session's files.
func (r *restorer) plan(sessions []snapstore.SessionInfo, dev restore.Device) (*restore.Plan, []string, error) {
	chain := sessions
	var infos []restore.SessionInfo
	for _, s := range chain {
		info := restore.SessionInfo{ID: s.ID}
		switch s.Status {
		case snapstore.StatusComplete:
			info.State, info.Verified = restore.StateComplete, true
		case snapstore.StatusUnverified:
			info.State = restore.StateComplete
		case snapstore.StatusInvalid:
			info.State, info.Verified = restore.StateInvalid, true
		case snapstore.StatusIncomplete:
			info.State = restore.StateIncomplete
		case snapstore.StatusUnreadable:
			return nil, nil, unreadable(s.ID, s.Err)
		default:
			return nil, nil, fmt.Errorf("session %s is damaged: %v; nothing was written (dmsnap sessions verify %s tells more)", s.ID, s.Err, s.ID)
		}
		if m := s.Meta; m != nil && m.Dmsnap != nil {
			info.Identity = restore.Identity{Size: uint64(m.Dmsnap.Device.Size), FSUUID: m.Dmsnap.Device.FSUUID}
		}
		infos = append(infos, info)
	}
	var warns []string
	if dev != nil {
		w, err := restore.Preflight(dev, infos, restore.PreflightOptions{})
		if err != nil {
			return nil, nil, err
		}
		warns = append(warns, w...)
		if d, ok := dev.(*deviceProbe); ok {
			warns = append(warns, d.warns...)
		}
		if d, ok := dev.(*deviceProbe); ok && d.uuid != "" {
			// The UUID only warns: a session records the identity of the
			// device at arming, so a mkfs inside a later session, or a
			// restore across one, legitimately changes it. The size cannot
			// change and is compared strictly.
			for i := len(infos) - 1; i >= 0; i-- {
				if u := infos[i].Identity.FSUUID; u != "" {
					if u != d.uuid {
						warns = append(warns, fmt.Sprintf("%s holds filesystem UUID %s, session %s recorded %s: make sure this is the device the sessions were taken of", d.path, d.uuid, infos[i].ID, u))
					}
					break
				}
			}
		}
	} else {
		for _, info := range infos {
			if info.State != restore.StateComplete {
				return nil, nil, &restore.StateError{Session: info.ID, State: info.State}
			}
		}
	}
	// Every session's files are checked before anything changes: their
	// structure here, then the data of the records the plan uses, read
	// in blocks.dat order (sequential reads; the write pass then finds
	// them in the page cache). A session verified earlier in this run
	// (before the armed session was closed) is not read again.
	var plan, unchecked []restore.Session
	for _, s := range chain {
		check := !r.verified[s.ID]
		if check {
			if _, err := snapstore.VerifyStructure(r.e.ctx, s.Dir); err != nil {
				return nil, nil, refusedByVerify(s.ID, err)
			}
		}
		ss, err := snapstore.Open(s.Dir)
		if err != nil {
			return nil, nil, refusedByVerify(s.ID, err)
		}
		r.opened = append(r.opened, ss)
		plan = append(plan, restore.NewStoreSession(ss))
		if check {
			unchecked = append(unchecked, plan[len(plan)-1])
		}
	}
	if len(unchecked) > 0 {
		// A record the whole plan uses from these sessions has no older
		// pre-image in the chain, so a plan of these sessions alone uses
		// it too: checking that plan checks it.
		sub, err := restore.NewPlan(unchecked)
		if err != nil {
			return nil, nil, err
		}
		if err := sub.Verify(r.e.ctx, r.progress()); err != nil {
			if errors.Is(err, snapstore.ErrCannotVerify) {
				return nil, nil, fmt.Errorf("a session could not be read to be checked, so nothing was written: %w; that is an OS error, not damage: fix it and run the restore again", err)
			}
			return nil, nil, fmt.Errorf("session verification failed; nothing was written: %w", err)
		}
		if r.verified == nil {
			r.verified = map[string]bool{}
		}
		for _, s := range unchecked {
			r.verified[s.ID()] = true
		}
	}
	p, err := restore.NewPlan(plan)
	return p, warns, err
}

// refusedByVerify is the error of a restore refused because session id did
// not verify: damaged, or (errors.Is(err, snapstore.ErrCannotVerify)) not
// readable for a reason of the OS, which is not damage.
func refusedByVerify(id string, err error) error {
	var ve *snapstore.VerifyError
	if !errors.As(err, &ve) && errors.Is(err, snapstore.ErrCannotVerify) {
		return unreadable(id, err)
	}
	return fmt.Errorf("session %s failed verification; nothing was written: %w", id, err)
}

// unreadable is the error of a restore refused because the OS would not
// read session id's files (err wraps snapstore.ErrCannotVerify).
func unreadable(id string, err error) error {
	return fmt.Errorf("session %s could not be read to be checked, so nothing was written: %w; that is an OS error, not damage: fix it and run the restore again", id, err)
}

func ids(sessions []snapstore.SessionInfo) []string {
	out := make([]string, len(sessions))
	for i, s := range sessions {
		out[i] = s.ID
	}
	return out
}

func (r *restorer) result(chain []snapstore.SessionInfo) *restoreResult {
	return &restoreResult{Device: r.device, Name: r.name, Session: chain[0].ID, Sessions: ids(chain), Warnings: []string{}}
}

func (r *restorer) progress() restore.Progress {
	var p restore.Progress = restore.Quiet{}
	if f, ok := r.e.stderr.(*os.File); ok && !r.f.json {
		p = restore.ForFile(f)
	}
	return crashProgress{p, new(bool)}
}

// crashProgress makes every progress step of a restore's write the crash
// point "restore:write" (DMSNAP_CRASHPOINT=restore:write#K kills the restore
// after its K-th write): the crash tests kill a restore half-way.
type crashProgress struct {
	restore.Progress
	writing *bool
}

func (c crashProgress) Begin(phase string, total uint64) {
	*c.writing = phase == "write"
	c.Progress.Begin(phase, total)
}

func (c crashProgress) Add(n uint64) {
	c.Progress.Add(n)
	if *c.writing {
		session.Crashpoint("restore:write")
	}
}

func (r *restorer) dryRun(sessions []snapstore.SessionInfo, target int) error {
	chain := sessions[target:]
	dev := r.probe(r.device, r.device)
	if r.active != nil {
		dev = r.probe(dm.Stack{Name: r.name}.OriginPath(), r.device)
	}
	dev.busyWarns = true
	p, warns, err := r.plan(chain, dev)
	if err != nil {
		return err
	}
	sum, err := p.Summarize(r.e.ctx)
	if err != nil {
		return err
	}
	res := r.result(chain)
	res.DryRun, res.Summary, res.Warnings = true, sum, append(res.Warnings, warns...)
	res.ArmedCloses = r.active != nil
	if r.f.merge {
		res.Merge = &mergeJSON{Requested: true}
	}
	if r.f.json {
		return writeJSON(r.e.stdout, res)
	}
	w := r.e.stdout
	printWarnings(r.e.stderr, warns)
	fmt.Fprintf(w, "Dry run: restoring %s (%s) to its state before session %s would write:\n", r.name, r.device, chain[0].ID)
	if err := sum.WriteText(w); err != nil {
		return err
	}
	if r.active != nil {
		fmt.Fprintf(w, "%s is activated: the restore first closes its armed session, whose pre-images then join the plan.\n", r.name)
	}
	if r.f.merge {
		fmt.Fprintln(w, "--merge: the plan would be loaded as a snapshot-merge in place of the origin (instant), or written as usual where the kernel refuses it.")
	}
	fmt.Fprintln(w, "Nothing was written.")
	return nil
}

func (r *restorer) toFile(sessions []snapstore.SessionInfo, target int) error {
	chain := sessions[target:]
	// The source is the device as it was when its live session was armed:
	// that session's snapshot device, for an activated device, so that the
	// writes the live session holds are undone too without closing it.
	src := r.device
	if r.active != nil {
		cur := r.active.Current()
		if cur == nil {
			return fmt.Errorf("%s is activated but has no live session (run dmsnap watch, or dmsnap attach %s)", r.name, r.device)
		}
		src = dm.Stack{Name: r.name}.SnapshotPath(cur.N)
	}
	// What the image is made of: the destination must be none of it.
	sources := []string{src, r.device}
	for _, s := range chain {
		for _, f := range []string{snapstore.DataFile, snapstore.MapFile, snapstore.CRCFile, snapstore.MetaFile} {
			sources = append(sources, filepath.Join(s.Dir, f))
		}
	}
	tgt, err := restore.CheckImageTarget(r.f.to, sources, r.f.force, restore.TargetProbe{Stat: restore.StatPath, LoopBacking: loopBacking})
	if err != nil {
		return err
	}
	p, warns, err := r.plan(chain, nil)
	if err != nil {
		return err
	}
	sf, err := os.Open(src)
	if err != nil {
		return err
	}
	defer sf.Close()
	size, err := deviceSize(sf)
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	for i := len(chain) - 1; i >= 0; i-- {
		if m := chain[i].Meta; m != nil && m.Dmsnap != nil && m.Dmsnap.Device.Size != size {
			return &restore.IdentityError{Device: src, Session: chain[i].ID, Field: "size",
				Want: fmt.Sprintf("%d bytes", m.Dmsnap.Device.Size), Got: fmt.Sprintf("%d bytes", size)}
		}
	}
	out, err := restore.OpenImageTarget(tgt)
	if err != nil {
		return err
	}
	var dst restore.ImageFile = out
	if tgt.ID.IsBlock() {
		n, err := deviceSize(out)
		if err != nil {
			tgt.Discard(out)
			return fmt.Errorf("%s: %w; nothing was written", r.f.to, err)
		}
		dst = restore.BlockImage{F: out, Size: n}
	}
	res, stats, err := p.ApplyToImage(r.e.ctx, dst, sf, size, restore.ApplyOptions{SkipVerify: true, Progress: r.progress()})
	var ie *restore.IncompleteImageError
	switch {
	case errors.As(err, &ie):
		out.Close()
		state := "now holds neither what it held nor the restored image"
		if !tgt.Exists {
			state = "holds an incomplete image"
		}
		return fmt.Errorf("writing %s: %w; %s %s: delete it, or run the restore again (%s was only read)", r.f.to, err, r.f.to, state, src)
	case err != nil:
		tgt.Discard(out)
		state := "was not changed"
		if !tgt.Exists {
			state = "was not created"
		}
		return fmt.Errorf("writing %s: %w; nothing was written: %s %s", r.f.to, err, r.f.to, state)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("closing %s after writing the image: %w; the image may be incomplete: run the restore again (%s was only read)", r.f.to, err, src)
	}
	rr := r.result(chain)
	rr.To, rr.Image, rr.Summary, rr.Written, rr.Writes = r.f.to, &stats, res.Summary, res.Bytes, res.Writes
	rr.Warnings = append(rr.Warnings, warns...)
	if r.f.json {
		return writeJSON(r.e.stdout, rr)
	}
	printWarnings(r.e.stderr, warns)
	fmt.Fprintf(r.e.stdout, "Wrote %s: %s as it was before session %s (%s of the device copied, %s from %d session(s)); %s was only read.\n",
		r.f.to, r.name, chain[0].ID, restore.FormatBytes(uint64(size)), restore.FormatBytes(res.Bytes), len(chain), src)
	return nil
}

// loopBacking is restore.TargetProbe's LoopBacking: the file behind a loop
// device, by the numbers the kernel holds.
func loopBacking(rdev uint64) (dev, ino uint64, ok bool, err error) {
	return dm.LoopBacking(dm.DevFromNumber(rdev))
}

func (r *restorer) restoreDevice(sessions []snapstore.SessionInfo, target int) error {
	if !r.tty && !r.f.yes {
		return usagef("restoring %s overwrites it: pass --yes to confirm when stdin is not a terminal", r.device)
	}
	if r.f.noUndo {
		// No session records what --no-undo overwrites: it destroys the
		// way back as deactivate and prune do. Asked before anything is
		// held, confirmed or written.
		if err := requireSecret(r.e, &r.f.pw); err != nil {
			return err
		}
	}
	chain := sessions[target:]
	if r.active != nil {
		if err := refuseWhileMerging(r.e.state, r.name, "a restore"); err != nil {
			return err
		}
	}
	if r.f.merge && r.active == nil {
		return fmt.Errorf("--merge: %s is not activated; an instant restore loads a snapshot-merge in place of dmsnap-%s (restore without --merge writes the device directly)", r.device, r.name)
	}
	write := r.device
	through := "the raw device (" + r.device + ")"
	stack := dm.Stack{Name: r.name}
	if r.active != nil {
		write = stack.OriginPath()
		through = write
	}
	dev := r.probe(write, r.device)
	p, warns, err := r.plan(chain, dev)
	if err != nil {
		return err
	}
	// Hold the device exclusively from here on: nobody mounts it while it
	// is restored.
	hold, err := openExclusive(write)
	if err != nil {
		return err
	}
	defer func() {
		if hold != nil {
			hold.Close()
		}
	}()
	sum, err := p.Summarize(r.e.ctx)
	if err != nil {
		return err
	}
	printWarnings(r.e.stderr, warns)
	if !r.f.yes {
		q := fmt.Sprintf("Restore %s (%s) to its state before session %s? %s in %d session(s) will be written",
			r.name, r.device, chain[0].ID, restore.FormatBytes(sum.Bytes), len(chain))
		if r.active != nil {
			q += ", plus what its armed session recorded"
		}
		if r.active == nil || r.f.noUndo {
			q += "; this cannot be undone"
		}
		if !confirm(r.in, r.e.stdout, q) {
			return errors.New("not confirmed: nothing was written")
		}
	}

	var m *session.Manager
	var fallback *mergeJSON // --merge refused by the kernel: the normal restore runs
	if r.active != nil {
		// Close the armed session so its pre-images count: it joins the plan.
		m = newManager(r.e)
		if _, err := m.Rotate(r.e.ctx, r.name, "restore: closing the armed session"); err != nil {
			return fmt.Errorf("closing the armed session of %s before the restore: %w", r.name, err)
		}
		if err := r.reload(); err != nil {
			return err
		}
		sessions, err = r.deviceSessions()
		if err != nil {
			return err
		}
		i := indexOf(sessions, chain[0].ID)
		if i < 0 {
			return fmt.Errorf("session %s vanished from %s", chain[0].ID, r.store)
		}
		chain = sessions[i:]
		r.close()
		if p, _, err = r.plan(chain, nil); err != nil {
			return err
		}
		if r.f.noUndo {
			write, through = stack.RealPath(), stack.RealPath()
		}
		if r.f.merge {
			done, mj, err := r.restoreMerge(p, chain)
			if done || err != nil {
				return err
			}
			fallback = mj
		}
	}
	var dst *os.File
	if write == stack.RealPath() {
		// -real is held by device-mapper: no exclusive open, but the origin
		// stays held exclusively above.
		if dst, err = os.OpenFile(write, os.O_RDWR, 0); err != nil {
			return err
		}
	} else {
		dst, hold = hold, nil
	}
	res, err := p.Apply(r.e.ctx, dst, restore.ApplyOptions{SkipVerify: true, TargetSize: dev.size, Progress: r.progress()})
	if r.active != nil && r.f.noUndo {
		// The origin's page cache may hold blocks written behind its back.
		if hold != nil {
			unix.IoctlSetInt(int(hold.Fd()), unix.BLKFLSBUF, 0)
		}
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	undoable := r.active != nil && !r.f.noUndo
	if !undoable && (err == nil || errors.As(err, new(*restore.PartialWriteError))) {
		// The device no longer has the past the chain's sessions describe
		// (some of it, when the write stopped half-way).
		how := "direct"
		if r.active != nil {
			how = "no-undo"
		}
		if nerr := r.noteRestore(chain, how); nerr != nil {
			fmt.Fprintf(r.e.stderr, "warning: noting the restore in %s failed (%v): a later restore to a session after %s would not be refused, and would give a state the device never had\n",
				filepath.Join(r.store, snapstore.RestoresLog), nerr, chain[0].ID)
		}
	}
	if err != nil {
		err = fmt.Errorf("restoring %s: %w", write, err)
		var pw *restore.PartialWriteError
		if undoable && errors.As(err, &pw) {
			// Half the plan is on the device: close the session that
			// recorded it, so the device can be put back as it was.
			if undo, cerr := r.closeRecording(m); cerr == nil && undo != "" {
				err = fmt.Errorf("%w; to put the device back as it was before this restore: dmsnap restore %s --session %s", err, r.name, undo)
			}
		}
		return err
	}
	rr := r.result(chain)
	rr.Through, rr.Summary, rr.Written, rr.Writes = through, res.Summary, res.Bytes, res.Writes
	rr.Warnings = append(rr.Warnings, warns...)
	rr.Merge = fallback
	if undoable {
		// Close the session that recorded the restore, so that it has an ID
		// the user can restore to undo this one.
		undo, err := r.closeRecording(m)
		if err != nil {
			return fmt.Errorf("restored %s, but closing the session that recorded the restore failed: %w", r.name, err)
		}
		rr.Undo, rr.Undoable = undo, undo != ""
	}
	if r.f.json {
		return writeJSON(r.e.stdout, rr)
	}
	w := r.e.stdout
	fmt.Fprintf(w, "Restored %s to its state before session %s: %s written in %d write(s) through %s, from %d session(s).\n",
		r.name, chain[0].ID, restore.FormatBytes(res.Bytes), res.Writes, through, len(chain))
	switch {
	case rr.Undoable:
		fmt.Fprintf(w, "To undo: dmsnap restore %s --session %s\n", r.name, rr.Undo)
	case r.active == nil:
		fmt.Fprintf(w, "%s is not activated: it was restored directly, and this restore cannot be undone.\n", r.name)
	case r.f.noUndo:
		fmt.Fprintln(w, "--no-undo: written to the raw device behind dmsnap, this restore cannot be undone.")
	default:
		fmt.Fprintln(w, "The session that recorded the restore could not be closed: see dmsnap status.")
	}
	return nil
}

// closeRecording closes the live session of the activated device, the one
// that recorded the restore's writes, and returns its ID once it is a
// complete session ("" when it is not).
func (r *restorer) closeRecording(m *session.Manager) (string, error) {
	cur, err := r.current()
	if err != nil {
		return "", err
	}
	if _, err := m.Rotate(r.e.ctx, r.name, "restore finished: closing the session that recorded it"); err != nil {
		return "", err
	}
	if cur == nil {
		return "", nil
	}
	if info := snapstore.Inspect(cur.Dir); info.Status == snapstore.StatusComplete {
		return info.ID, nil
	}
	return "", nil
}

func (r *restorer) reload() error {
	reg, err := session.LoadRegistry(r.e.state)
	if err != nil {
		return err
	}
	d := reg.Device(r.name)
	if d == nil {
		return fmt.Errorf("%s left the registry during the restore: %w", r.name, session.ErrNotActivated)
	}
	r.active = d
	return nil
}

func (r *restorer) current() (*session.Session, error) {
	if err := r.reload(); err != nil {
		return nil, err
	}
	return r.active.Current(), nil
}

func indexOf(sessions []snapstore.SessionInfo, id string) int {
	for i, s := range sessions {
		if s.ID == id {
			return i
		}
	}
	return -1
}

func printWarnings(w io.Writer, warns []string) {
	for _, s := range warns {
		fmt.Fprintln(w, "warning:", s)
	}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// deviceProbe is restore.Device over a block device (or an image file):
// writePath is checked for use, idPath probed for identity. It gives
// Preflight the size only and keeps the filesystem UUID for a warning.
type deviceProbe struct {
	path   string
	idPath string
	size   uint64
	uuid   string
	// busyWarns: a dry run reports a busy device as a warning, since it
	// writes nothing.
	busyWarns bool
	warns     []string
}

func (r *restorer) probe(writePath, idPath string) *deviceProbe {
	return &deviceProbe{path: writePath, idPath: idPath}
}

func (d *deviceProbe) Path() string { return d.path }

// Busy implements restore.Device: mounted (per the mount table), or held
// exclusively, or opened by anyone when it is a device-mapper device.
func (d *deviceProbe) Busy() (string, error) {
	reason, err := d.busy()
	if err == nil && reason != "" && d.busyWarns {
		d.warns = append(d.warns, (&restore.BusyError{Device: d.path, Reason: reason}).Error())
		return "", nil
	}
	return reason, err
}

func (d *deviceProbe) busy() (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(d.path, &st); err != nil {
		return "", err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", nil
	}
	num := session.DevNumFromRdev(st.Rdev)
	if f, err := os.Open(session.SelfMountInfo); err == nil {
		table, perr := session.ParseMountInfo(f)
		f.Close()
		if perr == nil {
			for _, m := range session.ResolveSourceDevs(table, session.BlockDevNum) {
				if m.Dev == num {
					return "mounted on " + m.MountPoint, nil
				}
			}
		}
	}
	if name, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/dm/name", num.Major, num.Minor)); err == nil {
		if info, err := dm.Info(strings.TrimSpace(string(name))); err == nil && info.OpenCount > 0 {
			return fmt.Sprintf("open %d time(s)", info.OpenCount), nil
		}
	}
	f, err := os.OpenFile(d.path, os.O_RDWR|unix.O_EXCL, 0)
	if errors.Is(err, unix.EBUSY) {
		return "held open exclusively by another process or device", nil
	}
	if err != nil {
		return "", err
	}
	f.Close()
	return "", nil
}

// Identity implements restore.Device.
func (d *deviceProbe) Identity() (restore.Identity, error) {
	f, err := os.Open(d.idPath)
	if err != nil {
		return restore.Identity{}, err
	}
	defer f.Close()
	size, err := deviceSize(f)
	if err != nil {
		return restore.Identity{}, err
	}
	_, uuid, err := session.ProbeFilesystem(f)
	if err != nil {
		return restore.Identity{}, err
	}
	d.size, d.uuid = uint64(size), uuid
	return restore.Identity{Size: uint64(size)}, nil
}

// deviceSize is the size of a block device or a file.
func deviceSize(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if fi.Mode()&os.ModeDevice == 0 {
		return fi.Size(), nil
	}
	n, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		return 0, fmt.Errorf("BLKGETSIZE64: %w", err)
	}
	return int64(n), nil
}

// openExclusive opens the device for writing with O_EXCL, so nobody can
// mount it while the restore runs. A busy device is *restore.BusyError.
func openExclusive(path string) (*os.File, error) {
	flags := os.O_RDWR
	if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeDevice != 0 {
		flags |= unix.O_EXCL
	}
	f, err := os.OpenFile(path, flags, 0)
	if errors.Is(err, unix.EBUSY) {
		return nil, &restore.BusyError{Device: path, Reason: "opened exclusively by someone else (a mount?)"}
	}
	return f, err
}
