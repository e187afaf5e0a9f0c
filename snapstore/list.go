package snapstore

import (
	"cmp"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Status is how a session directory reads.
type Status string

const (
	// StatusComplete: dmsnap session, meta.json committed and intact.
	StatusComplete Status = "complete"
	// StatusInvalid: dmsnap session flagged invalid (the kernel dropped the
	// snapshot or its COW was damaged); restorable only as far as it goes.
	StatusInvalid Status = "invalid"
	// StatusUnverified: a seed session (meta.json without a dmsnap object):
	// readable and restorable, but nothing checks its bytes.
	StatusUnverified Status = "unverified"
	// StatusIncomplete: no meta.json. The session is armed or open, or its
	// conversion has not finished (see Phase); never read as a session.
	StatusIncomplete Status = "incomplete"
	// StatusDamaged: meta.json is there but is not a file, fails its
	// checksum, does not parse, or is of a newer format (see Err).
	StatusDamaged Status = "damaged"
	// StatusUnreadable: the operating system would not read meta.json
	// (permission denied, too many open files, an I/O error: Err wraps
	// ErrCannotVerify and says which). Nothing is known about the session;
	// it is not damage. Reading it again once the cause is fixed tells.
	StatusUnreadable Status = "unreadable"
)

// SessionInfo describes one session directory of a store.
type SessionInfo struct {
	ID     string    // directory name, <name>_<unix seconds>
	Dir    string    // full path
	Name   string    // device name part of ID
	Time   time.Time // time part of ID (mount time)
	Status Status
	// Phase is state.json's phase for an incomplete session ("" when it has
	// none or it is unreadable).
	Phase Phase
	// Meta is the parsed meta.json for complete, invalid and unverified
	// sessions.
	Meta *Meta
	// Sequence is the session's place among its device's sessions, from
	// meta.json or state.json (0: not recorded — a seed session, or one
	// written before dmsnap recorded it).
	Sequence int
	// Label and Pinned are the session's (SetMark), from meta.json or
	// state.json.
	Label  string
	Pinned bool
	// Err says why a session is damaged or unreadable, or why an
	// incomplete one's state.json could not be read.
	Err error
}

// ListSessions lists the session directories of a store — the directories
// named <name>_<unix seconds> — sorted by name, then in the order the
// sessions were taken (Less). It reads only meta.json (and state.json of
// incomplete sessions): it does not verify data; see Verify. A missing
// store lists nothing.
func ListSessions(store string) ([]SessionInfo, error) {
	ents, err := os.ReadDir(store)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []SessionInfo
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		id, ok := parseSessionID(e.Name())
		if !ok {
			continue
		}
		out = append(out, inspect(filepath.Join(store, e.Name()), id))
	}
	slices.SortFunc(out, func(a, b SessionInfo) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), Order(a, b))
	})
	return out, nil
}

// Order compares two sessions of one device by when they were taken: by
// sequence number where both have one; a session without one (the seed's,
// or dmsnap's before it recorded them) before any that has one; by the time
// in the directory name otherwise, then the name. The wall clock alone is
// not trusted: it steps back (a dead RTC before NTP, a VM restored from a
// snapshot), and a restore chain in the wrong order lets the wrong
// pre-image win without a word.
func Order(a, b SessionInfo) int {
	switch {
	case a.Sequence > 0 && b.Sequence > 0:
		return cmp.Or(cmp.Compare(a.Sequence, b.Sequence), cmp.Compare(a.ID, b.ID))
	case a.Sequence > 0:
		return 1
	case b.Sequence > 0:
		return -1
	}
	return cmp.Or(a.Time.Compare(b.Time), cmp.Compare(a.ID, b.ID))
}

// Inspect describes one session directory the way ListSessions does.
func Inspect(dir string) SessionInfo {
	id, _ := parseSessionID(filepath.Base(dir))
	return inspect(dir, id)
}

func inspect(dir string, id sessionID) SessionInfo {
	info := SessionInfo{ID: filepath.Base(dir), Dir: dir, Name: id.name, Time: time.Unix(id.unix, 0).UTC()}
	metaPath := filepath.Join(dir, MetaFile)
	b, err := os.ReadFile(metaPath)
	if errors.Is(err, fs.ErrNotExist) {
		info.Status = StatusIncomplete
		if st, err := ReadState(dir); err == nil {
			info.Phase, info.Sequence, info.Label, info.Pinned = st.Phase, st.Sequence, st.Label, st.Pinned
		} else if !errors.Is(err, fs.ErrNotExist) {
			info.Err = err
		}
		return info
	}
	if err != nil {
		info.Status, info.Err = StatusDamaged, ClassifyReadError(err)
		if errors.Is(info.Err, ErrCannotVerify) {
			info.Status = StatusUnreadable
		}
		return info
	}
	m, err := ParseMeta(b, metaPath)
	if err != nil {
		info.Status, info.Err = StatusDamaged, err
		return info
	}
	info.Meta = &m
	if m.Dmsnap != nil {
		info.Sequence, info.Label, info.Pinned = m.Dmsnap.Sequence, m.Dmsnap.Label, m.Dmsnap.Pinned
	}
	switch {
	case m.Dmsnap == nil:
		info.Status = StatusUnverified
	case m.Dmsnap.State == StateInvalid:
		info.Status = StatusInvalid
	default:
		info.Status = StatusComplete
	}
	return info
}
