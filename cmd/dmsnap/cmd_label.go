package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

func init() { register(labelNextCmd) }

// labelled is what sessions label, label-next and activate --label report.
type labelled struct {
	ID     string `json:"id"`
	Dir    string `json:"dir"`
	Label  string `json:"label"`
	Pinned bool   `json:"pinned"`
}

func (l labelled) text(w io.Writer) error {
	pin := ""
	if l.Pinned {
		pin = ", pinned: prune never removes it nor any later session"
	}
	label := "no label"
	if l.Label != "" {
		label = fmt.Sprintf("label %q", l.Label)
	}
	_, err := fmt.Fprintf(w, "%s: %s%s\n", l.ID, label, pin)
	return err
}

type labelFlags struct {
	pin, unpin, clear bool
	name              string
	pw                passwordFlags // asked for by --unpin and --clear
}

// requireSecret asks for the control password when the mark removes
// protection (an unpin or a label cleared: retention and prune may then
// remove the session).
func (f labelFlags) requireSecret(e *env) error {
	if err := f.pw.check(); err != nil {
		return err
	}
	if !f.removesProtection() {
		return nil
	}
	return requireSecret(e, &f.pw)
}

func sessionsLabelCmd(e *env) *cobra.Command {
	var f labelFlags
	c := &cobra.Command{
		Use:   "label ID|latest [TEXT]",
		Short: "set or clear a session's label; pin or unpin it",
		Long: `Sets the label of session ID (a note: "before the upgrade") to TEXT, or
clears it with --clear; --pin keeps the session, and every session after it,
which a restore to it needs, from being pruned; --unpin lets it go again.
The label and the pin are shown by sessions list and show, and kept in the
session's meta.json (its dmsnap object; FORMAT.md), or in its state.json
while it is live and carried over when it closes. A session written by the
seed takes neither: its meta.json stays the seed's.

--unpin and --clear ask for the control password when one is set (dmsnap
passwd): they let retention and prune remove the session.

TEXT: up to 200 bytes of UTF-8, no control characters.`,
		Args:              argsBetween(1, 2, "sessions label takes a session ID and at most one TEXT"),
		ValidArgsFunction: completeSessions(e, true),
		RunE: func(c *cobra.Command, args []string) error {
			return runSessionsLabel(e, f, args)
		},
	}
	fs := c.Flags()
	fs.BoolVar(&f.pin, "pin", false, "keep the session (and every later one) from being pruned")
	fs.BoolVar(&f.unpin, "unpin", false, "let prune remove the session again")
	fs.BoolVar(&f.clear, "clear", false, "remove the label")
	fs.StringVar(&f.name, "name", "", "with latest: the device `NAME`")
	f.pw.add(fs)
	c.RegisterFlagCompletionFunc("name", completeDevices(e))
	return c
}

// mark turns the flags and an optional TEXT into a snapstore.Mark.
func (f labelFlags) mark(text []string) (snapstore.Mark, error) {
	var m snapstore.Mark
	switch {
	case f.pin && f.unpin:
		return m, usagef("--pin and --unpin do not go together")
	case f.clear && len(text) > 0:
		return m, usagef("--clear removes the label: give no TEXT with it")
	case !f.clear && len(text) == 0 && !f.pin && !f.unpin:
		return m, usagef("give a TEXT, --clear, --pin or --unpin")
	}
	if len(text) > 0 {
		if err := snapstore.ValidateLabel(text[0]); err != nil {
			return m, usagef("%v", err)
		}
		m.Label = &text[0]
	}
	if f.clear {
		m.Label = new(string)
	}
	if f.pin || f.unpin {
		m.Pinned = &f.pin
	}
	return m, nil
}

// removesProtection reports whether a mark lets sessions go: an unpin, or
// a label removed (retention keeps labelled sessions).
func (f labelFlags) removesProtection() bool { return f.unpin || f.clear }

