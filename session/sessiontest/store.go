package sessiontest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/dmsnap/dmsnap/session"
)

// Files of a fake session directory.
const (
	StateFile = "state.json"
	COWFile   = "cow.img"
	DataFile  = "blocks.dat"
	MetaFile  = "meta.json"
)

// cowMagic is what the fake kernel writes at the start of a COW it
// attaches, as the real one writes "SnAp".
var cowMagic = []byte("SnAp")

// ErrNotClosed: Convert of a session still armed or open.
var ErrNotClosed = errors.New("session not closed")

// State is the fake state.json.
type State struct {
	Name          string               `json:"name"`
	Phase         session.SessionState `json:"phase"`
	Armed         time.Time            `json:"armed"`
	Mounted       time.Time            `json:"mounted,omitzero"`
	Unmounted     time.Time            `json:"unmounted,omitzero"`
	FSType        string               `json:"fs_type,omitempty"`
	InvalidReason string               `json:"invalid_reason,omitempty"`
	Prealloc      int64                `json:"prealloc,omitempty"` // bytes FillCOW wrote ahead
	Sequence      int                  `json:"sequence,omitempty"`
	Label         string               `json:"label,omitempty"`
	Pinned        bool                 `json:"pinned,omitempty"`
	// What ModelData's Convert writes into a real meta.json.
	DevicePath string `json:"device_path,omitempty"`
	DeviceSize int64  `json:"device_size,omitempty"`
	ChunkSize  uint32 `json:"chunk_size,omitempty"`
}

// Meta is the fake meta.json: the final state of a converted session.
type Meta struct {
	State
	Final string `json:"final"` // "complete" or "invalid"
}

// Store is the fake session store, on a real directory.
type Store struct {
	sys *System
}

var _ session.Store = (*Store)(nil)

func readState(dir string) (State, error) {
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if err != nil {
		return State{}, err
	}
	var s State
	return s, json.Unmarshal(b, &s)
}

func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

func initCOW(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	head := make([]byte, 4)
	if _, err := io.ReadFull(f, head); err != nil {
		return err
	}
	if bytes.Equal(head, make([]byte, 4)) {
		_, err = f.WriteAt(cowMagic, 0)
	} else if !bytes.Equal(head, cowMagic) {
		err = fmt.Errorf("%s: not a COW store", path)
	}
	return err
}

func cowUsed(path string) bool {
	b := make([]byte, 4)
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	_, err = io.ReadFull(f, b)
	return err == nil && bytes.Equal(b, cowMagic)
}

// ArmSession implements session.Store.
func (st *Store) ArmSession(_ context.Context, store string, spec session.ArmSpec) (string, error) {
	var dir string
	err := st.sys.call("ArmSession "+spec.Name, func() error {
		if err := os.MkdirAll(store, 0o755); err != nil {
			return err
		}
		d, err := session.FreeSessionDir(store, spec.Name, spec.Armed, nil)
		if err != nil {
			return err
		}
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
		if err := writeJSON(filepath.Join(d, StateFile), State{Name: spec.Name, Phase: session.SessionArmed, Armed: spec.Armed, Sequence: spec.Sequence,
			DevicePath: spec.DevicePath, DeviceSize: spec.Identity.Size, ChunkSize: spec.ChunkSize}); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(d, COWFile), make([]byte, 4096), 0o600); err != nil {
			return err
		}
		dir = d
		return nil
	})
	return dir, err
}

// COWFile implements session.Store.
func (st *Store) COWFile(dir string) string { return filepath.Join(dir, COWFile) }

