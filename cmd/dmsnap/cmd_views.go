package main

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/dmsnap/dmsnap/internal/units"
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
		s += ", COW " + units.FormatBytes(v.CowUsedBytes)
		if v.Mount != "" {
			s += ", mounted on " + v.Mount
		}
	}
	return s
}

// sessionIDArgs checks that the command got n arguments (an ID, and a
// directory when n is 2) and that the first is a session ID.
func sessionIDArgs(n int) cobra.PositionalArgs {
	msg := "takes one session ID"
	if n == 2 {
		msg = "takes a session ID and a directory"
	}
	return func(c *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s %s (see %s --help)", c.CommandPath(), msg, c.CommandPath())
		}
		if err := session.ValidateSessionID(args[0]); err != nil {
			return usagef("%q: %v", args[0], err)
		}
		return nil
	}
}

func sessionsOpenCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "open ID",
		Short: "open a read-only view of a device as it was before session ID",
		Long: `Opens a read-only view of the activated device as it was before session ID:
/dev/mapper/dmsnap-NAME-atSECS, a snapshot over dmsnap-NAME-real (the device
may be mounted and written while the view is open).`,
		Args:              sessionIDArgs(1),
		ValidArgsFunction: completeSessions(e, false),
		RunE: func(c *cobra.Command, args []string) error {
			v, err := rollback.OpenView(e.ctx, rollbackConfig(e), args[0])
			if err != nil {
				return err
			}
			return e.emit(viewResult(v, ""), func(w io.Writer) error {
				_, err := fmt.Fprintln(w, rollback.ViewPath(v))
				return err
			})
		},
	}
}

func sessionsMountCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "mount ID DIR",
		Short: "open the view before session ID if needed and mount it read-only on DIR",
		Long: `Opens the view of the device as it was before session ID if needed, and
mounts it read-only on DIR (ext4 ro,noload; xfs ro,norecovery,nouuid;
btrfs ro).`,
		Args:              sessionIDArgs(2),
		ValidArgsFunction: completeSessions(e, false),
		RunE:              func(c *cobra.Command, args []string) error { return runSessionsMount(e, args[0], args[1]) },
	}
}

func runSessionsMount(e *env, id, dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	v, fstype, err := rollback.MountView(e.ctx, rollbackConfig(e), id, dir)
	if err != nil {
		return err
	}
	return e.emit(viewResult(v, dir), func(w io.Writer) error {
		fmt.Fprintf(w, "%s (before session %s) mounted read-only on %s\n", rollback.ViewPath(v), v.ID, dir)
		if fstype == "btrfs" {
			fmt.Fprintf(w, "note: while this btrfs view is mounted, %s cannot be mounted (same fsid: the kernel refuses it); unmount the view first (dmsnap sessions close %s)\n",
				system.OriginPath(v.Name), v.ID)
		}
		return nil
	})
}

func sessionsCloseCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:               "close ID",
		Short:             "unmount the view before session ID, remove its device and delete its COW",
		Args:              sessionIDArgs(1),
		ValidArgsFunction: completeSessions(e, false),
		RunE: func(c *cobra.Command, args []string) error {
			v, err := rollback.CloseView(e.ctx, rollbackConfig(e), args[0])
			if err != nil {
				return err
			}
			return e.emit(viewResult(v, ""), func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "closed the view of %s (%s)\n", v.ID, rollback.ViewPath(v))
				return err
			})
		},
	}
}

// view is the result of sessions open, mount and close.
type view struct {
	Session string `json:"session"`
	Name    string `json:"name"`
	Device  string `json:"device"`            // the view's device
	Mount   string `json:"mounted,omitempty"` // where sessions mount mounted it
}

func viewResult(v session.View, mount string) view {
	return view{Session: v.ID, Name: v.Name, Device: rollback.ViewPath(v), Mount: mount}
}