func runSessionsLabel(e *env, f labelFlags, args []string) error {
	m, err := f.mark(args[1:])
	if err != nil {
		return err
	}
	if err := f.requireSecret(e); err != nil {
		return err
	}
	id := args[0]
	var dir string
	switch {
	case id == "latest":
		dir, err = e.latestSession(e.deviceNameOr(f.name))
	case f.name != "":
		return usagef("--name goes with latest only: a session ID names its device")
	default:
		dir, err = e.findSession(id)
	}
	if err != nil {
		return err
	}
	res, err := markSession(e, dir, m)
	if err != nil {
		return fmt.Errorf("label %s: %w", filepath.Base(dir), err)
	}
	return e.emit(res, res.text)
}

func labelNextCmd(e *env) *cobra.Command {
	var f labelFlags
	c := &cobra.Command{
		Use:   "label-next TEXT [NAME|DEVICE|FILE]",
		Short: "label the armed session: the next mount's (\"before the upgrade\")",
		Long: `Labels the live session of the device (the armed one, which the next mount
opens, or the open one while mounted) with TEXT, so that the state before
what comes next is easy to find again: dmsnap label-next "before the
upgrade" && apt upgrade. NAME may be left out when one device is activated.
--pin keeps the session from being pruned too; --clear removes the label.
The label goes into the session's meta.json when it closes. --unpin and
--clear ask for the control password when one is set. While the device is
mounted the live session is the open one, which began at the mount: the
label then marks the state before that mount, and label-next says so.`,
		Args:              argsBetween(0, 2, "label-next takes a TEXT and at most one device"),
		ValidArgsFunction: completeDevices(e),
		RunE: func(c *cobra.Command, args []string) error {
			var text, dev []string
			switch {
			case f.clear && len(args) == 2:
				return usagef("--clear removes the label: give no TEXT with it")
			case f.clear || (len(args) == 0 && (f.pin || f.unpin)):
				dev = args
			case len(args) == 0:
				return usagef("give a TEXT (or --clear)")
			default:
				text, dev = args[:1], args[1:]
			}
			m, err := f.mark(text)
			if err != nil {
				return err
			}
			if err := f.requireSecret(e); err != nil {
				return err
			}
			name := ""
			if len(dev) == 1 {
				name = e.deviceName(dev[0])
			}
			res, err := markLive(e, name, m)
			if err != nil {
				return err
			}
			return e.emit(res, res.text)
		},
	}
	fs := c.Flags()
	fs.BoolVar(&f.pin, "pin", false, "keep the session (and every later one) from being pruned")
	fs.BoolVar(&f.unpin, "unpin", false, "let prune remove the session again")
	fs.BoolVar(&f.clear, "clear", false, "remove the label")
	f.pw.add(fs)
	return c
}

// markSession sets the label and pin of the session in dir: a finished one
// in its meta.json, read and written here as every command reads finished
// sessions (snapstore), under the lock; an unfinished one through the
// session store, which owns its state.
func markSession(e *env, dir string, m snapstore.Mark) (labelled, error) {
	res := labelled{ID: filepath.Base(dir), Dir: dir}
	mgr := newManager(e)
	if snapstore.Inspect(dir).Status == snapstore.StatusIncomplete {
		got, err := mgr.MarkSession(e.ctx, dir, session.Mark{Label: m.Label, Pinned: m.Pinned})
		res.Label, res.Pinned = got.Label, got.Pinned
		return res, err
	}
	lock, err := mgr.Lock(e.ctx)
	if err != nil {
		return res, err
	}
	defer lock.Release()
	res.Label, res.Pinned, err = snapstore.SetMark(dir, m)
	return res, err
}

// markLive sets the label and pin of device name's live session (name "":
// the only activated device).
func markLive(e *env, name string, m snapstore.Mark) (labelled, error) {
	res, err := newManager(e).MarkLive(e.ctx, name, session.Mark{Label: m.Label, Pinned: m.Pinned})
	if errors.Is(err, session.ErrWhichDevice) {
		return labelled{}, usagef("%v", err)
	}
	if err != nil {
		return labelled{}, err
	}
	if !res.Mounted.IsZero() {
		fmt.Fprintf(e.stderr, "warning: the device is mounted: its live session opened at the mount (%s), so the label marks the state before that mount, not now; unmount and mount again first to label the state now\n", localTime(res.Mounted))
	}
	return labelled{ID: filepath.Base(res.Dir), Dir: res.Dir, Label: res.Label, Pinned: res.Pinned}, nil
}
