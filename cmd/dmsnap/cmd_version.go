package main

import "fmt"

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
	_, err := fmt.Fprintln(e.stdout, "dmsnap", version)
	return err
}
