package main

import (
	"fmt"
)

func init() {
	register(command{name: "attach", summary: "re-attach an activated device that (re)appeared (run by udev)", run: runAttach})
}

const attachHelp = `usage: dmsnap attach DEVICE

Rebuilds the dmsnap stack of an activated device that appeared at DEVICE (at
boot or on hot-plug; the udev rule runs this) and re-attaches its armed
session, whose pre-images are kept. Does nothing when the stack is up.

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
	rep, err := newManager(e).Attach(e.ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	for _, a := range rep.Done {
		fmt.Fprintf(e.stdout, "%s\n", a)
	}
	for _, is := range rep.Issues {
		fmt.Fprintf(e.stderr, "needs attention: %s\n", is)
	}
	return nil
}
