package session

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dmsnap/dmsnap/internal/atomicfile"
	"github.com/dmsnap/dmsnap/internal/names"
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

// ViewDMName is the device-mapper name of the view of session id of device
// name: dmsnap-NAME-at<ID without NAME_> (never dmsnap-NAME-snapN, which
// the stack owns). "dmsnap-" is dm.Prefix, which this package does not
// import.
func ViewDMName(name, id string) string {
	return "dmsnap-" + name + "-at" + strings.TrimPrefix(id, name+"_")
}

// LoadViews reads the open views; none when the file is missing. A file
// ParseViews refuses is an error that names it.
func LoadViews(stateDir string) ([]View, error) {
	path := filepath.Join(stateDir, ViewsFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return ParseViews(b, path, stateDir)
}

// ParseViews decodes and checks the bytes of views.json; name (its path)
// is what errors name. stateDir is the state directory the file belongs
// to: every view's COW must be a file directly in its views/
// subdirectory, and its device-mapper name the one ViewDMName gives, since
// closing a view removes that device and that file (a planted or damaged
// record must not make dmsnap remove any other). Refused: anything but a
// JSON list of View records, unknown keys, a session ID ValidateSessionID
// refuses, a device name ValidateName refuses, a device-mapper name other
// than ViewDMName's, a COW path that is not absolute and clean or not in
// views/, a mount point that is not absolute and clean, and the same
// session ID, device-mapper name or COW twice.
func ParseViews(b []byte, name, stateDir string) ([]View, error) {
	damaged := func(err error) error {
		return fmt.Errorf("views file %s is damaged: %w; move it away (mv %s %s.damaged): dmsnap then forgets the open views it recorded: "+
			"unmount them, remove their devices (dmsetup remove dmsnap-NAME-atSECS) and their COW files in %s yourself; deactivate no longer waits for them",
			name, err, name, name, filepath.Join(stateDir, "views"))
	}
	abs, err := absStateDir(stateDir)
	if err != nil {
		return nil, fmt.Errorf("views file %s: %w", name, err)
	}
	var vs []View
	if err := decodeStrict(b, &vs); err != nil {
		return nil, damaged(err)
	}
	if err := checkViews(vs, abs); err != nil {
		return nil, damaged(err)
	}
	return vs, nil
}

func checkViews(vs []View, stateDir string) error {
	ids, dms, cows := map[string]int{}, map[string]int{}, map[string]int{}
	for i, v := range vs {
		bad := func(format string, args ...any) error {
			return fmt.Errorf("record %d (session %q): %s", i, v.ID, fmt.Sprintf(format, args...))
		}
		if err := ValidateSessionID(v.ID); err != nil {
			return bad("%v", err)
		}
		if j, ok := ids[v.ID]; ok {
			return bad("the session has a view in record %d already", j)
		}
		ids[v.ID] = i
		if err := names.Validate(v.Name); err != nil {
			return bad("%v", err)
		}
		if want := ViewDMName(v.Name, v.ID); v.DM != want {
			return bad("device-mapper name %q is not the view's (%s)", v.DM, want)
		}
		if j, ok := dms[v.DM]; ok {
			return bad("device %s is record %d's too", v.DM, j)
		}
		dms[v.DM] = i
		if err := checkStatePath(v.COW, stateDir, "views"); err != nil {
			return bad("COW: %v", err)
		}
		if j, ok := cows[v.COW]; ok {
			return bad("COW %s is record %d's too", v.COW, j)
		}
		cows[v.COW] = i
		if v.Mount != "" && (!filepath.IsAbs(v.Mount) || filepath.Clean(v.Mount) != v.Mount || strings.IndexByte(v.Mount, 0) >= 0) {
			return bad("mount point %q is not an absolute, clean path", v.Mount)
		}
	}
	return nil
}

// SaveViews replaces the views file atomically. It refuses records that
// LoadViews would refuse.
func SaveViews(stateDir string, vs []View) error {
	if vs == nil {
		vs = []View{}
	}
	path := filepath.Join(stateDir, ViewsFile)
	abs, err := absStateDir(stateDir)
	if err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	if err := checkViews(vs, abs); err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	b, err := json.MarshalIndent(vs, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, append(b, '\n'), 0o644)
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
