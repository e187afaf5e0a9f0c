package rollback

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/internal/treecopy"
	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

// A file-level restore copies files and directories as they were before a
// session out of a read-only view of the device (MountView), leaving the
// device alone: the everyday "I deleted a file" restore.

// FileCopy is one path a file-level restore copied.
type FileCopy struct {
	Path string `json:"path"` // inside the device's filesystem
	To   string `json:"to"`   // where the copy is
}

// FilesResult is what RestoreFiles did.
type FilesResult struct {
	Session string     `json:"session"`
	Name    string     `json:"name"`
	Copied  []FileCopy `json:"copied"`
	Files   int        `json:"files"`
	Dirs    int        `json:"dirs"`
	Links   int        `json:"symlinks"`
	Hard    int        `json:"hard_links"`
	Nodes   int        `json:"nodes"`
	Bytes   int64      `json:"bytes"`
	Skipped []string   `json:"skipped"` // sockets, which cannot be copied
	// Lost are the extended attributes DIR's filesystem does not take:
	// "attribute on path".
	Lost []string `json:"xattrs_not_kept"`
}

// filesMountBase is where RestoreFiles mounts a view it opens itself.
const filesMountBase = "/run/dmsnap/files"

// RestoreFiles copies paths (inside the filesystem of the device session
// id belongs to) as they were before session id into the directory to,
// each to to/<path>, with ownership, modes, times and extended attributes
// (package treecopy). Nothing in to is overwritten: a path whose copy
// would land on something that exists is refused before anything is
// copied. The view of the session is used mounted where it is, or mounted
// for the copy and put back as it was found (closed, or open and not
// mounted).
func RestoreFiles(ctx context.Context, cfg Config, id string, paths []string, to string) (*FilesResult, error) {
	if len(paths) == 0 {
		return nil, errors.New("no path to restore")
	}
	to, err := filepath.Abs(to)
	if err != nil {
		return nil, err
	}
	rels := make([]string, len(paths))
	for i, p := range paths {
		rel := filepath.Clean("/" + p)
		if rel == "/" {
			return nil, fmt.Errorf("%q is the whole filesystem: restore the device, or name what is in it", p)
		}
		rels[i] = rel
		if _, err := os.Lstat(filepath.Join(to, rel)); err == nil {
			return nil, fmt.Errorf("%s exists: a file-level restore overwrites nothing (move it away, or choose another --to)", filepath.Join(to, rel))
		} else if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, unix.ENOTDIR) {
			return nil, err
		}
	}
	vs, err := session.LoadViews(cfg.State)
	if err != nil {
		return nil, err
	}
	var root string
	var undo func() error
	if i := findView(vs, id); i >= 0 && vs[i].Mount != "" && !vs[i].Opening {
		root = vs[i].Mount // mounted by sessions mount: used as it is
		undo = func() error { return nil }
	} else {
		wasOpen := i >= 0
		if err := os.MkdirAll(filesMountBase, 0o700); err != nil {
			return nil, err
		}
		root, err = os.MkdirTemp(filesMountBase, id+"-")
		if err != nil {
			return nil, err
		}
		if _, _, err := MountView(ctx, cfg, id, root); err != nil {
			os.Remove(root)
			return nil, err
		}
		undo = func() error {
			var err error
			if wasOpen {
				err = unmountView(ctx, cfg, id)
			} else {
				_, err = CloseView(ctx, cfg, id)
			}
			if err == nil {
				err = os.Remove(root)
			}
			return err
		}
	}
	res, err := copyOut(root, rels, to)
	if err == nil {
		res.Session = id
		res.Name, _ = snapstore.SessionName(id)
	}
	if uerr := undo(); uerr != nil {
		err = errors.Join(err, fmt.Errorf("putting the view of %s back as it was: %w", id, uerr))
	}
	return res, err
}

// copyOut copies each rel from the tree at root to to/rel.
func copyOut(root string, rels []string, to string) (*FilesResult, error) {
	res := &FilesResult{Copied: []FileCopy{}, Skipped: []string{}, Lost: []string{}}
	srcs := make([]string, len(rels))
	for i, rel := range rels {
		src, err := treecopy.Resolve(root, rel)
		if err != nil {
			return res, fmt.Errorf("%s before the session: %w", rel, err)
		}
		srcs[i] = src
	}
	var st treecopy.Stats
	for i, rel := range rels {
		dst := filepath.Join(to, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return res, err
		}
		if err := treecopy.Copy(srcs[i], dst, &st); err != nil {
			return res, fmt.Errorf("copy %s: %w", rel, err)
		}
		res.Copied = append(res.Copied, FileCopy{Path: rel, To: dst})
	}
	for _, s := range st.Skipped {
		res.Skipped = append(res.Skipped, strings.TrimPrefix(s, root))
	}
	res.Lost = append(res.Lost, st.Lost...)
	res.Files, res.Dirs, res.Links, res.Hard, res.Nodes, res.Bytes = st.Files, st.Dirs, st.Symlinks, st.HardLinks, st.Nodes, st.Bytes
	return res, nil
}

// unmountView unmounts the view of session id and forgets its mount point,
// leaving it open, under the state lock.
func unmountView(ctx context.Context, cfg Config, id string) error {
	lock, err := cfg.Manager().Lock(ctx)
	if err != nil {
		return err
	}
	defer lock.Release()
	vs, err := session.LoadViews(cfg.State)
	if err != nil {
		return err
	}
	i := findView(vs, id)
	if i < 0 || vs[i].Mount == "" {
		return nil
	}
	if err := unix.Unmount(vs[i].Mount, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s: %w", vs[i].Mount, err)
	}
	vs[i].Mount = ""
	return session.SaveViews(cfg.State, vs)
}
