package main

import (
	"fmt"

	"github.com/dmsnap/dmsnap/internal/units"
	"github.com/dmsnap/dmsnap/session"
)

func init() {
	register(command{name: "activate", summary: "put a block device under dmsnap and arm its first session", run: runActivate})
}

const activateHelp = `usage: dmsnap activate DEVICE [--name NAME] [--chunk-size 4KiB] [--prealloc 256MiB] [--password-stdin|--password-file FILE]

Builds the dmsnap stack over DEVICE (which must not be mounted) and arms its
first session. Mount /dev/mapper/dmsnap-NAME from then on: every mount to
unmount of it is one session in the store.

--prealloc SIZE writes zeros over the first SIZE bytes of each new session's
COW file when it is armed (at most a quarter of the store's free space), so
that on an ext2/3/4 or xfs store the kernel writes those pre-images straight
to the store's block device instead of through its filesystem: first writes
to the device cost about what they cost under an LVM snapshot. A session
gives back what it did not use when it closes. 0 turns this off.

Exit codes: 0 ok, 1 failure, 2 usage, 3 wrong password, 4 device mounted or busy.
`

func runActivate(e *env, args []string) error {
	fs := newFlags(e, "activate")
	name := fs.String("name", "", "dmsnap `NAME` of the device (default: the device's base name)")
	chunk := fs.String("chunk-size", "4KiB", "snapshot chunk `SIZE`, a power of two from 4KiB to 512KiB")
	prealloc := fs.String("prealloc", fmt.Sprintf("%dMiB", session.DefaultPrealloc>>20), "`SIZE` of each new COW file written ahead (0: none)")
	var pw passwordFlags
	pw.add(fs)
	fs.Usage = func() { fmt.Fprint(e.stderr, activateHelp, "\nflags:\n", flagUsages(fs)) }
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("activate takes one DEVICE (see dmsnap activate --help)")
	}
	if err := pw.check(); err != nil {
		return err
	}
	size, err := units.ParseSize(*chunk)
	if err != nil {
		return usagef("--chunk-size: %v", err)
	}
	if size > session.MaxChunkSize || session.ValidateChunkSize(uint32(size)) != nil {
		return usagef("--chunk-size %s: use a power of two from 4KiB to 512KiB", *chunk)
	}
	pre, err := units.ParseSize(*prealloc)
	if err != nil {
		return usagef("--prealloc: %v", err)
	}
	if pre > 1<<62 {
		return usagef("--prealloc %s: too large", *prealloc)
	}
	if *name != "" {
		if err := session.ValidateName(*name); err != nil {
			return usagef("--name: %v", err)
		}
	}
	if err := requireSecret(e, &pw); err != nil {
		return err
	}
	m := newManager(e)
	d, err := m.Activate(e.ctx, session.ActivateRequest{Device: fs.Arg(0), Name: *name, ChunkSize: uint32(size), Store: e.store, Prealloc: int64(pre)})
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "activated %s as %s: mount /dev/mapper/dmsnap-%s; sessions go to %s\n", d.Path, d.Name, d.Name, d.Store)
	if st := d.Identity.Stable; st == nil || !st.Stable() {
		fmt.Fprintf(e.stderr, "warning: %s has no stable identity (no disk serial or WWN, partition UUID, loop backing file or DM UUID): after a reboot dmsnap cannot tell it from another device of its size, so it is not re-attached by itself; `dmsnap attach --force-identity --name %s DEVICE` protects it again\n",
			d.Path, d.Name)
	}
	if cur := d.Current(); cur != nil {
		fmt.Fprintf(e.stdout, "session %d armed in %s\n", cur.N, cur.Dir)
	}
	return nil
}
