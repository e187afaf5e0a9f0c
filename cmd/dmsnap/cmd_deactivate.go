package main

import (
	"fmt"
)

func init() {
	register(command{name: "deactivate", summary: "close a device's sessions and take it out of dmsnap", run: runDeactivate})
}

const deactivateHelp = `usage: dmsnap deactivate NAME|DEVICE [--password-stdin|--password-file FILE]

Closes and converts the device's sessions, tears its dmsnap stack down and
forgets it. The device keeps its content and its sessions stay in the store.
The device must not be mounted.

Exit codes: 0 ok, 1 failure, 2 usage, 3 wrong password, 4 device mounted or busy.
`

func runDeactivate(e *env, args []string) error {
	fs := newFlags(e, "deactivate")
	var pw passwordFlags
	pw.add(fs)
	fs.Usage = func() { fmt.Fprint(e.stderr, deactivateHelp, "\nflags:\n", flagUsages(fs)) }
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("deactivate takes one NAME or DEVICE (see dmsnap deactivate --help)")
	}
	if err := pw.check(); err != nil {
		return err
	}
	if err := requireSecret(e, &pw); err != nil {
		return err
	}
	if err := newManager(e).Deactivate(e.ctx, fs.Arg(0)); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "deactivated %s; its sessions stay in the store\n", fs.Arg(0))
	return nil
}
