package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/dmsnap/dmsnap/internal/units"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

func init() { register(activateCmd) }

type activateFlags struct {
	name, chunk, prealloc string
	label                 string
	onUnmount             string
	keep                  retentionFlags
	pw                    passwordFlags
}

func activateCmd(e *env) *cobra.Command {
	var f activateFlags
	c := &cobra.Command{
		Use:   "activate DEVICE|FILE",
		Short: "put a block device or an image file under dmsnap and arm its first session",
		Long: `Builds the dmsnap stack over DEVICE (which must not be mounted) and arms its
first session. Mount /dev/mapper/dmsnap-NAME from then on: every mount to
unmount of it is one session in the store.

FILE, an image file, is put on a loop device that dmsnap binds (direct I/O
where the file's filesystem allows it) and that goes with the stack; its
sessions are named after its base name (image.img_<unix seconds>), and
status, deactivate, restore and sessions take its path. A loop device
someone else bound to the file (mount -o loop, losetup) is refused. Writes
to the file itself, or through such a loop device later, bypass the
snapshot: activate warns, and status says so.

--prealloc SIZE writes zeros over the first SIZE bytes of each new session's
COW file when it is armed (at most a quarter of the store's free space), so
that on an ext2/3/4 or xfs store the kernel writes those pre-images straight
to the store's block device instead of through its filesystem: first writes
to the device cost about what they cost under an LVM snapshot. A session
gives back what it did not use when it closes. 0 turns this off.

` + retentionHelp + ` dmsnap set changes the policy later.

` + onUnmountHelp + `

Exit codes: 0 ok, 1 failure, 2 usage, 3 wrong password, 4 device mounted or busy.`,
		Args:              argsBetween(1, 1, "activate takes one DEVICE"),
		ValidArgsFunction: completeBlockDevices,
		RunE:              func(c *cobra.Command, args []string) error { return runActivate(e, c.Flags(), f, args[0]) },
	}
	fs := c.Flags()
	fs.StringVar(&f.name, "name", "", "dmsnap `NAME` of the device (default: the device's base name)")
	fs.StringVar(&f.chunk, "chunk-size", "4KiB", "snapshot chunk `SIZE`, a power of two from 4KiB to 512KiB")
	fs.StringVar(&f.prealloc, "prealloc", fmt.Sprintf("%dMiB", session.DefaultPrealloc>>20), "`SIZE` of each new COW file written ahead (0: none)")
	f.keep.add(fs)
	fs.StringVar(&f.label, "label", "", "label the first session (`TEXT`, as dmsnap label-next)")
	fs.StringVar(&f.onUnmount, "on-unmount", session.OnUnmountKeep, "what each unmount does besides closing the session: keep, or revert (put the device back to its state before the mount)")
	f.pw.add(fs)
	return c
}

func runActivate(e *env, fs *pflag.FlagSet, f activateFlags, device string) error {
	if err := f.pw.check(); err != nil {
		return err
	}
	size, err := units.ParseSize(f.chunk)
	if err != nil {
		return usagef("--chunk-size: %v", err)
	}
	if size > session.MaxChunkSize || session.ValidateChunkSize(uint32(size)) != nil {
		return usagef("--chunk-size %s: use a power of two from 4KiB to 512KiB", f.chunk)
	}
	pre, err := units.ParseSize(f.prealloc)
	if err != nil {
		return usagef("--prealloc: %v", err)
	}
	if pre > 1<<62 {
		return usagef("--prealloc %s: too large", f.prealloc)
	}
	var keep snapstore.Retention
	if err := f.keep.apply(fs, &keep); err != nil {
		return err
	}
	if err := snapstore.ValidateLabel(f.label); err != nil {
		return usagef("--label: %v", err)
	}
	onUnmount, err := parseOnUnmount(f.onUnmount)
	if err != nil {
		return err
	}
	if f.name != "" {
		if err := session.ValidateName(f.name); err != nil {
			return usagef("--name: %v", err)
		}
	}
	if err := requireSecret(e, &f.pw); err != nil {
		return err
	}
	if err := managedStores(e).RequireUp(e.store); err != nil {
		return err
	}
	m := newManager(e)
	d, err := m.Activate(e.ctx, session.ActivateRequest{Device: device, Name: f.name, ChunkSize: uint32(size), Store: e.store, Prealloc: int64(pre), Retention: keep, OnUnmount: onUnmount})
	if err != nil {
		return err
	}
	if d.Identity.Image {
		fmt.Fprintf(e.stderr, "warning: %s\n", session.ImageBypass(d.Name))
	} else if st := d.Identity.Stable; st == nil || !st.Stable() {
		fmt.Fprintf(e.stderr, "warning: %s has no stable identity (no disk serial or WWN, partition UUID, loop backing file or DM UUID): after a reboot dmsnap cannot tell it from another device of its size, so it is not re-attached by itself; `dmsnap attach --force-identity --name %s DEVICE` protects it again\n",
			d.Path, d.Name)
	}
	var label labelled
	if f.label != "" {
		// The device is protected from here on whatever happens to the
		// label: a failure to set it is reported, not undone.
		if label, err = markLive(e, d.Name, snapstore.Mark{Label: &f.label}); err != nil {
			return fmt.Errorf("activated %s as %s, but the label was not set: %w", d.Path, d.Name, err)
		}
	}
	res := activated{Label: label.Label, Name: d.Name, Path: d.Path, Mount: "/dev/mapper/dmsnap-" + d.Name, Store: d.Store, Image: d.Identity.Image}
	if cur := d.Current(); cur != nil {
		res.Session, res.SessionDir = cur.N, cur.Dir
	}
	return e.emit(res, func(w io.Writer) error {
		fmt.Fprintf(w, "activated %s as %s: mount %s; sessions go to %s\n", res.Path, res.Name, res.Mount, res.Store)
		if res.SessionDir != "" {
			fmt.Fprintf(w, "session %d armed in %s\n", res.Session, res.SessionDir)
		}
		return nil
	})
}

// activated is activate's result.
type activated struct {
	Name       string `json:"name"`
	Path       string `json:"path"`
	Mount      string `json:"mount"` // the device to mount
	Store      string `json:"store"`
	Session    int    `json:"session,omitempty"` // the armed session's number
	SessionDir string `json:"session_dir,omitempty"`
	Image      bool   `json:"image,omitempty"` // Path is an image file, on a loop device dmsnap bound
	Label      string `json:"label,omitempty"` // of the armed session (--label)
}
