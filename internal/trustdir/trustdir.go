// Package trustdir checks the directories dmsnap trusts with what it
// writes onto devices, the store (--store) and the state directory
// (--state): no one but root or the user running dmsnap may be able to
// write to them, to a directory above them, or redirect a symlink on the
// way to them. It returns their real paths, to be used from then on.
package trustdir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrInsecureStore: the store, or a directory above it, can be written by
// users other than its owner, who is not root (or the user running dmsnap);
// or a symlink on the way to it belongs to such a user. Whoever can write
// there can plant a session directory whose pre-images a restore then
// writes onto the device, or swap a COW file under a live snapshot; dmsnap
// refuses such a store, as sshd refuses a key file with loose permissions.
var ErrInsecureStore = errors.New("insecure store")

// ErrInsecureStateDir: the same for the state directory, whose registry
// says which devices dmsnap stacks and where their sessions go, and which
// holds the control password's hash.
var ErrInsecureStateDir = errors.New("insecure state directory")

// InsecureError (ErrInsecureStore or ErrInsecureStateDir) names the
// directory or symlink at fault and the fix.
type InsecureError struct {
	Store string // the store (or state directory) asked for
	Dir   string // the directory at fault (the store or one above it), or the symlink
	Mode  uint32 // permission bits, with the sticky bit (0o1000); 0 for a symlink
	UID   uint32
	Why   string // "writable by group and others", "owned by uid 1000", ...
	Fix   string // the command that fixes it
	// Link is where Dir points when Dir is a symlink, else "".
	Link string
	// StateDir: the state directory (--state) is at fault, not the store.
	StateDir bool
}

func (e *InsecureError) Error() string {
	role, flag, risk := "store", "--store", "plant sessions that a restore would write onto the device"
	if e.StateDir {
		role, flag, risk = "state directory", "--state", "rewrite the registry (which devices dmsnap stacks, where their sessions go) or the control password"
	}
	if e.Link != "" {
		return fmt.Sprintf("refusing the %s %s: %s, a symlink on its path, is %s: its owner chooses where the %s is (it points to %s now) and can %s; give the directory itself (%s DIR), or if %s is where the %s belongs, fix it with `%s`",
			role, e.Store, e.Dir, e.Why, role, e.Link, risk, flag, e.Link, role, e.Fix)
	}
	what := "the " + role + " " + e.Dir
	if e.Dir != e.Store {
		what = fmt.Sprintf("%s, a directory above the %s %s,", e.Dir, role, e.Store)
	}
	return fmt.Sprintf("refusing the %s %s: %s is %s (mode %#o, owner uid %d): anyone who can write there can %s; fix it with `%s`",
		role, e.Store, what, e.Why, e.Mode, e.UID, risk, e.Fix)
}

func (e *InsecureError) Unwrap() error {
	if e.StateDir {
		return ErrInsecureStateDir
	}
	return ErrInsecureStore
}

// ResolveStore checks a store and returns its real absolute path, the one
// to use from then on: a symlink swapped after the check cannot redirect
// what follows. Refused (ErrInsecureStore) are a store that users other
// than root (or the user running dmsnap) could write to, one under such a
// directory, and one reached through a symlink that such a user owns:
//
//   - every symlink on the way must be owned by root or the user running
//     dmsnap, since its owner chooses where it leads;
//   - the store directory must be owned by one of them and not writable by
//     group or others; so must every directory above it, except that a
//     sticky directory writable by all (/tmp) is fine above the store,
//     since nobody can rename or remove what another user put in it.
//
// A store that does not exist yet passes when the directories above it do
// (its users make it with mode 0755), and the path it will have is
// returned. Where it would be made in a directory others can write to
// (/tmp), it is made here, mode 0755, and checked: someone else could
// otherwise put a symlink of theirs in its place before its users make it.
func ResolveStore(store string) (string, error) { return trusted{path: store}.resolve() }

// ResolveStateDir checks the state directory (--state) as ResolveStore
// checks a store, and returns its real absolute path (ErrInsecureStateDir
// when refused). A missing one is handled the same way: its users make it
// with mode 0755.
func ResolveStateDir(dir string) (string, error) { return trusted{path: dir, stateDir: true}.resolve() }

// maxSymlinks bounds the symlinks followed, as the kernel does (ELOOP).
const maxSymlinks = 40

// trusted is a directory being checked: the store, or the state
// directory.
type trusted struct {
	path     string // as given
	stateDir bool
}

func (t trusted) role() string {
	if t.stateDir {
		return "state directory"
	}
	return "store"
}

// errorf is an error about t that is not a matter of trust (a stat that
// failed, a loop of symlinks).
func (t trusted) errorf(format string, a ...any) error {
	return fmt.Errorf("%s %s: %w", t.role(), t.path, fmt.Errorf(format, a...))
}

