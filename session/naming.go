package session

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dmsnap/dmsnap/internal/names"
	"github.com/dmsnap/dmsnap/snapstore"
)

// MaxNameLen bounds a dmsnap name so that the longest device-mapper name
// built from it, "dmsnap-NAME-snapNNNNNNNNNN", fits DM_NAME_LEN (128).
const MaxNameLen = names.MaxLen

// SanitizeName turns a device path into a dmsnap name as the seed named its
// sessions: the base name, with every byte outside [A-Za-z0-9_.-] turned
// into '_' (byte by byte, as the seed's C code did: "é" becomes "__").
// A path with no usable base name ("", "/", ".", "..") gives "dev".
func SanitizeName(devicePath string) string {
	// The rule is the on-disk layout's, so snapstore owns it.
	return snapstore.SanitizeName(devicePath)
}

// ValidateName checks a dmsnap name (given with --name, or made by
// SanitizeName) by the one naming rule, internal/names, which package dm
// applies too: 1 to MaxNameLen bytes of [A-Za-z0-9_.-], not "." or "..",
// not ending in "-real" or "-snap<digits>".
func ValidateName(name string) error {
	if err := names.Validate(name); err != nil {
		return fmt.Errorf("%w; choose another with --name", err)
	}
	return nil
}

// SessionDirName is the directory name of a session started at t:
// <name>_<Unix seconds>, as the seed named its sessions.
func SessionDirName(name string, t time.Time) string {
	return snapstore.SessionID(name, t)
}

// maxSecondsAhead bounds the search for a free session name.
const maxSecondsAhead = 100000

// FreeSessionDir returns <store>/<name>_<t in Unix seconds>, or the next
// free second when that name is taken. taken reports whether a path is in
// use (nil: it exists on disk); it lets a caller also count directories it
// has planned but not created yet.
func FreeSessionDir(store, name string, t time.Time, taken func(string) (bool, error)) (string, error) {
	if taken == nil {
		taken = pathExists
	}
	for i := 0; i < maxSecondsAhead; i++ {
		dir := filepath.Join(store, SessionDirName(name, t.Add(time.Duration(i)*time.Second)))
		used, err := taken(dir)
		if err != nil {
			return "", err
		}
		if !used {
			return dir, nil
		}
	}
	return "", fmt.Errorf("no free session directory name for %s in %s after %s", name, store, t.UTC().Format(time.RFC3339))
}

func pathExists(p string) (bool, error) {
	_, err := os.Lstat(p)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, err
}

// ValidateSessionID checks a session ID given by a user: a plain directory
// name, not empty, not "." or "..", with no '/' and no NUL byte.
func ValidateSessionID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("empty session ID: %w", ErrInvalidSessionID)
	case id == "." || id == "..":
		return fmt.Errorf("session ID %q: %w", id, ErrInvalidSessionID)
	case strings.ContainsRune(id, '/'):
		return fmt.Errorf("session ID %q contains '/': give the directory name only, as `dmsnap sessions list` shows it: %w", id, ErrInvalidSessionID)
	case strings.ContainsRune(id, 0):
		return fmt.Errorf("session ID %q contains a NUL byte: %w", id, ErrInvalidSessionID)
	}
	return nil
}

// ResolveSessionDir returns the directory of session id in store, with
// symlinks resolved. The session directory must be a directory directly
// inside the store once resolved: a session directory that is a symlink
// pointing outside the store is refused (ErrInvalidSessionID), so an ID can
// never make dmsnap read from or write to an arbitrary place.
func ResolveSessionDir(store, id string) (string, error) {
	if err := ValidateSessionID(id); err != nil {
		return "", err
	}
	root, err := filepath.EvalSymlinks(store)
	if err != nil {
		return "", fmt.Errorf("store %s: %w", store, err)
	}
	root, err = filepath.Abs(root)
	if err != nil {
		return "", err
	}
	dir, err := filepath.EvalSymlinks(filepath.Join(root, id))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("session %s: no such session in %s; `dmsnap sessions list` shows them: %w", id, store, err)
		}
		return "", fmt.Errorf("session %s: %w", id, err)
	}
	if filepath.Dir(dir) != root {
		return "", fmt.Errorf("session %s resolves to %s, outside the store %s: refused: %w", id, dir, store, ErrInvalidSessionID)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return "", fmt.Errorf("session %s: %w", id, err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("session %s: %s is not a directory: %w", id, dir, ErrInvalidSessionID)
	}
	return dir, nil
}
