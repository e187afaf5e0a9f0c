package sessiontest

import (
	"context"
	"fmt"
	"os"
	"slices"

	"github.com/dmsnap/dmsnap/internal/devid"
	"github.com/dmsnap/dmsnap/session"
)

// Images is the fake session.Images. An image file is a path added to the
// Prober with an identity whose Image is set (AddImage); Bind makes a loop
// device over it, which the Prober then shows too. A loop device dmsnap
// bound is auto-clear: it goes once released and no stack maps it, as the
// kernel's does; one a user bound (BindByUser) stays until Detach or a
// reboot.
type Images struct {
	sys   *System
	loops []*fakeLoop
	next  int
}

type fakeLoop struct {
	path      string // /dev/loopN
	dev       session.DevNum
	file      string // the image file's path
	autoClear bool
	held      bool // Bind's release not called yet
}

var _ session.Images = (*Images)(nil)

// AddImage makes an image file of size bytes appear at path, with the
// device and inode numbers dev and ino, holding a filesystem with uuid
// ("" for none).
func (im *Images) AddImage(path string, size int64, dev, ino uint64, uuid string) {
	id := session.Identity{Size: size, Image: true, FSUUID: uuid, Stable: LoopID(path, dev, ino)}
	if uuid != "" {
		id.FSType = "ext4"
	}
	im.sys.Prober.Add(path, id)
}

// Loops implements session.Images.
func (im *Images) Loops(_ context.Context, path string) ([]session.ImageLoop, error) {
	im.sys.mu.Lock()
	defer im.sys.mu.Unlock()
	file, ok := im.sys.Prober.devices[path]
	if !ok || !file.Image {
		return nil, fmt.Errorf("%s: %w", path, os.ErrNotExist)
	}
	var out []session.ImageLoop
	for _, l := range im.loops {
		if lid := im.sys.Prober.devices[l.path].Stable; lid != nil && lid.Match(*file.Stable) == nil {
			out = append(out, session.ImageLoop{Path: l.path, Dev: l.dev})
		}
	}
	return out, nil
}

// Bind implements session.Images.
func (im *Images) Bind(_ context.Context, path string) (session.ImageLoop, func() error, error) {
	var l *fakeLoop
	err := im.sys.call("BindImage "+path, func() error {
		var err error
		l, err = im.bindLocked(path, true)
		return err
	})
	if err != nil {
		return session.ImageLoop{}, nil, err
	}
	release := func() error {
		im.sys.mu.Lock()
		defer im.sys.mu.Unlock()
		l.held = false
		im.clearLocked()
		return nil
	}
	return session.ImageLoop{Path: l.path, Dev: l.dev, DirectIO: true}, release, nil
}

// BindByUser binds a loop device over the image at path as losetup does
// (not auto-clear) and returns its path.
func (im *Images) BindByUser(path string) (string, error) {
	im.sys.mu.Lock()
	defer im.sys.mu.Unlock()
	l, err := im.bindLocked(path, false)
	if err != nil {
		return "", err
	}
	return l.path, nil
}

// Detach removes the loop device at path, as losetup -d does.
func (im *Images) Detach(path string) {
	im.sys.mu.Lock()
	defer im.sys.mu.Unlock()
	im.loops = slices.DeleteFunc(im.loops, func(l *fakeLoop) bool { return l.path == path })
	delete(im.sys.Prober.devices, path)
}

// ProcessExit drops the holds of a dmsnap process that died (an injected
// crash): its auto-clear loop devices go unless a stack maps them, as the
// kernel clears them when the process's descriptors close.
func (im *Images) ProcessExit() {
	im.sys.mu.Lock()
	defer im.sys.mu.Unlock()
	for _, l := range im.loops {
		l.held = false
	}
	im.clearLocked()
}

// LoopPaths lists the loop devices bound now.
func (im *Images) LoopPaths() []string {
	im.sys.mu.Lock()
	defer im.sys.mu.Unlock()
	var out []string
	for _, l := range im.loops {
		out = append(out, l.path)
	}
	return out
}

func (im *Images) bindLocked(path string, autoClear bool) (*fakeLoop, error) {
	file, ok := im.sys.Prober.devices[path]
	if !ok || !file.Image {
		return nil, fmt.Errorf("bind %s: not an image file: %w", path, os.ErrNotExist)
	}
	l := &fakeLoop{path: fmt.Sprintf("/dev/loop%d", im.next), dev: session.DevNum{Major: 7, Minor: uint32(im.next)}, file: path, autoClear: autoClear, held: autoClear}
	im.next++
	id := file
	id.Image, id.Dev = false, l.dev
	im.sys.Prober.devices[l.path] = id
	im.loops = append(im.loops, l)
	return l, nil
}

// clearLocked detaches the auto-clear loop devices nothing holds: neither
// Bind's caller nor a stack's -real.
func (im *Images) clearLocked() {
	im.loops = slices.DeleteFunc(im.loops, func(l *fakeLoop) bool {
		if !l.autoClear || l.held {
			return false
		}
		for _, st := range im.sys.Kernel.stacks {
			if st.hasReal && st.raw == l.dev {
				return false
			}
		}
		delete(im.sys.Prober.devices, l.path)
		return true
	})
}

// LoopID is the stable identity of a loop device over the file at path
// with device and inode numbers dev and ino, which is also an image file's.
func LoopID(path string, dev, ino uint64) *devid.ID {
	return &devid.ID{Kind: devid.KindLoop, LoopFile: path, LoopFileDev: dev, LoopFileInode: ino}
}
