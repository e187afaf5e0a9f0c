package main

import (
	"fmt"

	"github.com/dmsnap/dmsnap/session"
)

func init() {
	register(command{name: "version", summary: "print the version", noState: true, run: runVersion})
}

func runVersion(e *env, args []string) error {
	fs := newFlags(e, "version")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("version takes no arguments")
	}
	build := ""
	if session.CrashpointsBuilt {
		// Says which binary the VM tests got: only this one can crash on purpose.
		build = " (test build: crash points)"
	}
	_, err := fmt.Fprintf(e.stdout, "dmsnap %s%s\n", version, build)
	return err
}
