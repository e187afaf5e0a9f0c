package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/dmsnap/dmsnap/internal/hostfiles"
	"github.com/dmsnap/dmsnap/session"
)

func init() {
	register(command{name: "install-files", summary: "write the systemd unit and udev rule under DIR", hidden: true, run: runInstallFiles})
}

const installFilesHelp = `usage: dmsnap install-files [--binary PATH] DIR

Writes DIR/etc/systemd/system/dmsnap-watch.service (runs dmsnap watch with the
global --state and --store) and DIR/etc/udev/rules.d/90-dmsnap.rules (the rule
for the devices activated now; dmsnap keeps the installed one in step). For
make install: dmsnap install-files "$(DESTDIR)".
`

func runInstallFiles(e *env, args []string) error {
	fs := newFlags(e, "install-files")
	bin := fs.String("binary", hostfiles.DefaultBinary, "the dmsnap executable the unit and rule run")
	fs.Usage = func() { fmt.Fprint(e.stderr, installFilesHelp) }
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("install-files takes one DIR")
	}
	root := fs.Arg(0)
	gen := session.HostFileOptions(hostfiles.Options{Binary: *bin, StateDir: e.state, Store: e.store})
	unit, err := hostfiles.SystemdUnit(gen)
	if err != nil {
		return err
	}
	reg, err := session.LoadRegistry(e.state)
	if err != nil {
		reg = &session.Registry{Version: session.RegistryVersion}
	}
	unitPath := filepath.Join(root, hostfiles.SystemdUnitPath)
	if err := os.MkdirAll(filepath.Dir(unitPath), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(unitPath, []byte(unit), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", unitPath, err)
	}
	rulePath := filepath.Join(root, hostfiles.UdevRulePath)
	if err := os.MkdirAll(filepath.Dir(rulePath), 0o755); err != nil {
		return err
	}
	if err := hostfiles.WriteUdevRules(rulePath, session.RegistryPath(gen.StateDir), reg.UdevDevices(), gen); err != nil {
		return fmt.Errorf("write %s: %w", rulePath, err)
	}
	fmt.Fprintf(e.stdout, "%s\n%s\n", unitPath, rulePath)
	return nil
}
