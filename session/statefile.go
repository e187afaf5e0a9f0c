package session

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
)

// Helpers for the small JSON files of the state directory (merges.json,
// views.json): they hold paths that dmsnap later attaches to loop devices
// and removes, so what they say is checked before it is believed.

// decodeStrict decodes b into v: exactly one JSON value, no key that v does
// not have. A syntax or type error says at which byte.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return fmt.Errorf("at byte %d: %w", se.Offset, err)
		case errors.As(err, &te):
			return fmt.Errorf("at byte %d: %w", te.Offset, err)
		case errors.Is(err, io.EOF):
			return errors.New("empty file")
		case errors.Is(err, io.ErrUnexpectedEOF):
			return fmt.Errorf("at byte %d: the file ends in the middle of its JSON (cut short?)", len(b))
		}
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("at byte %d: data after the JSON value", dec.InputOffset())
	}
	return nil
}

// checkStatePath checks a path read from a state file that must name a
// file directly in the subdirectory sub of stateDir (already absolute and
// clean): the path must be absolute, clean (no "..", ".", "//" or trailing
// "/") and without NUL bytes, so that a lexical check is the truth. It does
// not follow symbolic links: the state directory is root's alone (0755,
// its subdirectories 0700), and whoever can plant a link there can write
// the state files too.
func checkStatePath(p, stateDir, sub string) error {
	dir := filepath.Join(stateDir, sub)
	switch {
	case p == "":
		return errors.New("path is empty")
	case strings.IndexByte(p, 0) >= 0:
		return fmt.Errorf("path %q contains a NUL byte", p)
	case !filepath.IsAbs(p):
		return fmt.Errorf("path %q is not absolute", p)
	case filepath.Clean(p) != p:
		return fmt.Errorf("path %q is not clean (it would be %s)", p, filepath.Clean(p))
	case filepath.Dir(p) != dir:
		return fmt.Errorf("path %s is not a file in %s", p, dir)
	}
	return nil
}

// absStateDir is stateDir made absolute and clean, as the paths in its
// files are compared with it.
func absStateDir(stateDir string) (string, error) {
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		return "", fmt.Errorf("state directory %s: %w", stateDir, err)
	}
	return abs, nil
}
