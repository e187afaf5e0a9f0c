package session

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ErrInsecureStore: the store, or a directory above it, can be written by
// users other than its owner, who is not root (or the user running dmsnap).
// Whoever can write there can plant a session directory whose pre-images a
// restore then writes onto the device, or swap a COW file under a live
// snapshot; dmsnap refuses such a store, as sshd refuses a key file with
// loose permissions.
var ErrInsecureStore = errors.New("insecure store")

// InsecureStoreError names the directory at fault and the fix.
type InsecureStoreError struct {
	Store string // the store asked for
	Dir   string // the directory at fault (the store or one above it)
	Mode  uint32 // permission bits, with the sticky bit (0o1000)
	UID   uint32
	Why   string // "writable by group and others", "owned by uid 1000", ...
	Fix   string // the command that fixes it
}

func (e *InsecureStoreError) Error() string {
	what := "the store " + e.Dir
	if e.Dir != e.Store {
		what = fmt.Sprintf("%s, a directory above the store %s,", e.Dir, e.Store)
	}
	return fmt.Sprintf("refusing the store %s: %s is %s (mode %#o, owner uid %d): anyone who can write there can plant sessions that a restore would write onto the device; fix it with `%s`",
		e.Store, what, e.Why, e.Mode, e.UID, e.Fix)
}

func (e *InsecureStoreError) Unwrap() error { return ErrInsecureStore }

// CheckStore refuses a store that users other than root (or the user
// running dmsnap) could write to: the store directory must be owned by one
// of them and not writable by group or others; so must every directory
// above it, except that a sticky directory writable by all (/tmp) is fine
// above the store, since nobody can rename or remove what another user put
// in it. A store that does not exist yet passes (it is made with mode
// 0755); symlinks are followed, so the directories checked are the real
// ones.
func CheckStore(store string) error {
	abs, err := filepath.Abs(store)
	if err != nil {
		return err
	}
	real, err := filepath.EvalSymlinks(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store %s: %w", store, err)
	}
	euid := uint32(os.Geteuid())
	for dir, first := real, true; ; dir, first = filepath.Dir(dir), false {
		var st unix.Stat_t
		if err := unix.Stat(dir, &st); err != nil {
			return fmt.Errorf("store %s: %w", store, &fs.PathError{Op: "stat", Path: dir, Err: err})
		}
		mode := st.Mode & 0o7777
		sticky := mode&unix.S_ISVTX != 0
		bad := &InsecureStoreError{Store: store, Dir: dir, Mode: mode, UID: st.Uid}
		switch {
		case st.Uid != 0 && st.Uid != euid:
			bad.Why = fmt.Sprintf("owned by uid %d, neither root nor you", st.Uid)
			bad.Fix = "chown root " + dir
			return bad
		case mode&0o022 != 0 && (first || !sticky):
			bad.Why = "writable by group or others"
			if first && sticky {
				bad.Why += " (the sticky bit does not make a store safe: others can still add sessions)"
			}
			bad.Fix = "chmod go-w " + dir
			return bad
		}
		if dir == "/" || dir == filepath.Dir(dir) {
			return nil
		}
	}
}
