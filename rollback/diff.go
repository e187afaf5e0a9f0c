package rollback

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"
)

// What a session changed: the files of the view before it and of the view
// after it (before the next session, or the armed session's view: the
// device as the newest closed session left it), compared read-only.

// DiffEntry is one path that differs.
type DiffEntry struct {
	Path   string   `json:"path"`
	Change string   `json:"change"` // "added", "deleted" or "modified"
	Type   string   `json:"type"`   // "file", "dir", "symlink", "other"
	Before int64    `json:"size_before"`
	After  int64    `json:"size_after"`
	What   []string `json:"what,omitempty"` // modified: content, type, mode, owner, target
}

// DiffResult is what Diff found: the changes from the state before From to
// the state before To.
type DiffResult struct {
	Name    string      `json:"name"`
	From    string      `json:"from"`
	To      string      `json:"to"`
	ToArmed bool        `json:"to_armed"` // To is the armed session: the state the newest closed one left
	Entries []DiffEntry `json:"entries"`
}

// Diff lists the files changed between the state before session id and
// the state before session to ("": the session after id, which is the
// armed one when id is the newest closed session) — what id and every
// session up to to changed. Both views are mounted read-only at once
// (opened and closed again when they were not open), which a btrfs refuses
// (two filesystems of one fsid): that is said.
func Diff(ctx context.Context, cfg Config, id, to string) (*DiffResult, error) {
	r, err := Open(cfg, "", id)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if r.Active == nil {
		return nil, fmt.Errorf("%s is not activated: diff reads views, which are stacked over dmsnap-%s-real (dmsnap activate %s first)", r.Name, r.Name, r.Device)
	}
	sessions, err := r.Sessions()
	if err != nil {
		return nil, err
	}
	i, err := r.Find(sessions, id)
	if err != nil {
		return nil, err
	}
	res := &DiffResult{Name: r.Name, From: id, Entries: []DiffEntry{}}
	armedID := ""
	if cur := r.Active.Current(); cur != nil && cur.Dir != "" {
		armedID = filepath.Base(cur.Dir)
	}
	switch {
	case to == "" && i+1 < len(sessions):
		to = sessions[i+1].ID
	case to == "" || to == armedID:
		if armedID == "" {
			return nil, fmt.Errorf("%s has no armed session now (run dmsnap watch, or dmsnap attach %s)", r.Name, r.Device)
		}
		to, res.ToArmed = armedID, true
	default:
		j, err := r.Find(sessions, to)
		if err != nil {
			return nil, err
		}
		if j <= i {
			return nil, fmt.Errorf("session %s is not after %s: give the older session first", to, id)
		}
	}
	res.To = to
	r.Close()

	before, undoBefore, err := mountedView(ctx, cfg, id, "diff")
	if err != nil {
		return nil, err
	}
	after, undoAfter, err := mountedView(ctx, cfg, to, "diff")
	if err != nil {
		return nil, errors.Join(err, undoBefore())
	}
	res.Entries, err = diffTrees(before, after)
	return res, errors.Join(err, undoAfter(), undoBefore())
}

// treeEntry is what diffTrees compares of a path.
type treeEntry struct {
	st     unix.Stat_t
	target string // symbolic link
}

func walkTree(root string) (map[string]treeEntry, error) {
	out := map[string]treeEntry{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		var e treeEntry
		if err := unix.Lstat(p, &e.st); err != nil {
			return &fs.PathError{Op: "lstat", Path: p, Err: err}
		}
		if e.st.Mode&unix.S_IFMT == unix.S_IFLNK {
			e.target, _ = os.Readlink(p)
		}
		out["/"+rel] = e
		return nil
	})
	return out, err
}

func kind(m uint32) string {
	switch m & unix.S_IFMT {
	case unix.S_IFREG:
		return "file"
	case unix.S_IFDIR:
		return "dir"
	case unix.S_IFLNK:
		return "symlink"
	}
	return "other"
}

// diffTrees compares the trees at a and b: paths only in b are added, only
// in a deleted; a path in both is modified when its type, content, mode,
// owner or link target differ (a directory's own times and size, which
// follow its entries, are not a change of it).
func diffTrees(a, b string) ([]DiffEntry, error) {
	before, err := walkTree(a)
	if err != nil {
		return nil, err
	}
	after, err := walkTree(b)
	if err != nil {
		return nil, err
	}
	var out []DiffEntry
	for p, x := range before {
		y, ok := after[p]
		if !ok {
			out = append(out, DiffEntry{Path: p, Change: "deleted", Type: kind(x.st.Mode), Before: x.st.Size})
			continue
		}
		var what []string
		switch {
		case x.st.Mode&unix.S_IFMT != y.st.Mode&unix.S_IFMT:
			what = append(what, "type")
		case x.st.Mode&unix.S_IFMT == unix.S_IFREG:
			same, err := sameContent(filepath.Join(a, p), filepath.Join(b, p), &x.st, &y.st)
			if err != nil {
				return nil, err
			}
			if !same {
				what = append(what, "content")
			}
		case x.target != y.target:
			what = append(what, "target")
		}
		if x.st.Mode&0o7777 != y.st.Mode&0o7777 {
			what = append(what, "mode")
		}
		if x.st.Uid != y.st.Uid || x.st.Gid != y.st.Gid {
			what = append(what, "owner")
		}
		if len(what) > 0 {
			out = append(out, DiffEntry{Path: p, Change: "modified", Type: kind(y.st.Mode), Before: x.st.Size, After: y.st.Size, What: what})
		}
	}
	for p, y := range after {
		if _, ok := before[p]; !ok {
			out = append(out, DiffEntry{Path: p, Change: "added", Type: kind(y.st.Mode), After: y.st.Size})
		}
	}
	slices.SortFunc(out, func(x, y DiffEntry) int {
		switch {
		case x.Path < y.Path:
			return -1
		case x.Path > y.Path:
			return 1
		}
		return 0
	})
	return out, nil
}

// sameContent compares two regular files: by size, then, unless their
// modification and change times are the same too (the same inode, never
// written between the two states), byte for byte.
func sameContent(a, b string, x, y *unix.Stat_t) (bool, error) {
	if x.Size != y.Size {
		return false, nil
	}
	if x.Ino == y.Ino && x.Mtim == y.Mtim && x.Ctim == y.Ctim {
		return true, nil
	}
	fa, err := os.Open(a)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return false, nil
		}
		if ea == io.EOF || ea == io.ErrUnexpectedEOF {
			return eb == io.EOF || eb == io.ErrUnexpectedEOF, nil
		}
		if ea != nil {
			return false, ea
		}
		if eb != nil {
			return false, eb
		}
	}
}
