package snapstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/dmsnap/dmsnap/internal/atomicfile"
	"github.com/dmsnap/dmsnap/internal/names"
	"golang.org/x/sys/unix"
)

// File names inside a session directory (FORMAT.md, "Session directory").
const (
	CowFile = "cow.img"
	// CowTailFile holds the part of a live COW that is not mapped straight
	// to the store's device while cow.img is (dm.Stack.AttachCOW); its
	// data is moved into cow.img before conversion (FORMAT.md, "cow.tail").
	CowTailFile = "cow.tail"
	DataFile    = "blocks.dat"
	MapFile     = "blocks.map"
	CRCFile     = "blocks.crc"
	MetaFile    = "meta.json"
	StateFile   = "state.json"

	// StateFormatVersion is the version of state.json this code writes and
	// the newest it reads.
	StateFormatVersion = 1

	filePerm = 0o644
	dirPerm  = 0o755
)

// Phase is where an unconverted session is in its life (docs/architecture.md, "Sessions").
type Phase string

const (
	PhaseArmed   Phase = "armed"   // COW attached, snapshot live, device not mounted yet
	PhaseOpen    Phase = "open"    // device mounted
	PhaseClosing Phase = "closing" // snapshot being removed / removed; ready for Convert
	PhaseInvalid Phase = "invalid" // the kernel dropped the snapshot or the store filled up
)

// State is state.json: everything Convert needs, written by the session
// package at arming and updated at mount and unmount, so that conversion is
// self-contained and a watcher can finish it after a crash. Convert adds
// its own progress (Layout, Conversion) to it.
type State struct {
	FormatVersion int    `json:"format_version"`
	Name          string `json:"name"` // sanitised device name, the <name> of <name>_<unix seconds>
	Device        Device `json:"device"`
	FsType        string `json:"fs_type,omitempty"`
	ChunkSize     uint32 `json:"chunk_size"` // bytes, as given to the snapshot table
	Phase         Phase  `json:"phase"`
	InvalidReason string `json:"invalid_reason,omitempty"`
	Times         Times  `json:"times"`
	// Sequence is the session's place among its device's sessions (1, 2,
	// ...; 0: not recorded), which orders them where the clock cannot: the
	// times in a directory's name are wall-clock seconds and may go back.
	Sequence int `json:"sequence,omitempty"`
	// Prealloc is how many bytes of cow.img dmsnap wrote with zeros ahead
	// of the kernel: CreateSession at the start (asked for by the caller,
	// then what it did), FillCow more while the session is armed.
	Prealloc int64 `json:"prealloc,omitempty"`
	// Label and Pinned, set while the session is unfinished (SetMark),
	// go into meta.json at conversion.
	Label  string `json:"label,omitempty"`
	Pinned bool   `json:"pinned,omitempty"`

	// Layout is chosen by Convert before it writes anything, so a restart
	// continues the same way.
	Layout string `json:"layout,omitempty"`
	// Conversion is set once blocks.map and blocks.crc are durable.
	Conversion *Conversion `json:"conversion,omitempty"`
}

// Conversion is Convert's checkpoint: what it learnt from cow.img and
// wrote, recorded before cow.img is renamed or its metadata punched out.
type Conversion struct {
	CowValid  bool     `json:"cow_valid"`
	ChunkSize uint32   `json:"chunk_size"` // bytes; the COW header's, which wins over the table's
	Notes     []string `json:"notes,omitempty"`
	Records   int64    `json:"records"`
	LastArea  int64    `json:"last_area"` // last metadata area to punch (-1: none)
	DataEnd   int64    `json:"data_end"`  // size of blocks.dat once finished
	BlocksMap string   `json:"blocks_map_sha256"`
	BlocksCRC string   `json:"blocks_crc_sha256"`
}

func (s *State) check(name string) error {
	bad := func(format string, args ...any) error {
		return formatErr(name, -1, -1, ErrCorrupt, format, args...)
	}
	switch {
	case s.FormatVersion > StateFormatVersion:
		return formatErr(name, -1, -1, ErrUnsupportedVersion,
			"written in state format %d; this dmsnap reads format %d and older: upgrade dmsnap", s.FormatVersion, StateFormatVersion)
	case s.FormatVersion < 1:
		return bad("format_version is missing")
	case s.Name == "":
		return bad("name is empty")
	case s.Device.Size <= 0:
		return bad("device.size %d is not positive", s.Device.Size)
	case s.Sequence < 0:
		return bad("sequence %d is negative", s.Sequence)
	case s.ChunkSize%SectorSize != 0 || ValidChunkSectors(s.ChunkSize/SectorSize) != nil:
		return bad("chunk_size %d bytes is not a power of two between %d and %d", s.ChunkSize, MinChunkSectors*SectorSize, MaxChunkSectors*SectorSize)
	}
	switch s.Phase {
	case PhaseArmed, PhaseOpen, PhaseClosing, PhaseInvalid:
	default:
		return bad("phase %q is unknown", s.Phase)
	}
	return nil
}

