package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/dmsnap/dmsnap/internal/units"
	"github.com/dmsnap/dmsnap/restore"
	"github.com/dmsnap/dmsnap/rollback"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

func init() { register(restoreCmd) }

const restoreHelp = `Returns the device to its state before session ID: the pre-images of that
session and of every later one are written back, the oldest winning. Every
session of the plan is verified before a byte is written.

An activated device is restored through dmsnap-NAME while a new session
records what the restore overwrites, so the restore can itself be undone
(the output names the session to restore); --no-undo writes dmsnap-NAME-real
directly instead, and asks for the control password first when one is set
(dmsnap passwd), as it leaves no way back. A device that is not activated is
restored directly; so is an image file that is not activated (restore FILE
finds the sessions named after its base name, as the seed's tool did), which
must then be on no loop device.

--merge restores instantly (an activated device only): the plan is written
as a COW store and loaded as a snapshot-merge target in place of the origin,
which shows the restored state at once while the kernel copies the chunks
back in the background (progress in dmsnap status; dmsnap watch puts the
stack back when the kernel is done). The session armed for the restore
records what the merge overwrites, so a merge restore can be undone too:
once that session is closed (dmsnap watch closes it after the merge, or the
next unmount does), restoring it puts the device back. Where the kernel
refuses the merge table, the normal restore runs instead and says so.

--file PATH --to DIR (PATH repeatable) is a file-level restore: it copies
PATH, a file or a directory tree in the device's filesystem, as it was before
session ID into DIR/PATH, with owners, modes, times and extended attributes,
hard and symbolic links as links, and leaves the device alone. It reads a
read-only view of the session (sessions mount), used where it is mounted or
mounted for the copy and put back as it was. Nothing in DIR is overwritten.
The device must be activated; btrfs views mount only while the device is
not mounted (sessions mount explains).

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
	name    string
	session string
	to      string
	force   bool
	dryRun  bool
	noUndo  bool
	merge   bool
	yes     bool
	files   []string      // --file: a file-level restore into --to
	pw      passwordFlags // asked for with --no-undo
}

func restoreCmd(e *env) *cobra.Command {
	var f restoreFlags
	c := &cobra.Command{
		Use:               "restore [NAME|DEVICE|FILE]",
		Short:             "return a device to its state before a session",
		Long:              restoreHelp,
		Args:              argsBetween(0, 1, "restore takes at most one device (NAME or DEVICE)"),
		ValidArgsFunction: completeDevices(e),
		RunE:              func(c *cobra.Command, args []string) error { return runRestore(e, f, args) },
	}
	fs := c.Flags()
	fs.StringVar(&f.name, "name", "", "the device's dmsnap `NAME`, for a device or image that is not activated and whose sessions carry another name than its file")
	fs.StringVar(&f.session, "session", "", "restore to the state before this session (an `ID`, or latest)")
	fs.StringVar(&f.to, "to", "", "write the restored image to `FILE`; the device is only read (with --file: the directory the files go to)")
	fs.StringArrayVar(&f.files, "file", nil, "copy `PATH` (in the device's filesystem) as it was before the session into --to DIR, leaving the device alone; repeatable")
	fs.BoolVar(&f.force, "force", false, "with --to: overwrite FILE when it is not empty, or is a block device")
	fs.BoolVar(&f.dryRun, "dry-run", false, "print the plan and write nothing")
	fs.BoolVar(&f.noUndo, "no-undo", false, "write the raw device directly: faster, but the restore cannot be undone")
	fs.BoolVar(&f.merge, "merge", false, "restore instantly: the kernel merges the plan back in the background (snapshot-merge)")
	fs.BoolVarP(&f.yes, "yes", "y", false, "do not ask for confirmation")
	f.pw.add(fs)
	c.RegisterFlagCompletionFunc("session", completeSessions(e, true))
	c.RegisterFlagCompletionFunc("name", completeDevices(e))
	return c
}

func runRestore(e *env, f restoreFlags, args []string) error {
	if len(f.files) > 0 {
		return runRestoreFiles(e, f, args)
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
	arg := ""
	if len(args) == 1 {
		arg = args[0]
	}
	return restoreDevice(e, f, arg)
}

// isTerminal reports whether r is a terminal one can ask questions on.
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// rollbackConfig is the rollback.Config of the CLI: its state and store,
// its manager (and so its lock wait), progress on stderr (newProgress).
func rollbackConfig(e *env) rollback.Config {
	p := newProgress(e.stderr, e.json)
	return rollback.Config{
		State: e.state, Store: e.store,
		Manager:  func() *session.Manager { return newManager(e) },
		Progress: crashProgress{p, new(bool)},
		Warn:     func(s string) { fmt.Fprintln(e.stderr, "warning:", s) },
	}
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

func restoreDevice(e *env, f restoreFlags, arg string) error {
	tty := isTerminal(e.stdin)
	var in *bufio.Reader
	if tty {
		in = bufio.NewReader(e.stdin)
	}
	r, err := rollback.OpenAs(rollbackConfig(e), arg, f.name, f.session)
	if err != nil {
		return err
	}
	defer r.Close()
	sessions, err := r.Sessions()
	if err != nil {
		return err
	}
	if len(sessions) == 0 {
		if r.Active != nil {
			for _, s := range r.Active.Sessions {
				if s.State == session.SessionClosing {
					return fmt.Errorf("no closed sessions of %s in %s yet: session %d is closing (dmsnap watch converts it); retry in a moment", r.Name, r.Store, s.N)
				}
			}
		}
		return fmt.Errorf("no closed sessions of %s in %s: nothing to restore", r.Name, r.Store)
	}
	var target int
	switch {
	case f.session != "":
		target, err = r.Find(sessions, f.session)
	case !tty:
		err = usagef("--session ID is required when stdin is not a terminal (see dmsnap sessions list %s)", r.Name)
	default:
		target, err = pickSession(in, e.stdout, r.Name, sessions)
	}
	if err != nil {
		return err
	}
	if err := r.CheckTarget(sessions, target); err != nil {
		return err
	}
	switch {
	case f.dryRun:
		res, err := r.DryRun(e.ctx, sessions, target, f.merge)
		if err != nil {
			return err
		}
		return printDryRun(e, f, res)
	case f.to != "":
		res, err := r.ToImage(e.ctx, sessions, target, f.to, f.force)
		if err != nil {
			return err
		}
		return printImage(e, f, res)
	}
	if !tty && !f.yes {
		return usagef("restoring %s overwrites it: pass --yes to confirm when stdin is not a terminal", r.Device)
	}
	if f.noUndo {
		// No session records what --no-undo overwrites: it destroys the
		// way back as deactivate and prune do. Asked before anything is
		// held, confirmed or written.
		if err := requireSecret(e, &f.pw); err != nil {
			return err
		}
	}
	pd, err := r.Prepare(e.ctx, sessions, target, rollback.DeviceOptions{NoUndo: f.noUndo, Merge: f.merge})
	if err != nil {
		return err
	}
	defer pd.Close()
	printWarnings(e.stderr, pd.Warnings)
	if !f.yes {
		chain := pd.Chain()
		q := fmt.Sprintf("Restore %s (%s) to its state before session %s? %s in %d session(s) will be written",
			r.Name, r.Device, chain[0].ID, units.FormatBytes(pd.Summary.Bytes), len(chain))
		if r.Active != nil {
			q += ", plus what its armed session recorded"
		}
		if r.Active == nil || f.noUndo {
			q += "; this cannot be undone"
		}
		if !confirm(in, e.stdout, q) {
			return errors.New("not confirmed: nothing was written")
		}
	}
	res, err := pd.Run(e.ctx)
	if err != nil {
		return err
	}
	return printRestore(e, f, res)
}

// pickSession lists the sessions and asks which one to restore to.
func pickSession(in *bufio.Reader, out io.Writer, name string, sessions []snapstore.SessionInfo) (int, error) {
	fmt.Fprintf(out, "Sessions of %s (restoring to one undoes it and every later one):\n", name)
	fmt.Fprintf(out, "  %3s  %-28s  %-23s  %8s  %10s  %s\n", "#", "SESSION", "TIME", "BLOCKS", "SIZE", "STATUS")
	for i, s := range sessions {
		blocks, size := "-", "-"
		if m := s.Meta; m != nil {
			blocks = strconv.FormatInt(m.TotalBlocksSaved, 10)
			size = units.FormatBytes(uint64(m.TotalBlocksSaved) * uint64(m.BlockSize))
		}
		fmt.Fprintf(out, "  %3d  %-28s  %-23s  %8s  %10s  %s\n", i+1, s.ID, localTime(s.Time), blocks, size, s.Status)
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

func printDryRun(e *env, f restoreFlags, res *rollback.Result) error {
	if e.json {
		return e.emit(res, nil)
	}
	w := e.stdout
	printWarnings(e.stderr, res.Warnings)
	fmt.Fprintf(w, "Dry run: restoring %s (%s) to its state before session %s would write:\n", res.Name, res.Device, res.Session)
	if err := res.Summary.WriteText(w); err != nil {
		return err
	}
	if res.ArmedCloses {
		fmt.Fprintf(w, "%s is activated: the restore first closes its armed session, whose pre-images then join the plan.\n", res.Name)
	}
	if f.merge {
		fmt.Fprintln(w, "--merge: the plan would be loaded as a snapshot-merge in place of the origin (instant), or written as usual where the kernel refuses it.")
	}
	fmt.Fprintln(w, "Nothing was written.")
	return nil
}

func printImage(e *env, f restoreFlags, res *rollback.Result) error {
	if e.json {
		return e.emit(res, nil)
	}
	printWarnings(e.stderr, res.Warnings)
	say(e.stdout, "Wrote %s: %s as it was before session %s (%s of the device copied, %s from %d session(s)); %s was only read.",
		res.To, res.Name, res.Session, units.FormatBytes(res.Image.Bytes), units.FormatBytes(res.Written), len(res.Sessions), res.Source)
	return nil
}

func printRestore(e *env, f restoreFlags, res *rollback.Result) error {
	if e.json {
		return e.emit(res, nil)
	}
	w := e.stdout
	if mg := res.Merge; mg != nil && mg.Started {
		say(w, "Restored %s to its state before session %s instantly: %s shows it now, and the kernel copies %s from %d session(s) back in the background (dmsnap status shows how far; dmsnap watch puts the stack back when it is done).",
			res.Name, res.Session, strings.TrimPrefix(res.Through, "snapshot-merge on "), units.FormatBytes(res.Summary.Bytes), len(res.Sessions))
		say(w, "This restore can be undone: session %d (armed at %s) records what the merge overwrites. Once it has closed (dmsnap watch closes it when the merge is done, unless the device is mounted; then the unmount does), restore it: it is the first session of %s after this restore in dmsnap sessions list %s; dmsnap watch also logs the command.",
			mg.Recording, localTime(mg.RecordingArmed), res.Name, res.Name)
		return nil
	}
	say(w, "Restored %s to its state before session %s: %s written in %d write(s) through %s, from %d session(s).",
		res.Name, res.Session, units.FormatBytes(res.Written), res.Writes, res.Through, len(res.Sessions))
	switch {
	case res.Undoable:
		fmt.Fprintf(w, "To undo: dmsnap restore %s --session %s\n", res.Name, res.Undo)
	case !res.Active:
		say(w, "%s is not activated: it was restored directly, and this restore cannot be undone.", res.Name)
	case res.NoUndo:
		fmt.Fprintln(w, "--no-undo: written to the raw device behind dmsnap, this restore cannot be undone.")
	default:
		fmt.Fprintln(w, "The session that recorded the restore could not be closed: see dmsnap status.")
	}
	return nil
}

func printWarnings(w io.Writer, warns []string) {
	for _, s := range warns {
		fmt.Fprintln(w, "warning:", s)
	}
}

// runRestoreFiles is restore --file: a file-level restore out of the view
// of the session.
func runRestoreFiles(e *env, f restoreFlags, args []string) error {
	switch {
	case f.to == "":
		return usagef("--file needs --to DIR: the files are copied there, the device is left alone")
	case f.session == "" || f.session == "latest":
		return usagef("--file needs --session ID: the files are copied as they were before that session")
	case f.merge || f.noUndo || f.dryRun || f.force || f.name != "":
		return usagef("--file goes with --session and --to only")
	case len(args) == 1 && e.deviceName(args[0]) != sessionName(f.session):
		return usagef("session %s is not of %s", f.session, args[0])
	}
	res, err := rollback.RestoreFiles(e.ctx, rollbackConfig(e), f.session, f.files, f.to)
	if err != nil {
		return err
	}
	return e.emit(res, func(w io.Writer) error {
		for _, c := range res.Copied {
			fmt.Fprintf(w, "%s → %s\n", c.Path, c.To)
		}
		for _, s := range res.Skipped {
			fmt.Fprintf(w, "skipped %s (a socket cannot be copied)\n", s)
		}
		for _, l := range res.Lost {
			fmt.Fprintf(e.stderr, "warning: extended attribute %s not kept: %s's filesystem does not support it\n", l, f.to)
		}
		_, err := fmt.Fprintf(w, "restored %d file(s) (%s), %d directories, %d symbolic link(s) as they were before %s; %s was not touched\n",
			res.Files, units.FormatBytes(uint64(res.Bytes)), res.Dirs, res.Links, res.Session, res.Name)
		return err
	})
}

// sessionName is the device name in a session ID.
func sessionName(id string) string {
	n, _ := snapstore.SessionName(id)
	return n
}
