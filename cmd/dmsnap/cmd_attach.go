package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dmsnap/dmsnap/internal/devnum"
	"github.com/dmsnap/dmsnap/rollback"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/session/system"
)

func init() { register(attachCmd) }

func attachCmd(e *env) *cobra.Command {
	var (
		force bool
		name  string
		pw    passwordFlags
	)
	c := &cobra.Command{
		Use:   "attach DEVICE|FILE",
		Short: "re-attach an activated device that (re)appeared (run by udev)",
		Long: `Rebuilds the dmsnap stack of an activated device that appeared at DEVICE (at
boot or on hot-plug; the udev rule runs this) and re-attaches its armed
session, whose pre-images are kept. Does nothing when the stack is up.
An instant restore (restore --merge) that a reboot interrupted is resumed
at once, so the device never shows a half-merged state for long.

DEVICE must be the device that was activated: the same disk WWN or serial,
partition UUID and place on its disk, or loop backing file (device and
inode), with the same size and filesystem UUID. Anything else is refused
before a byte is written anywhere, and the message names both devices.
--force-identity attaches DEVICE anyway (as --name NAME when it matches no
activated device at all) and records its identity from then on: only for a
device you know to be the same one. It asks for the control password.

FILE, an activated image file, is put on a new loop device first (the file
must be the one activated: the same device and inode, size and filesystem
UUID; a file put in its place is refused). No udev event announces a file:
dmsnap watch, started at boot, brings back every activated image file.

DEVICE may also be the device's directory in sysfs (/sys/devices/...): the
systemd unit dmsnap-attach@.service, started by the udev rule, passes that.

Exit codes: 0 ok, 1 failure (another device), 2 usage, 3 wrong password, 4 device busy.`,
		Args:              argsBetween(1, 1, "attach takes one DEVICE"),
		ValidArgsFunction: completeBlockDevices,
		RunE: func(c *cobra.Command, args []string) error {
			return runAttach(e, args[0], name, force, &pw)
		},
	}
	fs := c.Flags()
	fs.BoolVar(&force, "force-identity", false, "attach DEVICE even though its identity differs from the activated device's, and record it")
	fs.StringVar(&name, "name", "", "with --force-identity: the dmsnap `NAME` to attach DEVICE as")
	pw.add(fs)
	return c
}

func runAttach(e *env, device, name string, force bool, pw *passwordFlags) error {
	if name != "" && !force {
		return usagef("--name goes with --force-identity: without it, attach finds the device's name itself")
	}
	if err := pw.check(); err != nil {
		return err
	}
	if force {
		if err := requireSecret(e, pw); err != nil {
			return err
		}
	}
	device, err := sysfsDevice(device)
	if err != nil {
		return err
	}
	// A device's store may be a managed one whose device appears after
	// this one (or is being brought up by its own udev event).
	managedStores(e).EnsureUsed(e.ctx, storeWait)
	m := newManager(e)
	log := slog.New(slog.NewTextHandler(e.stderr, nil))
	rc := rollbackConfig(e)
	rc.Progress, rc.Manager = nil, func() *session.Manager { return m }
	rv := rollback.Reverter{Cfg: rc, Log: log}
	// A device that reverts on unmount and was mounted when the system
	// went down (or unmounted before its revert started) is held from the
	// moment its stack is up, and reverted before anything can mount it.
	rep, err := m.Attach(e.ctx, device, session.AttachOptions{Name: name, ForceIdentity: force,
		Hold: func(name string) (*os.File, error) { return rv.Hold(name, false) }})
	if err != nil {
		return err
	}
	// The rebuilt stack has a snapshot-origin: a merge that ran before the
	// reboot must go on now, before the half-merged device is mounted
	// (the watcher would resume it too, but maybe only after a mount).
	session.FinishMergesLogged(e.ctx, m, system.Merges{}, log)
	if rep.Hold != nil {
		if err := rv.RevertWaiting(e.ctx, rep.HoldName, rep.Hold); err != nil {
			return fmt.Errorf("attached %s, but its revert on unmount failed (the device keeps what its last session wrote; the watcher retries): %w", rep.HoldName, err)
		}
	}
	res := struct {
		Done   []string `json:"done"`
		Issues []string `json:"issues"`
	}{[]string{}, []string{}}
	for _, a := range rep.Done {
		res.Done = append(res.Done, a.String())
	}
	for _, is := range rep.Issues {
		res.Issues = append(res.Issues, is.String())
		fmt.Fprintf(e.stderr, "needs attention: %s\n", is)
	}
	return e.emit(res, func(w io.Writer) error {
		for _, a := range res.Done {
			fmt.Fprintln(w, a)
		}
		return nil
	})
}

// sysfsDevice turns a device's sysfs directory (what systemd names a
// device unit's instance after) into its node: /dev/ and the name its
// uevent file gives (devnum.DevName). Any other path is returned as it is.
func sysfsDevice(path string) (string, error) {
	if !strings.HasPrefix(path, "/sys/") {
		return path, nil
	}
	name, err := devnum.DevName(path)
	if err != nil {
		return "", fmt.Errorf("%s: not a block device in sysfs: %w", path, err)
	}
	return filepath.Join("/dev", name), nil
}