// ReadState reads and checks dir/state.json.
func ReadState(dir string) (State, error) {
	name := filepath.Join(dir, StateFile)
	b, err := os.ReadFile(name)
	if err != nil {
		return State{}, err
	}
	return ParseState(b, name)
}

// ParseState decodes and checks the bytes of a state.json; name (its path)
// is what errors name. Every error is a *FormatError (ErrCorrupt, with the
// byte offset of a JSON syntax error, or ErrUnsupportedVersion). Unknown
// keys are ignored, as the version rules (FORMAT.md section 9) allow.
func ParseState(b []byte, name string) (State, error) {
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return State{}, formatErr(name, jsonOffset(err), -1, ErrCorrupt, "%v", err)
	}
	if err := s.check(name); err != nil {
		return State{}, err
	}
	return s, nil
}

// WriteState replaces dir/state.json atomically (written to a temporary
// file in dir, fsync'd, renamed over the old one, directory fsync'd).
func WriteState(dir string, s State) error {
	if s.FormatVersion == 0 {
		s.FormatVersion = StateFormatVersion
	}
	name := filepath.Join(dir, StateFile)
	if err := s.check(name); err != nil {
		return err
	}
	s.Times = s.Times.utc()
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(dir, StateFile, append(b, '\n'))
}

// UpdateState reads dir/state.json, lets fn change it and writes it back
// atomically. The caller serialises updates (the session package holds its
// lock).
func UpdateState(dir string, fn func(*State) error) error {
	s, err := ReadState(dir)
	if err != nil {
		return err
	}
	if err := fn(&s); err != nil {
		return err
	}
	return WriteState(dir, s)
}

// CreateSession arms a session: it makes <store>/<name>_<armed Unix
// seconds> (the next free second when taken), writes state.json (phase
// armed) and creates cow.img, sized by Geometry.CowFileSize and all zeros,
// so the kernel sees a new store. It returns the directory. s must carry the
// name, device, chunk size and armed time; with s.Prealloc, up to that many
// bytes at the start of cow.img are written with zeros (preallocCow), and
// state.json says how many were.
func CreateSession(store string, s State) (string, error) {
	s.Phase = PhaseArmed
	s.FormatVersion = StateFormatVersion
	if s.Times.Armed.IsZero() {
		return "", errors.New("create session: armed time not set")
	}
	if err := s.check(StateFile); err != nil {
		return "", fmt.Errorf("create session: %w", err)
	}
	if err := os.MkdirAll(store, dirPerm); err != nil {
		return "", err
	}
	dir, err := mkdirSession(store, s.Name, s.Times.Armed)
	if err != nil {
		return "", err
	}
	if err := WriteState(dir, s); err != nil {
		return "", err
	}
	g := Geometry{ChunkSectors: s.ChunkSize / SectorSize}
	cow := filepath.Join(dir, CowFile)
	if err := createCowFile(cow, g.CowFileSize(s.Device.Size)); err != nil {
		return "", err
	}
	if s.Prealloc > 0 {
		if n := preallocCow(cow, s.Prealloc); n != s.Prealloc {
			s.Prealloc = n
			if err := WriteState(dir, s); err != nil {
				return "", err
			}
		}
	}
	return dir, syncDir(dir)
}

// createCowFile makes a sparse file of size bytes whose first chunk reads
// as zeros. O_EXCL: an old COW file must never be reused, since a stale
// header would bring its exceptions back.
func createCowFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// MarkMounted records the mount: phase open, mount time, filesystem type,
// and renames the directory to <name>_<mount Unix seconds> (the next free
// second when taken), as the seed named its sessions. It returns the new
// directory. The loop device keeps cow.img open across the rename.
func MarkMounted(dir string, at time.Time, fsType string) (string, error) {
	s, err := ReadState(dir)
	if err != nil {
		return "", err
	}
	newDir := dir
	if id, ok := parseSessionID(filepath.Base(dir)); !ok || id.name != s.Name || id.unix != at.Unix() {
		newDir, err = renameSession(dir, s.Name, at)
		if err != nil {
			return "", err
		}
	}
	return newDir, UpdateState(newDir, func(s *State) error {
		s.Phase = PhaseOpen
		s.Times.Mounted = at
		s.FsType = fsType
		return nil
	})
}

// MarkUnmounted records the unmount: phase closing. Convert may run once
// the snapshot device is removed and the loop device detached.
func MarkUnmounted(dir string, at time.Time) error {
	return UpdateState(dir, func(s *State) error {
		s.Times.Unmounted = at
		if s.Phase != PhaseInvalid {
			s.Phase = PhaseClosing
		}
		return nil
	})
}

