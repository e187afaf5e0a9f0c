package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

func init() { register(deactivateCmd) }

func deactivateCmd(e *env) *cobra.Command {
	var pw passwordFlags
	c := &cobra.Command{
		Use:         "deactivate NAME|DEVICE|FILE",
		Annotations: map[string]string{annoReadsState: "yes"},
		Short:       "close a device's sessions and take it out of dmsnap",
		Long: `Closes and converts the device's sessions, tears its dmsnap stack down and
forgets it. The device keeps its content and its sessions stay in the store.
The device must not be mounted. An image file's loop device that dmsnap
bound goes with the stack; one someone else bound is left alone.

Exit codes: 0 ok, 1 failure, 2 usage, 3 wrong password, 4 device mounted or busy.`,
		Args:              argsBetween(1, 1, "deactivate takes one NAME, DEVICE or FILE"),
		ValidArgsFunction: completeDevices(e),
		RunE: func(c *cobra.Command, args []string) error {
			if err := pw.check(); err != nil {
				return err
			}
			if err := requireSecret(e, &pw); err != nil {
				return err
			}
			if err := newManager(e).Deactivate(e.ctx, args[0]); err != nil {
				return err
			}
			return e.emit(map[string]string{"deactivated": args[0]}, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "deactivated %s; its sessions stay in the store\n", args[0])
				return err
			})
		},
	}
	pw.add(c.Flags())
	return c
}
