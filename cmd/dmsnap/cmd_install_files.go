package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/dmsnap/dmsnap/internal/hostfiles"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/storedev"
)

func init() { register(installFilesCmd) }

type installFlags struct {
	binary, prefix string
	list           bool
}

func installFilesCmd(e *env) *cobra.Command {
	var f installFlags
	c := &cobra.Command{
		Use:   "install-files DIR",
		Short: "write the systemd units, udev rule, man pages and completions under DIR",
		Long: `Writes, under DIR: etc/systemd/system/dmsnap-watch.service (runs dmsnap watch
with the global --state and --store), etc/systemd/system/dmsnap-attach@.service
(the udev rule starts one for each activated device that appears),
etc/udev/rules.d/90-dmsnap.rules (the rule for the devices activated now;
dmsnap keeps the installed one in step), etc/systemd/system/dmsnap-store@.service
and etc/udev/rules.d/89-dmsnap-store.rules (the same for managed stores),
etc/systemd/system/dmsnap-verify.service and .timer (sessions verify, weekly),
and under DIR/PREFIX the man pages (share/man/man8) and the bash, zsh and
fish completions. For make install: dmsnap install-files "$(DESTDIR)".
--list prints the paths only (make uninstall removes them).`,
		Hidden: true,
		Args:   argsBetween(1, 1, "install-files takes one DIR"),
		RunE:   func(c *cobra.Command, args []string) error { return runInstallFiles(e, c.Root(), f, args[0]) },
	}
	c.Flags().StringVar(&f.binary, "binary", hostfiles.DefaultBinary, "the dmsnap executable `PATH` the unit and rule run")
	c.Flags().StringVar(&f.prefix, "prefix", "/usr/local", "the `PREFIX` under DIR of the man pages and completions")
	c.Flags().BoolVar(&f.list, "list", false, "print the paths that would be written, and write nothing")
	return c
}

func runInstallFiles(e *env, root *cobra.Command, f installFlags, dir string) error {
	gen := session.HostFileOptions(hostfiles.Options{Binary: f.binary, StateDir: e.state, Store: e.store})
	unit, err := hostfiles.SystemdUnit(gen)
	if err != nil {
		return err
	}
	attach, err := hostfiles.AttachUnit(gen)
	if err != nil {
		return err
	}
	reg, err := session.LoadRegistry(e.state)
	if err != nil {
		reg = &session.Registry{Version: session.RegistryVersion}
	}
	rule, err := hostfiles.UdevRules(session.RegistryPath(gen.StateDir), reg.UdevDevices(), gen)
	if err != nil {
		return err
	}
	storeUnit, err := hostfiles.StoreUnit(gen)
	if err != nil {
		return err
	}
	rs, err := storedev.LoadRecords(e.state)
	if err != nil {
		rs = &storedev.Records{}
	}
	storeRule, err := hostfiles.StoreUdevRules(filepath.Join(gen.StateDir, storedev.RecordsFile), rs.UdevDevices(), gen)
	if err != nil {
		return err
	}
	verify, err := hostfiles.VerifyService(gen)
	if err != nil {
		return err
	}
	docs, err := docFiles(root, f.prefix)
	if err != nil {
		return err
	}
	files := []docFile{{hostfiles.SystemdUnitPath, []byte(unit)}, {hostfiles.AttachUnitPath, []byte(attach)}, {hostfiles.UdevRulePath, []byte(rule)},
		{hostfiles.StoreUnitPath, []byte(storeUnit)}, {hostfiles.StoreUdevRulePath, []byte(storeRule)},
		{hostfiles.VerifyServicePath, []byte(verify)}, {hostfiles.VerifyTimerPath, []byte(hostfiles.VerifyTimer())}}
	for _, d := range docs {
		files = append(files, docFile{filepath.Join(f.prefix, d.path), d.text})
	}
	for _, file := range files {
		p := filepath.Join(dir, file.path)
		if !f.list {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(p, file.text, 0o644); err != nil {
				return fmt.Errorf("write %s: %w", p, err)
			}
		}
		fmt.Fprintln(e.stdout, p)
	}
	return nil
}