// MarkClosing records that a session is being closed without an unmount
// (deactivation of a device never mounted, raw writes only).
func MarkClosing(dir string) error {
	return UpdateState(dir, func(s *State) error {
		if s.Phase != PhaseInvalid {
			s.Phase = PhaseClosing
		}
		return nil
	})
}

// MarkInvalid records that the kernel dropped the snapshot (or the store
// filled up). The session is still converted, flagged invalid.
func MarkInvalid(dir string, reason string) error {
	return UpdateState(dir, func(s *State) error {
		s.Phase = PhaseInvalid
		s.InvalidReason = reason
		return nil
	})
}

// SanitizeName turns a device path into a session name as the seed did: its
// base name with every byte that names.Byte rejects (anything outside
// [A-Za-z0-9_.-]) turned into '_'; "", "." and ".." become "dev".
func SanitizeName(device string) string {
	base := filepath.Base(device)
	if i := len(device) - 1; i >= 0 && device[i] == '/' {
		base = ""
	}
	b := []byte(base)
	for i, c := range b {
		if !names.Byte(c) {
			b[i] = '_'
		}
	}
	if s := string(b); s != "" && s != "." && s != ".." {
		return s
	}
	return "dev"
}

// SessionID is the directory name of a session: <name>_<Unix seconds>.
func SessionID(name string, t time.Time) string {
	return name + "_" + strconv.FormatInt(t.Unix(), 10)
}

// SessionName returns the device name in session ID id (<name>_<Unix
// seconds>), false when id is not of that form.
func SessionName(id string) (string, bool) {
	s, ok := parseSessionID(id)
	return s.name, ok
}

var sessionIDRe = regexp.MustCompile(`^(.+)_([0-9]+)$`)

type sessionID struct {
	name string
	unix int64
}

func parseSessionID(s string) (sessionID, bool) {
	m := sessionIDRe.FindStringSubmatch(s)
	if m == nil {
		return sessionID{}, false
	}
	u, err := strconv.ParseInt(m[2], 10, 64)
	if err != nil {
		return sessionID{}, false
	}
	return sessionID{name: m[1], unix: u}, true
}

// mkdirSession creates <store>/<name>_<t>, moving on a second at a time
// while the name is taken.
func mkdirSession(store, name string, t time.Time) (string, error) {
	for i := 0; i < 100000; i++ {
		dir := filepath.Join(store, SessionID(name, t.Add(time.Duration(i)*time.Second)))
		err := os.Mkdir(dir, dirPerm)
		if err == nil {
			return dir, syncDir(store)
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", err
		}
	}
	return "", fmt.Errorf("no free session name for %s after %s in %s", name, t.UTC().Format(time.RFC3339), store)
}

// renameSession renames dir to <store>/<name>_<t>, or the next free second.
// RENAME_NOREPLACE claims the name atomically; where the filesystem does
// not support it, the target is created first (claiming the name) and the
// directory renamed over that empty one.
func renameSession(dir, name string, t time.Time) (string, error) {
	store := filepath.Dir(dir)
	for i := 0; i < 100000; i++ {
		target := filepath.Join(store, SessionID(name, t.Add(time.Duration(i)*time.Second)))
		if target == dir {
			return dir, nil // already named for the first free second
		}
		err := unix.Renameat2(unix.AT_FDCWD, dir, unix.AT_FDCWD, target, unix.RENAME_NOREPLACE)
		switch {
		case err == nil:
			return target, syncDir(store)
		case errors.Is(err, unix.EEXIST):
			continue
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOSYS):
			target, err := mkdirSession(store, name, t)
			if err != nil {
				return "", err
			}
			if err := unix.Rename(dir, target); err != nil {
				os.Remove(target)
				return "", &os.LinkError{Op: "rename", Old: dir, New: target, Err: err}
			}
			return target, syncDir(store)
		default:
			return "", &os.LinkError{Op: "rename", Old: dir, New: target, Err: err}
		}
	}
	return "", fmt.Errorf("no free session name for %s after %s in %s", name, t.UTC().Format(time.RFC3339), store)
}

func (t Times) utc() Times {
	u := func(x time.Time) time.Time {
		if x.IsZero() {
			return x
		}
		return x.UTC()
	}
	return Times{Armed: u(t.Armed), Mounted: u(t.Mounted), Unmounted: u(t.Unmounted), Closed: u(t.Closed)}
}

// writeFileAtomic writes dir/name atomically and durably (internal/atomicfile).
func writeFileAtomic(dir, name string, b []byte) error {
	return atomicfile.WriteFile(filepath.Join(dir, name), b, filePerm)
}

func syncDir(dir string) error { return atomicfile.SyncDir(dir) }
