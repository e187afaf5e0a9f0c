package main

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dmsnap/dmsnap/internal/config"
	"github.com/dmsnap/dmsnap/internal/trustdir"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

// The global settings and where sessions are read from: one resolution
// for every command (docs/cli.md, "Settings").

// errNotFound: a store or state directory that was named does not exist
// (exit 6).
var errNotFound = errors.New("not found")

// notFoundError names what is missing.
type notFoundError struct{ what, path string }

func (e *notFoundError) Error() string {
	return fmt.Sprintf("%s %s does not exist (check --%s, DMSNAP_%s and %s)", e.what, e.path, e.flag(), e.env(), config.Path)
}

func (e *notFoundError) Is(target error) bool { return target == errNotFound }

func (e *notFoundError) flag() string {
	if e.what == "store" {
		return "store"
	}
	return "state"
}

func (e *notFoundError) env() string {
	if e.what == "store" {
		return "STORE"
	}
	return "STATE"
}

// mustExist refuses a missing directory (what is "store" or "state
// directory").
func mustExist(what, path string) error {
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return &notFoundError{what, path}
	case err != nil:
		return fmt.Errorf("%s %s: %w", what, path, err)
	case !st.IsDir():
		return fmt.Errorf("%s %s is not a directory", what, path)
	}
	return nil
}

// settings fills in --store and --state from the environment and the
// configuration file where the flags were not given, and records which
// were set at all.
func (e *env) settings(c *cobra.Command) error {
	path := cmp.Or(os.Getenv("DMSNAP_CONFIG"), config.Path)
	conf, err := config.Load(path)
	for _, s := range []struct {
		flag, env, conf string
		val             *string
		set             *bool
	}{
		{"store", "DMSNAP_STORE", conf.Store, &e.store, &e.storeSet},
		{"state", "DMSNAP_STATE", conf.State, &e.state, &e.stateSet},
	} {
		switch f := c.Flags().Lookup(s.flag); {
		case f != nil && f.Changed:
			*s.set = true
		case os.Getenv(s.env) != "":
			*s.val, *s.set = os.Getenv(s.env), true
		case s.conf != "":
			*s.val, *s.set = s.conf, true
		}
	}
	return err
}

// sessionStores returns the checked real paths of the stores holding the
// sessions of device name ("": of every device): an activated device's is
// the one it was activated with, as the registry says; the configured
// store (--store) otherwise, and in addition when name is "". A store
// that does not exist is an error (exit 6), except the built-in default
// when the registry names others. A registry that cannot be read leaves
// the configured store, with a warning: what can be read is shown.
func (e *env) sessionStores(name string) ([]string, error) {
	reg, err := session.LoadRegistry(e.state)
	if err != nil {
		fmt.Fprintf(e.stderr, "warning: %v: reading the store %s only\n", err, e.store)
		reg = &session.Registry{}
	}
	var stores []string
	for _, d := range reg.Devices {
		if d.Store != "" && (name == "" || d.Name == name) && !slices.Contains(stores, d.Store) {
			stores = append(stores, d.Store)
		}
	}
	explicit := e.storeSet || len(stores) == 0
	if name == "" || len(stores) == 0 {
		stores = append([]string{e.store}, stores...)
	}
	var out []string
	for i, s := range stores {
		real, err := trustdir.ResolveStore(s)
		if err != nil {
			return nil, err
		}
		if err := mustExist("store", real); err != nil {
			if i == 0 && name == "" && !explicit && errors.Is(err, errNotFound) {
				continue // the default, unused: the registry names the stores
			}
			return nil, err
		}
		if !slices.Contains(out, real) {
			out = append(out, real)
		}
	}
	return out, nil
}

// listStores lists the sessions of stores, by device and in the order
// they were taken.
func listStores(stores []string) ([]snapstore.SessionInfo, error) {
	var all []snapstore.SessionInfo
	for _, s := range stores {
		infos, err := snapstore.ListSessions(s)
		if err != nil {
			return nil, fmt.Errorf("list the store %s: %w", s, err)
		}
		all = append(all, infos...)
	}
	slices.SortStableFunc(all, func(a, b snapstore.SessionInfo) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), snapstore.Order(a, b))
	})
	return all, nil
}

// findSession finds session id's directory: in the store of the device its
// ID names, then in the configured store.
func (e *env) findSession(id string) (string, error) {
	if err := session.ValidateSessionID(id); err != nil {
		return "", fmt.Errorf("session %q: %w", id, err)
	}
	name, _ := snapstore.SessionName(id)
	stores, err := e.sessionStores(name)
	if err != nil {
		return "", err
	}
	if name != "" && !slices.Contains(stores, e.store) {
		if real, err := trustdir.ResolveStore(e.store); err == nil && mustExist("store", real) == nil && !slices.Contains(stores, real) {
			stores = append(stores, real)
		}
	}
	var first error
	for _, s := range stores {
		dir, err := session.ResolveSessionDir(s, id)
		if err == nil {
			return dir, nil
		}
		first = cmp.Or(first, err)
	}
	return "", fmt.Errorf("%w (`dmsnap sessions list` shows the IDs)", first)
}

// deviceName turns what a user typed for a device into its dmsnap name: a
// name as it is; a path (of a block device or an image file) the name it
// is activated as or, when it is not activated, the name its sessions carry
// by the seed's rule (its base name, snapstore.SanitizeName).
func (e *env) deviceName(arg string) string {
	if !strings.Contains(arg, "/") {
		return arg
	}
	if reg, err := session.LoadRegistry(e.state); err == nil {
		if d, err := reg.Lookup(arg); err == nil {
			return d.Name
		}
	}
	return snapstore.SanitizeName(arg)
}

// deviceNameOr is deviceName of arg, and "" for "".
func (e *env) deviceNameOr(arg string) string {
	if arg == "" {
		return ""
	}
	return e.deviceName(arg)
}