func (t trusted) insecure(dir string, st *unix.Stat_t) *InsecureError {
	return &InsecureError{Store: t.path, Dir: dir, Mode: st.Mode & 0o7777, UID: st.Uid, StateDir: t.stateDir}
}

func (t trusted) resolve() (string, error) {
	for made := false; ; made = true {
		real, missing, err := t.walk()
		if err != nil {
			return "", err
		}
		if err := t.checkDirs(real, missing == nil); err != nil {
			return "", err
		}
		if missing == nil {
			return real, nil
		}
		if slices.Contains(missing, "..") {
			return "", t.errorf("%s does not exist", filepath.Join(real, missing[0]))
		}
		var st unix.Stat_t
		if err := unix.Lstat(real, &st); err != nil {
			return "", t.errorf("%w", &fs.PathError{Op: "lstat", Path: real, Err: err})
		}
		if st.Mode&0o022 == 0 {
			// Nobody else can make the missing part first.
			return filepath.Join(append([]string{real}, missing...)...), nil
		}
		if made {
			return "", t.errorf("%s vanished while being made; try again", filepath.Join(real, missing[0]))
		}
		// A sticky directory others can write to (checkDirs refused any
		// other): make the missing part now, one directory at a time (mkdir
		// never follows a symlink it finds in its place), and check again
		// what is there.
		dir := real
		for _, c := range missing {
			dir = filepath.Join(dir, c)
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return "", t.errorf("%w", err)
			}
		}
	}
}

// walk resolves the path one name at a time, as the kernel does,
// following symlinks and refusing one owned by anyone but root or the
// effective user. It returns the real path of the longest part that
// exists, and the names after it that do not (nil when all exist).
func (t trusted) walk() (string, []string, error) {
	// Not filepath.Abs: it cleans "link/.." lexically to the link's
	// directory, where the kernel goes to the parent of the link's target.
	abs := t.path
	if !filepath.IsAbs(abs) {
		wd, err := os.Getwd()
		if err != nil {
			return "", nil, t.errorf("%w", err)
		}
		abs = wd + "/" + abs
	}
	euid := uint32(os.Geteuid())
	todo := strings.Split(abs, "/")
	cur, links := "/", 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur) // cur holds no symlinks: ".." is its parent
			continue
		}
		next := filepath.Join(cur, c)
		var st unix.Stat_t
		err := unix.Lstat(next, &st)
		if errors.Is(err, unix.ENOENT) {
			var missing []string
			for _, m := range append([]string{c}, todo...) {
				if m != "" && m != "." {
					missing = append(missing, m)
				}
			}
			return cur, missing, nil
		}
		if err != nil {
			return "", nil, t.errorf("%w", &fs.PathError{Op: "lstat", Path: next, Err: err})
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			cur = next
		case unix.S_IFLNK:
			target, err := os.Readlink(next)
			if err != nil {
				return "", nil, t.errorf("%w", err)
			}
			if st.Uid != 0 && st.Uid != euid {
				bad := t.insecure(next, &st)
				bad.Mode, bad.Link = 0, target
				bad.Why, bad.Fix = fmt.Sprintf("owned by uid %d, neither root nor you", st.Uid), "chown -h root "+next
				return "", nil, bad
			}
			if links++; links > maxSymlinks {
				return "", nil, t.errorf("%w", &fs.PathError{Op: "resolve", Path: next, Err: unix.ELOOP})
			}
			if filepath.IsAbs(target) {
				cur = "/"
			}
			todo = append(strings.Split(target, "/"), todo...)
		default:
			return "", nil, t.errorf("%s is not a directory", next)
		}
	}
	return cur, nil, nil
}

// checkDirs checks real, the real path of the store (whole when it
// exists, else the part that does) and every directory above it.
func (t trusted) checkDirs(real string, exists bool) error {
	euid := uint32(os.Geteuid())
	for dir, first := real, exists; ; dir, first = filepath.Dir(dir), false {
		var st unix.Stat_t
		if err := unix.Lstat(dir, &st); err != nil {
			return t.errorf("%w", &fs.PathError{Op: "lstat", Path: dir, Err: err})
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			// Was a directory a moment ago, on the walk.
			return t.errorf("%s changed while being checked; try again", dir)
		}
		mode := st.Mode & 0o7777
		sticky := mode&unix.S_ISVTX != 0
		bad := t.insecure(dir, &st)
		switch {
		case st.Uid != 0 && st.Uid != euid:
			bad.Why = fmt.Sprintf("owned by uid %d, neither root nor you", st.Uid)
			bad.Fix = "chown root " + dir
			return bad
		case mode&0o022 != 0 && (first || !sticky):
			bad.Why = "writable by group or others"
			if first && sticky {
				bad.Why += " (the sticky bit does not make a " + t.role() + " safe: others can still add files)"
			}
			bad.Fix = "chmod go-w " + dir
			return bad
		}
		if dir == "/" {
			return nil
		}
	}
}
