package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
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

// storeLock takes the managed stores' lock, waiting as the state lock does.
func storeLock(e *env) (*session.Lock, error) {
	wait := e.wait
	if wait == 0 {
		wait = cliLockWait
	}
	if e.noWait {
		wait = session.NoLockWait
	}
	return session.AcquireLockFile(e.ctx, filepath.Join(e.state, storedev.LockFile), wait)
}

// lockedRecords takes the stores' lock and reads stores.json under it;
// release drops the lock.
func lockedRecords(e *env) (*storedev.Records, func(), error) {
	l, err := storeLock(e)
	if err != nil {
		return nil, nil, err
	}
	rs, err := storedev.LoadRecords(e.state)
	if err != nil {
		l.Release()
		return nil, nil, err
	}
	return rs, func() { l.Release() }, nil
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
	rs, release, err := lockedRecords(e)
	if err != nil {
		return err
	}
	defer release()
	store, err := filepath.Abs(e.store)
	if err != nil {
		return err
	}
	req := storedev.CreateRequest{Device: device, Path: store, FS: f.fs, Force: f.force, Now: time.Now()}
	if !e.json {
		req.Step = func(what string) { fmt.Fprintf(e.stderr, "dmsnap store create: %s\n", what) }
	}
	rec, err := storedev.Create(e.ctx, storedev.System{}, rs, req)
	if err != nil {
		return err
	}
	if err := rs.Save(e.state); err != nil {
		return fmt.Errorf("made the store on %s and mounted it on %s, but could not record it (store up will not know it): %w", device, store, err)
	}
	syncStoreRule(e, rs)
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
	rs, release, err := lockedRecords(e)
	if err != nil {
		return err
	}
	defer release()
	rec, changed, err := storedev.Up(storedev.System{}, rs, device)
	if err != nil {
		return err
	}
	if changed {
		if err := rs.Save(e.state); err != nil {
			return err
		}
		syncStoreRule(e, rs)
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
	rs, err := storedev.LoadRecords(e.state)
	if err != nil {
		return err
	}
	res := []storeInfo{}
	for _, r := range rs.Stores {
		_, mounted, _ := storedev.System{}.MountedAt(r.Path)
		res = append(res, storeJSON(r, mounted))
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

// storeDevices are the managed stores as the udev rule matches them.
func storeDevices(rs *storedev.Records) []hostfiles.Device {
	var ds []hostfiles.Device
	for _, r := range rs.Stores {
		ds = append(ds, hostfiles.Device{Name: r.Path, Path: r.Device, Dev: r.Dev, Stable: r.Stable})
	}
	return ds
}

// syncStoreRule rewrites the managed stores' udev rule, where udev is; a
// failure is a warning: the store works now, only the next boot needs it.
func syncStoreRule(e *env, rs *storedev.Records) {
	if udevRulePath() == "" {
		return
	}
	gen := session.HostFileOptions(genOptions(e))
	text, err := hostfiles.StoreUdevRules(filepath.Join(gen.StateDir, storedev.RecordsFile), storeDevices(rs), gen)
	if err == nil {
		err = hostfiles.WriteRule(hostfiles.StoreUdevRulePath, text)
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "warning: the managed stores' udev rule was not updated (they are not brought back at boot by themselves): %v\n", err)
	}
}

// storeWait is how long attach waits for a managed store's device to
// appear: well within udev's 180 s for a RUN program.
const storeWait = 60 * time.Second

// ensureStores brings up (or waits up to wait for) the managed stores that
// registered devices use and that are not mounted: attach runs at boot
// when a device appears, maybe before its store's device has. What cannot
// be brought up is a warning; attach then says what is missing itself.
func ensureStores(ctx context.Context, e *env, wait time.Duration) {
	rs, err := storedev.LoadRecords(e.state)
	if err != nil || len(rs.Stores) == 0 {
		return
	}
	reg, err := session.LoadRegistry(e.state)
	if err != nil {
		return
	}
	used := map[string]bool{}
	for _, d := range reg.Devices {
		used[d.Store] = true
	}
	deadline := time.Now().Add(wait)
	for _, r := range rs.Stores {
		if !used[r.Path] {
			continue
		}
		ok, err := ensureStore(e, rs, r)
		for !ok && err == nil && time.Now().Before(deadline) {
			select {
			case <-ctx.Done():
				err = ctx.Err()
			case <-time.After(time.Second):
				ok, err = ensureStore(e, rs, r)
			}
		}
		if !ok {
			fmt.Fprintf(e.stderr, "warning: managed store %s is not mounted (its device %s was not found): %v\n", r.Path, r.Device, err)
		}
	}
}

// ensureStore is one try of storedev.Ensure under the stores' lock.
func ensureStore(e *env, rs *storedev.Records, r storedev.Record) (bool, error) {
	l, err := storeLock(e)
	if err != nil {
		return false, err
	}
	defer l.Release()
	ok, err := storedev.Ensure(storedev.System{}, rs, r)
	if ok && err == nil {
		err = rs.Save(e.state)
	}
	return ok, err
}

// requireManagedStoreUp refuses a store path that is a managed store not
// mounted now: its directory is then an empty one on the filesystem below,
// and sessions armed there would be hidden by the store's next mount.
func requireManagedStoreUp(e *env, store string) error {
	rs, err := storedev.LoadRecords(e.state)
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(store)
	if err != nil {
		return err
	}
	r := rs.ByPath(abs)
	if r == nil {
		return nil
	}
	if _, mounted, err := (storedev.System{}).MountedAt(r.Path); err != nil || mounted {
		return err
	}
	return fmt.Errorf("%s is a managed store that is not mounted: `dmsnap store up %s` brings it back", r.Path, r.Device)
}
