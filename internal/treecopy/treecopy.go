// Package treecopy copies files and directory trees out of a mounted file
// system with everything that describes them: content, ownership, mode
// (set-id and sticky bits too), access and modification times, extended
// attributes (ACLs and capabilities included), symbolic links as links,
// hard links as links, device nodes and FIFOs as nodes. It is what a
// file-level restore copies out of a read-only view with.
//
// The path asked for is resolved inside the tree's root and never leaves
// it (openat2 RESOLVE_IN_ROOT: "..", and absolute symbolic links, stay in
// the root; no other mount is crossed); below it nothing is followed.
package treecopy

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Stats counts what Copy copied.
type Stats struct {
	Files, Dirs, Symlinks, HardLinks, Nodes int
	Bytes                                   int64
	// Skipped lists what cannot be copied (sockets), by source path.
	Skipped []string
	// Lost lists the extended attributes the destination's filesystem
	// does not take (a tmpfs before Linux 6.6 takes no user.* ones):
	// "attribute on path". The rest of the entry is copied.
	Lost []string
}

// Resolve returns the path of rel inside the tree at root, resolved there
// (RESOLVE_IN_ROOT, without crossing into another mount): a symbolic link
// on the way, absolute or not, is followed inside root; the last component
// is not followed. A path that does not exist is an error naming rel.
func Resolve(root, rel string) (string, error) {
	rootFd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", &fs.PathError{Op: "open", Path: root, Err: err}
	}
	defer unix.Close(rootFd)
	fd, err := unix.Openat2(rootFd, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	if err != nil {
		return "", &fs.PathError{Op: "resolve", Path: rel, Err: err}
	}
	defer unix.Close(fd)
	p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "", err
	}
	if p != root && !inside(root, p) {
		return "", fmt.Errorf("%s resolves to %s, outside %s", rel, p, root)
	}
	return p, nil
}

func inside(root, p string) bool {
	r, err := filepath.Rel(root, p)
	return err == nil && r != ".." && !filepath.IsAbs(r) && (len(r) < 3 || r[:3] != "../")
}

// Copy copies src (a file, link, node or directory tree, not followed if
// it is a link) to dst, which must not exist; its parent must. Hard links
// within what is copied stay links. It stops at the first error, leaving
// what it copied.
func Copy(src, dst string, st *Stats) error {
	c := copier{st: st, links: map[[2]uint64]string{}}
	return c.copy(src, dst)
}

type copier struct {
	st    *Stats
	links map[[2]uint64]string // (dev, ino) of a multiply linked file → its copy
}

func (c *copier) copy(src, dst string) error {
	var s unix.Stat_t
	if err := unix.Lstat(src, &s); err != nil {
		return &fs.PathError{Op: "lstat", Path: src, Err: err}
	}
	mode := s.Mode & unix.S_IFMT
	if mode != unix.S_IFDIR && s.Nlink > 1 {
		key := [2]uint64{s.Dev, s.Ino}
		if first, ok := c.links[key]; ok {
			if err := os.Link(first, dst); err != nil {
				return err
			}
			c.st.HardLinks++
			return nil
		}
		c.links[key] = dst
	}
	switch mode {
	case unix.S_IFDIR:
		if err := os.Mkdir(dst, 0o700); err != nil {
			return err
		}
		ents, err := os.ReadDir(src)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if err := c.copy(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
				return err
			}
		}
		c.st.Dirs++
	case unix.S_IFREG:
		n, err := copyFile(src, dst)
		if err != nil {
			return err
		}
		c.st.Files++
		c.st.Bytes += n
	case unix.S_IFLNK:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := os.Symlink(target, dst); err != nil {
			return err
		}
		c.st.Symlinks++
	case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO:
		if err := unix.Mknod(dst, s.Mode&^0o7777|0o600, int(s.Rdev)); err != nil {
			return &fs.PathError{Op: "mknod", Path: dst, Err: err}
		}
		c.st.Nodes++
	default:
		c.st.Skipped = append(c.st.Skipped, src)
		return nil
	}
	return setMeta(src, dst, &s, c.st)
}

// copyFile copies a regular file's bytes to a new file dst.
func copyFile(src, dst string) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// setMeta gives dst the ownership, extended attributes, mode and times of
// src, in that order: a chown clears set-id bits and file capabilities, so
// they come after it.
func setMeta(src, dst string, s *unix.Stat_t, st *Stats) error {
	link := s.Mode&unix.S_IFMT == unix.S_IFLNK
	if err := unix.Lchown(dst, int(s.Uid), int(s.Gid)); err != nil {
		return &fs.PathError{Op: "chown", Path: dst, Err: err}
	}
	if err := copyXattrs(src, dst, link, st); err != nil {
		return err
	}
	if !link {
		if err := unix.Fchmodat(unix.AT_FDCWD, dst, s.Mode&0o7777, 0); err != nil {
			return &fs.PathError{Op: "chmod", Path: dst, Err: err}
		}
	}
	ts := []unix.Timespec{s.Atim, s.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, dst, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "utimes", Path: dst, Err: err}
	}
	return nil
}

// copyXattrs copies every extended attribute of src to dst. A symbolic
// link takes none in the user namespace (the kernel refuses them), so for
// links a refusal is not an error; a file system without extended
// attributes at all has none to copy; one the destination does not support
// is noted in st.Lost.
func copyXattrs(src, dst string, link bool, st *Stats) error {
	names, err := listXattrs(src)
	if errors.Is(err, unix.ENOTSUP) {
		return nil
	}
	if err != nil {
		return &fs.PathError{Op: "listxattr", Path: src, Err: err}
	}
	for _, name := range names {
		val, err := getXattr(src, name)
		if errors.Is(err, unix.ENODATA) {
			continue // removed meanwhile (not on a read-only view)
		}
		if err != nil {
			return &fs.PathError{Op: "getxattr " + name, Path: src, Err: err}
		}
		if err := unix.Lsetxattr(dst, name, val, 0); err != nil {
			if link && (errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOTSUP)) {
				continue
			}
			if errors.Is(err, unix.ENOTSUP) {
				st.Lost = append(st.Lost, name+" on "+dst)
				continue
			}
			return &fs.PathError{Op: "setxattr " + name, Path: dst, Err: err}
		}
	}
	return nil
}

func listXattrs(path string) ([]string, error) {
	for size := 256; ; size *= 4 {
		buf := make([]byte, size)
		n, err := unix.Llistxattr(path, buf)
		if errors.Is(err, unix.ERANGE) && size < 1<<22 {
			continue
		}
		if err != nil {
			return nil, err
		}
		var names []string
		for start, i := 0, 0; i < n; i++ {
			if buf[i] == 0 {
				if i > start {
					names = append(names, string(buf[start:i]))
				}
				start = i + 1
			}
		}
		return names, nil
	}
}

func getXattr(path, name string) ([]byte, error) {
	for size := 256; ; size *= 4 {
		buf := make([]byte, size)
		n, err := unix.Lgetxattr(path, name, buf)
		if errors.Is(err, unix.ERANGE) && size < 1<<22 {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}
