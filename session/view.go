package session

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dmsnap/dmsnap/internal/atomicfile"
)

// Views (`dmsnap sessions open|mount|close`) are read-only snapshot devices
// over a stack's -real showing the device as it was before a session. Each
// open view is a View record in STATE/views.json, written before its device
// is made and removed after the device and its COW are gone, so that a view
// a crash left half-made is found and cleaned up (`sessions close`).
// Deactivation refuses while a device has views (BlockersOf).

// ViewsFile is the file, in the state directory, of the open views.
const ViewsFile = "views.json"

// View is one open view.
type View struct {
	ID    string `json:"id"`              // session the view shows the state before
	Name  string `json:"name"`            // dmsnap name of the device
	DM    string `json:"dm"`              // device-mapper name of the view
	COW   string `json:"cow"`             // the view's COW file
	Mount string `json:"mount,omitempty"` // where `sessions mount` mounted it
	// Opening: recorded before the device was made; cleared once it is up.
	// A record still opening is what a crash mid-open left.
	Opening bool `json:"opening,omitempty"`
}

// LoadViews reads the open views; none when the file is missing.
func LoadViews(stateDir string) ([]View, error) {
	path := filepath.Join(stateDir, ViewsFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var vs []View
	if err := json.Unmarshal(b, &vs); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return vs, nil
}

// SaveViews replaces the views file atomically.
func SaveViews(stateDir string, vs []View) error {
	if vs == nil {
		vs = []View{}
	}
	b, err := json.MarshalIndent(vs, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(stateDir, ViewsFile), append(b, '\n'), 0o644)
}

// BlockersOf says why device name cannot be deactivated now: its open
// views (they hold its -real; views a crash or a reboot left count too,
// until `sessions close` removes them) and a running instant restore.
// Empty when nothing blocks. Callers hold the state lock, so the answer
// stays true while they act on it.
func BlockersOf(stateDir, name string) (string, error) {
	var why []string
	vs, err := LoadViews(stateDir)
	if err != nil {
		return "", err
	}
	var ids []string
	for _, v := range vs {
		if v.Name == name {
			ids = append(ids, v.ID)
		}
	}
	if len(ids) > 0 {
		why = append(why, fmt.Sprintf("views are open of session(s) %s (close them: dmsnap sessions close ID)", strings.Join(ids, ", ")))
	}
	ms, err := LoadMerges(stateDir)
	if err != nil {
		return "", err
	}
	if mg := FindMerge(ms, name); mg != nil {
		why = append(why, fmt.Sprintf("an instant restore to the state before %s is merging (a snapshot-merge in place of the origin; wait until dmsnap status no longer shows it)", mg.Session))
	}
	return strings.Join(why, "; "), nil
}
