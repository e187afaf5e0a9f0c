package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dmsnap/dmsnap/internal/units"
	"github.com/dmsnap/dmsnap/rollback"
	"github.com/dmsnap/dmsnap/session"
)

func sessionsDiffCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "diff ID [ID2]",
		Short: "list the files session ID changed (or sessions ID up to ID2)",
		Long: `Lists the files and directories session ID changed: added (A), deleted (D)
and modified (M: content, type, mode, owner or link target), with their
sizes, by comparing read-only the view before ID with the view after it
(before the next session; for the newest closed session, the armed
session's view: the device as that session left it). With ID2, what ID and
every session up to ID2 (not included) changed.

Both views are mounted read-only at once, opened for the comparison and
closed after unless they were open; the device must be unmounted with its
last session closed (as sessions open needs). ext4, ext2 and xfs are
compared; btrfs is refused by the kernel (two mounts of one filesystem
UUID), and the error says so: sessions mount one view at a time instead.`,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) < 1 || len(args) > 2 {
				return usagef("sessions diff takes a session ID and at most one more")
			}
			for _, a := range args {
				if err := session.ValidateSessionID(a); err != nil {
					return usagef("%q: %v", a, err)
				}
			}
			if len(args) == 2 && sessionName(args[0]) != sessionName(args[1]) {
				return usagef("%s and %s are sessions of two devices", args[0], args[1])
			}
			return nil
		},
		ValidArgsFunction: completeSessions(e, true),
		RunE: func(c *cobra.Command, args []string) error {
			to := ""
			if len(args) == 2 {
				to = args[1]
			}
			res, err := rollback.Diff(e.ctx, rollbackConfig(e), args[0], to)
			if err != nil {
				return err
			}
			return e.emit(res, func(w io.Writer) error {
				sign := map[string]string{"added": "A", "deleted": "D", "modified": "M"}
				for _, d := range res.Entries {
					size := units.FormatBytes(uint64(max(d.After, 0)))
					switch d.Change {
					case "deleted":
						size = units.FormatBytes(uint64(max(d.Before, 0)))
					case "modified":
						size = fmt.Sprintf("%s → %s, %s", units.FormatBytes(uint64(max(d.Before, 0))), units.FormatBytes(uint64(max(d.After, 0))), strings.Join(d.What, ", "))
					}
					suffix := ""
					if d.Type == "dir" {
						suffix = "/"
					}
					fmt.Fprintf(w, "%s %s%s (%s)\n", sign[d.Change], d.Path, suffix, size)
				}
				to := "before " + res.To
				if res.ToArmed {
					to = "now (the armed session " + res.To + " holds nothing yet)"
				}
				_, err := fmt.Fprintf(w, "%d change(s) from the state before %s to %s\n", len(res.Entries), res.From, to)
				return err
			})
		},
	}
}
