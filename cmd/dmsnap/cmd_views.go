package main

import (
	"fmt"
	"path/filepath"

	"github.com/dmsnap/dmsnap/restore"
	"github.com/dmsnap/dmsnap/rollback"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/session/system"
)

// Views: read-only devices showing a device as it was before a session
// (README, "Using it"; package rollback opens, mounts and closes them).

// viewText is a view's line in status.
func viewText(v rollback.ViewInfo) string {
	s := fmt.Sprintf("%s, before session %s", rollback.ViewPath(v.View), v.ID)
	switch v.State {
	case "opening":
		s += ", OPENING (interrupted? dmsnap sessions close " + v.ID + " cleans it up)"
	case "gone":
		s += ", GONE (a reboot removes views: dmsnap sessions open " + v.ID + " makes it again, sessions close removes its record and COW)"
	case "invalid":
		s += ", INVALID (the kernel dropped it: its COW in the state directory could not take a copy; close it)"
	default:
		s += ", COW " + restore.FormatBytes(v.CowUsedBytes)
		if v.Mount != "" {
			s += ", mounted on " + v.Mount
		}
	}
	return s
}

func sessionIDArg(e *env, sub string, args []string, n int) ([]string, error) {
	fs := newFlags(e, "sessions "+sub)
	fs.Usage = func() { fmt.Fprint(e.stderr, sessionsHelp) }
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if fs.NArg() != n {
		if n == 1 {
			return nil, usagef("sessions %s takes one session ID", sub)
		}
		return nil, usagef("sessions %s takes a session ID and a directory", sub)
	}
	if err := session.ValidateSessionID(fs.Arg(0)); err != nil {
		return nil, usagef("%q: %v", fs.Arg(0), err)
	}
	return fs.Args(), nil
}

func runSessionsOpen(e *env, args []string) error {
	a, err := sessionIDArg(e, "open", args, 1)
	if err != nil {
		return err
	}
	v, err := rollback.OpenView(e.ctx, rollbackConfig(e, true), a[0])
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, rollback.ViewPath(v))
	return nil
}

func runSessionsMount(e *env, args []string) error {
	a, err := sessionIDArg(e, "mount", args, 2)
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(a[1])
	if err != nil {
		return err
	}
	v, fstype, err := rollback.MountView(e.ctx, rollbackConfig(e, true), a[0], dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s (before session %s) mounted read-only on %s\n", rollback.ViewPath(v), v.ID, dir)
	if fstype == "btrfs" {
		fmt.Fprintf(e.stdout, "note: while this btrfs view is mounted, %s cannot be mounted (same fsid: the kernel refuses it); unmount the view first (dmsnap sessions close %s)\n",
			system.OriginPath(v.Name), v.ID)
	}
	return nil
}

func runSessionsClose(e *env, args []string) error {
	a, err := sessionIDArg(e, "close", args, 1)
	if err != nil {
		return err
	}
	v, err := rollback.CloseView(e.ctx, rollbackConfig(e, true), a[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "closed the view of %s (%s)\n", v.ID, rollback.ViewPath(v))
	return nil
}
