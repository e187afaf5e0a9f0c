package snapstore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"unicode"
	"unicode/utf8"

	"github.com/dmsnap/dmsnap/internal/atomicfile"
)

// Labels and pins (FORMAT.md, meta.json "label" and "pinned"). A label is
// a person's note on a session ("before the upgrade"); a pinned session is
// never pruned, and so neither is any session after it, which a restore
// to it needs. While a session is unfinished they are kept in its
// state.json, and Convert carries them into meta.json.

// MaxLabelLen is the longest label, in bytes.
const MaxLabelLen = 200

// ValidateLabel checks a label: valid UTF-8 of at most MaxLabelLen bytes,
// with no control characters (it is printed in tables and logs).
func ValidateLabel(s string) error {
	switch {
	case len(s) > MaxLabelLen:
		return fmt.Errorf("label of %d bytes: at most %d", len(s), MaxLabelLen)
	case !utf8.ValidString(s):
		return errors.New("label is not valid UTF-8")
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("label holds the control character %U", r)
		}
	}
	return nil
}

// Mark is a change to a session's label and pin; a nil field is left as
// it is.
type Mark struct {
	Label  *string
	Pinned *bool
}

// ErrSeedSession: a seed session's meta.json has no dmsnap object to hold
// a label or a pin, and dmsnap does not add one (that would make it look
// verified).
var ErrSeedSession = errors.New("a session written by the seed has no dmsnap object to keep a label or a pin in")

// SetMark changes the label and pin of the session in dir: in meta.json
// for a finished dmsnap session (rewritten atomically with its
// self-checksum renewed; nothing else changes), in state.json for an
// unfinished one. The caller holds the state lock, so no conversion runs
// meanwhile. It returns the label and pin now recorded.
func SetMark(dir string, m Mark) (label string, pinned bool, err error) {
	if m.Label != nil {
		if err := ValidateLabel(*m.Label); err != nil {
			return "", false, err
		}
	}
	metaPath := filepath.Join(dir, MetaFile)
	b, err := os.ReadFile(metaPath)
	if errors.Is(err, fs.ErrNotExist) {
		var st State
		err := UpdateState(dir, func(s *State) error {
			applyMark(&s.Label, &s.Pinned, m)
			st = *s
			return nil
		})
		return st.Label, st.Pinned, err
	}
	if err != nil {
		return "", false, err
	}
	meta, err := ParseMeta(b, metaPath)
	if err != nil {
		return "", false, err
	}
	if meta.Dmsnap == nil {
		return "", false, fmt.Errorf("%s: %w", dir, ErrSeedSession)
	}
	applyMark(&meta.Dmsnap.Label, &meta.Dmsnap.Pinned, m)
	out, err := EncodeMeta(meta)
	if err != nil {
		return "", false, err
	}
	if err := atomicfile.WriteFile(metaPath, out, 0o644); err != nil {
		return "", false, err
	}
	return meta.Dmsnap.Label, meta.Dmsnap.Pinned, nil
}

func applyMark(label *string, pinned *bool, m Mark) {
	if m.Label != nil {
		*label = *m.Label
	}
	if m.Pinned != nil {
		*pinned = *m.Pinned
	}
}
