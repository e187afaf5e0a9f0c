package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/dmsnap/dmsnap/internal/hostfiles"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/storedev"
)

func init() { register(storeCmd) }

const storeHelp = `A managed store is a partition or disk that dmsnap wraps in a device-mapper
linear device (dmsnap_store-<id>) carrying the store's filesystem (ext4 or
xfs), mounted at the store path (--store). On such a store, and on one on
an LVM logical volume, a session's COW goes straight to the device below
the filesystem: no loop device between device-mapper and the disk, so
first writes cost about what they cost under an LVM snapshot (README,
"Which store to choose").

The device keeps a 512-byte dmsnap header in a first MiB the filesystem
does not use; the state directory's stores.json lists the stores made on
this host. At boot, the udev rule /etc/udev/rules.d/89-dmsnap-store.rules
runs dmsnap store up for each (through dmsnap-store@.service under
systemd), and dmsnap attach brings up the store of a device it attaches
first.`

func storeCmd(e *env) *cobra.Command {
	c := group(&cobra.Command{
		Use:   "store",
		Short: "make, bring up and list dmsnap-managed stores (a partition for the store)",
		Long:  storeHelp,
	})
	c.AddCommand(storeCreateCmd(e), storeUpCmd(e), storeListCmd(e))
	return c
}

type storeCreateFlags struct {
	fs    string
	force bool
	pw    passwordFlags
}

func storeCreateCmd(e *env) *cobra.Command {
	var f storeCreateFlags
	c := &cobra.Command{
		Use:   "create DEVICE",
		Short: "make DEVICE a managed store: wrap it, make its filesystem, mount it at the store path",
		Long: `Writes dmsnap's store header at the start of DEVICE, makes the linear
device dmsnap_store-<id> over the rest, makes an ext4 or xfs filesystem
(--fs) on it, and mounts it at the store path (--store, /snapshot by
default), which must be missing or an empty directory and not a mount
point. Then it records the store in the state directory and writes the udev
rule that brings it back at boot.

It refuses, writing nothing, a DEVICE that is mounted or held, smaller than
66 MiB, or that holds a filesystem, an LVM physical volume, LUKS, swap, an
md RAID member, a partition table or another dmsnap store; --force destroys
what it holds instead. Asks for the control password.

Exit codes: 0 ok, 1 failure, 2 usage, 3 wrong password, 4 device mounted or busy.`,
		Args:              argsBetween(1, 1, "store create takes one DEVICE"),
		ValidArgsFunction: completeBlockDevices,
		RunE:              func(c *cobra.Command, args []string) error { return runStoreCreate(e, f, args[0]) },
	}
	c.Flags().StringVar(&f.fs, "fs", "ext4", "the store's filesystem: ext4 or xfs")
	c.Flags().BoolVar(&f.force, "force", false, "destroy what DEVICE holds (a filesystem, a partition table, ...) and make the store")
	f.pw.add(c.Flags())
	return c
}

// managedStores are the managed stores of --state, waiting for their lock
// as the state lock does, with warnings on stderr.
func managedStores(e *env) *session.ManagedStores {
	ms := &session.ManagedStores{StateDir: e.state, Host: storedev.System{}, LockWait: lockWait(e), Gen: genOptions(e),
		Warn: func(msg string) { fmt.Fprintf(e.stderr, "warning: %s\n", msg) }}
	if udevRulePath() != "" {
		ms.Rule = hostfiles.StoreUdevRulePath
	}
	return ms
}

func runStoreCreate(e *env, f storeCreateFlags, device string) error {
	if err := f.pw.check(); err != nil {
		return err
	}
	if f.fs != "ext4" && f.fs != "xfs" {
		return usagef("--fs %s: use ext4 or xfs", f.fs)
	}
	if err := requireSecret(e, &f.pw); err != nil {
		return err
	}
	req := storedev.CreateRequest{Device: device, Path: e.store, FS: f.fs, Force: f.force, Now: time.Now()}
	if !e.json {
		req.Step = func(what string) { fmt.Fprintf(e.stderr, "dmsnap store create: %s\n", what) }
	}
	rec, err := managedStores(e).Create(e.ctx, req)
	if err != nil {
		return err
	}
	res := storeJSON(rec, true)
	return e.emit(res, func(w io.Writer) error {
		fmt.Fprintf(w, "made a managed store on %s (%s, %s): mounted on %s\n", device, rec.FS, res.Mapper, rec.Path)
		fmt.Fprintf(w, "devices activated with --store %s put their COW straight on %s\n", rec.Path, device)
		return nil
	})
}

func storeUpCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "up DEVICE",
		Short: "bring back the managed store on DEVICE: its linear device and its mount (run by udev)",
		Long: `Reads the store header of DEVICE, makes the store's linear device if it is
not there, and mounts it at the path recorded when the store was made, if
nothing is mounted there. Doing it twice changes nothing. It refuses a
DEVICE without a store header or with one this host did not make, and a
store path where another device is mounted.

Exit codes: 0 ok, 1 failure, 2 usage, 4 device busy.`,
		Args:              argsBetween(1, 1, "store up takes one DEVICE"),
		ValidArgsFunction: completeBlockDevices,
		RunE:              func(c *cobra.Command, args []string) error { return runStoreUp(e, args[0]) },
	}
}

func runStoreUp(e *env, device string) error {
	rec, err := managedStores(e).Up(e.ctx, device)
	if err != nil {
		return err
	}
	res := storeJSON(rec, true)
	return e.emit(res, func(w io.Writer) error {
		fmt.Fprintf(w, "store on %s (%s): mounted on %s\n", device, res.Mapper, rec.Path)
		return nil
	})
}

func storeListCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "list the managed stores made on this host, and whether each is mounted",
		Args:  argsBetween(0, 0, "store list takes no arguments"),
		RunE:  func(c *cobra.Command, args []string) error { return runStoreList(e) },
	}
}

func runStoreList(e *env) error {
	stores, err := managedStores(e).List()
	if err != nil {
		return err
	}
	res := []storeInfo{}
	for _, s := range stores {
		res = append(res, storeJSON(s.Record, s.Mounted))
	}
	return e.emit(res, func(w io.Writer) error {
		if len(res) == 0 {
			fmt.Fprintln(w, "no managed store (dmsnap store create DEVICE makes one)")
		}
		for _, s := range res {
			state := "not mounted"
			if s.Mounted {
				state = "mounted"
			}
			fmt.Fprintf(w, "%s  %s on %s (%s), %s\n", s.Path, s.FS, s.Device, s.Mapper, state)
		}
		return nil
	})
}

// storeInfo is a managed store in --json output.
type storeInfo struct {
	Path    string `json:"path"`
	UUID    string `json:"uuid"`
	FS      string `json:"fs"`
	Device  string `json:"device"`
	Mapper  string `json:"mapper"`
	Mounted bool   `json:"mounted"`
	Created int64  `json:"created"`
}

func storeJSON(r storedev.Record, mounted bool) storeInfo {
	return storeInfo{Path: r.Path, UUID: r.UUID, FS: r.FS, Device: r.Device, Mapper: r.MapperPath(), Mounted: mounted, Created: r.Created}
}

// storeWait is how long attach waits for a managed store's device to
// appear: well within udev's 180 s for a RUN program.
const storeWait = 60 * time.Second
