package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/dmsnap/dmsnap/session"
)

func init() { register(versionCmd) }

func versionCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:         "version",
		Short:       "print the version",
		Args:        argsBetween(0, 0, "version takes no arguments"),
		Annotations: map[string]string{annoNoState: "yes"},
		RunE: func(c *cobra.Command, args []string) error {
			v := struct {
				Version     string `json:"version"`
				CrashPoints bool   `json:"crash_points"`
			}{version, session.CrashpointsBuilt}
			return e.emit(v, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "dmsnap %s\n", versionString())
				return err
			})
		},
	}
}

// versionString is the version, and which build it is: only the test
// build (crash points) can crash on purpose, and says so, so that the VM
// tests show which binary they got.
func versionString() string {
	if session.CrashpointsBuilt {
		return version + " (test build: crash points)"
	}
	return version
}
