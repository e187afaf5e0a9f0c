package main

import (
	"fmt"
	"log/slog"
)

func init() {
	register(command{name: "attach", summary: "re-attach an activated device that (re)appeared (run by udev)", run: runAttach})
}

const attachHelp = `usage: dmsnap attach DEVICE

Rebuilds the dmsnap stack of an activated device that appeared at DEVICE (at
boot or on hot-plug; the udev rule runs this) and re-attaches its armed
session, whose pre-images are kept. Does nothing when the stack is up.
An instant restore (restore --merge) that a reboot interrupted is resumed
at once, so the device never shows a half-merged state for long.

Exit codes: 0 ok, 1 failure, 2 usage, 4 device busy.
`

func runAttach(e *env, args []string) error {
	fs := newFlags(e, "attach")
	fs.Usage = func() { fmt.Fprint(e.stderr, attachHelp) }
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("attach takes one DEVICE (see dmsnap attach --help)")
	}
	m := newManager(e)
	rep, err := m.Attach(e.ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	// The rebuilt stack has a snapshot-origin: a merge that ran before the
	// reboot must go on now, before the half-merged device is mounted
	// (the watcher would resume it too, but maybe only after a mount).
	finishMerges(e.ctx, m, slog.New(slog.NewTextHandler(e.stderr, nil)))
	for _, a := range rep.Done {
		fmt.Fprintf(e.stdout, "%s\n", a)
	}
	for _, is := range rep.Issues {
		fmt.Fprintf(e.stderr, "needs attention: %s\n", is)
	}
	return nil
}