// MarkMounted implements session.Store.
func (st *Store) MarkMounted(_ context.Context, dir string, at time.Time, fsType string) (string, error) {
	newDir := dir
	err := st.sys.call("MarkMounted "+dir, func() error {
		s, err := readState(dir)
		if err != nil {
			return err
		}
		if filepath.Base(dir) != session.SessionDirName(s.Name, at) {
			target, err := session.FreeSessionDir(filepath.Dir(dir), s.Name, at, nil)
			if err != nil {
				return err
			}
			if err := os.Rename(dir, target); err != nil {
				return err
			}
			newDir = target
		}
		if s.Phase != session.SessionInvalid {
			s.Phase = session.SessionOpen
		}
		s.Mounted, s.FSType = at, fsType
		return writeJSON(filepath.Join(newDir, StateFile), s)
	})
	return newDir, err
}

func (st *Store) update(call, dir string, fn func(*State)) error {
	return st.sys.call(call+" "+dir, func() error {
		s, err := readState(dir)
		if err != nil {
			return err
		}
		fn(&s)
		return writeJSON(filepath.Join(dir, StateFile), s)
	})
}

// MarkUnmounted implements session.Store.
func (st *Store) MarkUnmounted(_ context.Context, dir string, at time.Time) error {
	return st.update("MarkUnmounted", dir, func(s *State) {
		s.Unmounted = at
		if s.Phase != session.SessionInvalid {
			s.Phase = session.SessionClosing
		}
	})
}

// MarkClosing implements session.Store.
func (st *Store) MarkClosing(_ context.Context, dir string) error {
	return st.update("MarkClosing", dir, func(s *State) {
		if s.Phase != session.SessionInvalid {
			s.Phase = session.SessionClosing
		}
	})
}

// MarkInvalid implements session.Store.
func (st *Store) MarkInvalid(_ context.Context, dir, reason string) error {
	return st.update("MarkInvalid", dir, func(s *State) {
		s.Phase, s.InvalidReason = session.SessionInvalid, reason
	})
}

// Convert implements session.Store: cow.img becomes blocks.dat, meta.json
// is written, state.json removed; each a separate step, restartable.
func (st *Store) Convert(_ context.Context, dir string) error {
	return st.sys.call("Convert "+dir, func() error {
		metaPath := filepath.Join(dir, MetaFile)
		if _, err := os.Stat(metaPath); err == nil {
			return rmState(dir)
		}
		s, err := readState(dir)
		if err != nil {
			return fmt.Errorf("convert %s: %w", dir, err)
		}
		if s.Phase != session.SessionClosing && s.Phase != session.SessionInvalid {
			return fmt.Errorf("convert %s: session is %s: %w", dir, s.Phase, ErrNotClosed)
		}
		cow := filepath.Join(dir, COWFile)
		if st.sys.Kernel.attachedLocked(cow) {
			st.sys.violate("Convert %s while its COW is attached", dir)
			return fmt.Errorf("convert %s: COW still attached", dir)
		}
		if st.sys.data != nil {
			return st.sys.data.convertLocked(dir, s)
		}
		if _, err := os.Stat(cow); err == nil {
			if err := os.Rename(cow, filepath.Join(dir, DataFile)); err != nil {
				return err
			}
		}
		final := "complete"
		if s.Phase == session.SessionInvalid {
			final = "invalid"
		}
		if err := writeJSON(metaPath, Meta{State: s, Final: final}); err != nil {
			return err
		}
		return rmState(dir)
	})
}

