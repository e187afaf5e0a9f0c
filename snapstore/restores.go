package snapstore

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dmsnap/dmsnap/internal/atomicfile"
)

// RestoresLog is the file in a store that lists the restores no session
// recorded: of a device that was not activated, and --no-undo restores
// (FORMAT.md, "restores.log"). One line each:
//
//	<name> TAB <target ID> TAB <last ID> TAB <RFC 3339 time> TAB <how>
//
// After such a restore the device holds its state before the target
// session, and nothing of the sessions from the target to the last one
// (the newest when it ran) describes it any more: a later restore to one of
// them would write their pre-images onto a state they were not taken from,
// giving a state the device never had. CheckRestored refuses that.
const RestoresLog = "restores.log"

// Restore is one line of RestoresLog.
type Restore struct {
	Name   string
	Target string // the device was put back to its state before this session
	Last   string // the newest session of the device then
	At     string // RFC 3339
	How    string // "direct" (not activated) or "no-undo"
}

// NoteRestore appends a restore of device name to the store's RestoresLog:
// it put the device back to its state before target, when last was its
// newest session.
func NoteRestore(store, name, target, last, how string, at time.Time) error {
	for _, f := range []string{name, target, last, how} {
		if f == "" || strings.ContainsAny(f, "\t\n") {
			return fmt.Errorf("note restore in %s: field %q is empty or holds a tab or newline", store, f)
		}
	}
	line := strings.Join([]string{name, target, last, at.UTC().Format(time.RFC3339), how}, "\t") + "\n"
	return atomicfile.Append(filepath.Join(store, RestoresLog), []byte(line), filePerm)
}

// RestoresOf returns the restores of device name noted in store, oldest
// first. A missing log has none; lines that do not parse are skipped.
func RestoresOf(store, name string) ([]Restore, error) {
	b, err := os.ReadFile(filepath.Join(store, RestoresLog))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Restore
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 5 || f[0] != name {
			continue
		}
		out = append(out, Restore{Name: f[0], Target: f[1], Last: f[2], At: f[3], How: f[4]})
	}
	return out, nil
}

// CheckRestored refuses a restore to session target (an ID among sessions,
// the device's sessions in the order taken) when a noted restore put the
// device back before an older session: every session after that restore's
// target, up to its last, describes a past the device no longer has.
// Restores to the noted target or older, or to sessions taken after the
// restore, are fine.
func CheckRestored(sessions []SessionInfo, target string, restores []Restore) error {
	pos := map[string]int{}
	for i, s := range sessions {
		pos[s.ID] = i
	}
	t, ok := pos[target]
	if !ok {
		return nil
	}
	for i := len(restores) - 1; i >= 0; i-- {
		r := restores[i]
		last, ok := pos[r.Last]
		if !ok || t > last {
			continue // taken after that restore, or its sessions are gone
		}
		if to, ok := pos[r.Target]; ok && t <= to {
			continue
		}
		return fmt.Errorf("the device was put back to its state before session %s on %s (%s restore), and session %s was taken before that: its pre-images describe a past the device no longer has, so restoring to it would give a state the device never had; restore to %s or an earlier session",
			r.Target, r.At, r.How, target, r.Target)
	}
	return nil
}
