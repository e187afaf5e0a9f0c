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

// viewMountBase is where RestoreFiles and Diff mount the views they need.
const viewMountBase = "/run/dmsnap"

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
		for _, other := range rels[:i] {
			if rel == other || strings.HasPrefix(rel, other+"/") || strings.HasPrefix(other, rel+"/") {
				return nil, fmt.Errorf("%s and %s overlap: name each path once (a directory brings what is in it)", other, rel)
			}
		}
		rels[i] = rel
		if _, err := os.Lstat(filepath.Join(to, rel)); err == nil {
			return nil, fmt.Errorf("%s exists: a file-level restore overwrites nothing (move it away, or choose another --to)", filepath.Join(to, rel))
		} else if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, unix.ENOTDIR) {
			return nil, err
		}
	}
	root, undo, err := mountedView(ctx, cfg, id, "files")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(to, 0o700); err != nil {
		return nil, errors.Join(err, undo())
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
		// Parents the copy needs are made for root only: the files may
		// come from a directory others could not read.
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
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

// unmountView unmounts the view of session id (with unmount; without, the
// record only) and forgets its mount point, leaving it open, under the
// state lock.
func unmountView(ctx context.Context, cfg Config, id string, unmount bool) error {
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
	if !unmount {
		vs[i].Mount = ""
		return session.SaveViews(cfg.State, vs)
	}
	if err := unix.Unmount(vs[i].Mount, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s: %w", vs[i].Mount, err)
	}
	vs[i].Mount = ""
	return session.SaveViews(cfg.State, vs)
}

// mountedView returns where the view of session id is mounted: where
// sessions mount put it, or a directory under viewMountBase/<what> it is
// mounted on now. undo puts the view back as it was found: closed, or open
// and not mounted (nothing to do for the user's mount).
func mountedView(ctx context.Context, cfg Config, id, what string) (string, func() error, error) {
	vs, err := session.LoadViews(cfg.State)
	if err != nil {
		return "", nil, err
	}
	i := findView(vs, id)
	if i >= 0 && vs[i].Mount != "" && !vs[i].Opening {
		if mountedHere(vs[i]) {
			return vs[i].Mount, func() error { return nil }, nil
		}
		// Recorded as mounted, but that directory holds something else
		// now (unmounted by hand): forget the record, never unmount what
		// is there, mount the view afresh.
		if err := unmountView(ctx, cfg, id, false); err != nil {
			return "", nil, err
		}
	}
	wasOpen := i >= 0
	base := filepath.Join(viewMountBase, what)
	if err := os.MkdirAll(base, 0o700); err != nil {
		return "", nil, err
	}
	root, err := os.MkdirTemp(base, id+"-")
	if err != nil {
		return "", nil, err
	}
	if _, _, err := MountView(ctx, cfg, id, root); err != nil {
		os.Remove(root)
		if !wasOpen {
			if vs, lerr := session.LoadViews(cfg.State); lerr == nil && findView(vs, id) >= 0 {
				_, cerr := CloseView(ctx, cfg, id)
				err = errors.Join(err, cerr)
			}
		}
		return "", nil, err
	}
	// Put back even when the caller's context was cancelled (Ctrl-C): a
	// view must not stay mounted under /run/dmsnap.
	uctx := context.WithoutCancel(ctx)
	undo := func() error {
		var err error
		if wasOpen {
			err = unmountView(uctx, cfg, id, true)
		} else {
			_, err = CloseView(uctx, cfg, id)
		}
		if err == nil {
			err = os.Remove(root)
		}
		return err
	}
	return root, undo, nil
}

// mountedHere reports whether v's recorded mount point is the root of a
// filesystem on v's own device.
func mountedHere(v session.View) bool {
	var dir, dev unix.Stat_t
	if unix.Stat(v.Mount, &dir) != nil || unix.Stat(ViewPath(v), &dev) != nil {
		return false
	}
	return dir.Dev == dev.Rdev
}