func rmState(dir string) error {
	err := os.Remove(filepath.Join(dir, StateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// Discard implements session.Store.
func (st *Store) Discard(_ context.Context, dir string) error {
	return st.sys.call("Discard "+dir, func() error {
		if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if cowUsed(filepath.Join(dir, COWFile)) {
			return fmt.Errorf("discard %s: its COW was used", dir)
		}
		if _, err := os.Stat(filepath.Join(dir, MetaFile)); err == nil {
			return fmt.Errorf("discard %s: a finished session", dir)
		}
		return os.RemoveAll(dir)
	})
}

// Pending implements session.Store.
func (st *Store) Pending(_ context.Context, store string) ([]session.PendingSession, error) {
	ents, err := os.ReadDir(store)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []session.PendingSession
	for _, e := range ents {
		dir := filepath.Join(store, e.Name())
		if !e.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, MetaFile)); err == nil {
			continue
		}
		s, err := readState(dir)
		if err != nil {
			continue
		}
		out = append(out, session.PendingSession{
			Dir: dir, Name: s.Name, Armed: s.Armed, Phase: s.Phase, COWUsed: cowUsed(filepath.Join(dir, COWFile)),
		})
	}
	return out, nil
}

// RestorePoints implements session.Store: the converted sessions of name
// after its newest invalid one.
func (st *Store) RestorePoints(_ context.Context, store, name string) (int, error) {
	ents, err := os.ReadDir(store)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	type done struct {
		seq   int
		final string
	}
	var all []done
	for _, e := range ents {
		if m, err := ReadMeta(filepath.Join(store, e.Name())); err == nil && m.Name == name {
			all = append(all, done{m.Sequence, m.Final})
		}
	}
	slices.SortFunc(all, func(a, b done) int { return a.seq - b.seq })
	n := 0
	for _, d := range all {
		n++
		if d.final != "complete" {
			n = 0
		}
	}
	return n, nil
}

// LastSequence implements session.Store.
func (st *Store) LastSequence(_ context.Context, store, name string) (int, error) {
	ents, err := os.ReadDir(store)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	last := 0
	for _, e := range ents {
		dir := filepath.Join(store, e.Name())
		s, err := readState(dir)
		if m, merr := ReadMeta(dir); merr == nil {
			s, err = m.State, nil
		}
		if err == nil && s.Name == name {
			last = max(last, s.Sequence)
		}
	}
	return last, nil
}

// Sessions returns the directory names in store, sorted.
func (st *Store) Sessions(store string) []string {
	ents, _ := os.ReadDir(store)
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	slices.Sort(out)
	return out
}

// ReadMeta returns the fake meta.json of a converted session.
func ReadMeta(dir string) (Meta, error) {
	b, err := os.ReadFile(filepath.Join(dir, MetaFile))
	if err != nil {
		return Meta{}, err
	}
	var m Meta
	return m, json.Unmarshal(b, &m)
}

// ReadState returns the fake state.json of an unfinished session.
func ReadState(dir string) (State, error) { return readState(dir) }

var _ session.COWFiller = (*Store)(nil)

// FillCOW implements session.COWFiller: it counts what it "wrote" in
// state.json's Prealloc and returns to. Filling the COW of a session that
// is not armed or open is a violation.
func (st *Store) FillCOW(_ context.Context, dir string, from, to uint64) (uint64, error) {
	err := st.sys.call(fmt.Sprintf("FillCOW %s %d %d", dir, from, to), func() error {
		s, err := readState(dir)
		if err != nil {
			return err
		}
		if s.Phase != session.SessionArmed && s.Phase != session.SessionOpen {
			st.sys.violate("FillCOW %s in phase %s", dir, s.Phase)
		}
		s.Prealloc += int64(to - from)
		return writeJSON(filepath.Join(dir, StateFile), s)
	})
	if err != nil {
		return from, err
	}
	return to, nil
}

// SetMark implements session.Store: in state.json while unfinished (Convert
// carries it into meta.json), in meta.json after.
func (st *Store) SetMark(_ context.Context, dir string, m session.Mark) (session.Marked, error) {
	out := session.Marked{Dir: dir}
	err := st.sys.call("SetMark "+dir, func() error {
		apply := func(s *State) {
			if m.Label != nil {
				s.Label = *m.Label
			}
			if m.Pinned != nil {
				s.Pinned = *m.Pinned
			}
			out.Label, out.Pinned = s.Label, s.Pinned
		}
		metaPath := filepath.Join(dir, MetaFile)
		if meta, err := ReadMeta(dir); err == nil {
			apply(&meta.State)
			return writeJSON(metaPath, meta)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		s, err := readState(dir)
		if err != nil {
			return err
		}
		apply(&s)
		return writeJSON(filepath.Join(dir, StateFile), s)
	})
	return out, err
}
