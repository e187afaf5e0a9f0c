package hostfiles

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/dmsnap/dmsnap/internal/atomicfile"
)

// The units are written once (install-files) with the global --store, but
// each device keeps the store it was activated with. A device activated
// with another store needs that store mounted before its attach runs and
// before the watcher starts, so dmsnap keeps a drop-in beside each of the
// two units naming every store in use; systemd merges it into the unit
// (for the template, into every instance).
const (
	SystemdDir = "/etc/systemd/system"
	DropInName = "50-dmsnap-stores.conf"
)

// DropInPaths are the drop-in files under unitDir, one per unit that
// needs the stores mounted: the attach template and the watcher.
func DropInPaths(unitDir string) []string {
	return []string{
		filepath.Join(unitDir, AttachUnitName+".d", DropInName),
		filepath.Join(unitDir, WatchUnitName+".d", DropInName),
	}
}

// StoresDropIn renders the drop-in: RequiresMountsFor= the stores, sorted
// and once each. systemd adds a dependency only on the mount units that
// exist, so a store on the root file system, or mounted by dmsnap itself
// (a managed store), adds nothing. from is the file it is made from, for
// its header. A path the unit syntax cannot carry as it is (see
// Options.check) is refused.
func StoresDropIn(from string, stores []string) (string, error) {
	var paths []string
	for _, s := range stores {
		if err := checkPath("store", s); err != nil {
			return "", err
		}
		if !slices.Contains(paths, s) {
			paths = append(paths, s)
		}
	}
	slices.Sort(paths)
	var b strings.Builder
	fmt.Fprintf(&b, "# dmsnap: the stores of the activated devices, mounted before the unit starts.\n")
	fmt.Fprintf(&b, "# Generated from %s by `dmsnap activate` and `dmsnap deactivate`; edits are lost.\n", commentSafe(from))
	fmt.Fprintf(&b, "[Unit]\nRequiresMountsFor=%s\n", strings.Join(paths, " "))
	return b.String(), nil
}

// WriteStoresDropIns keeps the drop-ins under unitDir in step with stores:
// written when some store is in use, removed when none is. It reports
// whether a file changed (systemd reads them at its next daemon-reload or
// boot).
func WriteStoresDropIns(unitDir, from string, stores []string) (changed bool, err error) {
	want := ""
	if len(stores) > 0 {
		if want, err = StoresDropIn(from, stores); err != nil {
			return false, err
		}
	}
	for _, p := range DropInPaths(unitDir) {
		have, rerr := os.ReadFile(p)
		switch {
		case want == "" && errors.Is(rerr, os.ErrNotExist):
			continue
		case want == "":
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return changed, fmt.Errorf("remove systemd drop-in: %w", err)
			}
			_ = os.Remove(filepath.Dir(p)) // only when empty
		case rerr == nil && string(have) == want:
			continue
		default:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return changed, fmt.Errorf("write systemd drop-in: %w", err)
			}
			if err := atomicfile.WriteFile(p, []byte(want), 0o644); err != nil {
				return changed, fmt.Errorf("write systemd drop-in %s: %w", p, err)
			}
		}
		changed = true
	}
	return changed, nil
}
