package session

import (
	"context"
	"fmt"
	"strings"
)

// Images binds image files to loop devices. A regular file is activated,
// and brought back after a reboot, through a loop device dmsnap makes over
// it: auto-clear, so it lives exactly as long as the stack over it (the
// stack's -real holds it open) and goes with the stack at deactivation or
// shutdown. A loop device someone else made is never detached by dmsnap.
//
// Package session/system provides the real one (package dm's loop
// devices); sessiontest.Images is the fake.
type Images interface {
	// Loops lists the loop devices bound to the regular file at path,
	// matched by device and inode (so a rename does not hide one).
	Loops(ctx context.Context, path string) ([]ImageLoop, error)
	// Bind puts a new loop device over the regular file at path (direct
	// I/O where the file's filesystem allows it). It stays while release
	// has not been called, and after that as long as something holds it
	// open: release it once the stack over it is built, or building
	// failed.
	Bind(ctx context.Context, path string) (loop ImageLoop, release func() error, err error)
}

// ImageLoop is a loop device over an image file.
type ImageLoop struct {
	Path     string // /dev/loopN
	Dev      DevNum
	DirectIO bool // the loop driver bypasses the file's page cache
}

// ImageBypass says what protecting the image file of device name cannot
// prevent, for activate's warning and status.
func ImageBypass(name string) string {
	return "an image file is protected only through /dev/mapper/dmsnap-" + name +
		": a program writing the file itself, or a `mount -o loop` of it, bypasses the snapshot and is not recorded"
}

// imageProblem checks that nothing but dmsnap's own stack (the loop device
// numbered own, zero for none) has the image file at path on a loop device:
// a loop device someone else bound (a `mount -o loop`, losetup) writes the
// file past the snapshot. It returns why not, or "".
func (m *Manager) imageProblem(ctx context.Context, path string, own DevNum) (string, error) {
	if m.Images == nil {
		return "", fmt.Errorf("%s is an image file, and this dmsnap was built without image support", path)
	}
	loops, err := m.Images.Loops(ctx, path)
	if err != nil {
		return "", err
	}
	var others []string
	for _, l := range loops {
		if own.IsZero() || l.Dev != own {
			others = append(others, l.Path)
		}
	}
	if len(others) == 0 {
		return "", nil
	}
	return fmt.Sprintf("the image file %s is on loop device %s, which writes it past dmsnap (a `mount -o loop`, or losetup): unmount and detach it (losetup -d %s) first",
		path, strings.Join(others, ", "), others[0]), nil
}

// stackUpImage builds the stack of image device d over a new loop device
// over its file, recording the loop device's number as the raw device's.
func (m *Manager) stackUpImage(ctx context.Context, reg *Registry, d *Device, path string) error {
	if m.Images == nil {
		return fmt.Errorf("%s is an image file, and this dmsnap was built without image support", path)
	}
	// Loop devices others bound to the file were refused when it was
	// found (findRaw); the one of a half-built stack taken down just now
	// may still be on its way out, so they are not looked for again.
	loop, release, err := m.Images.Bind(ctx, path)
	if err != nil {
		return err
	}
	err = func() error {
		// The file bound is the one identified: a rename between the
		// check and the bind would have put another file under the stack.
		id, err := m.Prober.Identify(ctx, loop.Path)
		if err != nil {
			return err
		}
		if err := d.Identity.Matches(id); err != nil {
			return fmt.Errorf("the file bound to %s is not the image activated as %s: %w", loop.Path, d.Name, err)
		}
		if d.Identity.Dev != loop.Dev {
			d.Identity.Dev = loop.Dev
			if err := reg.Save(m.StateDir); err != nil {
				return err
			}
		}
		return m.Kernel.StackUp(ctx, d.Name, loop.Path)
	}()
	if rerr := release(); err == nil && rerr != nil {
		err = fmt.Errorf("release %s: %w", loop.Path, rerr)
	}
	if err == nil {
		m.log().Info("image file on a loop device", "device", d.Name, "file", path, "loop", loop.Path, "direct_io", loop.DirectIO)
	}
	return err
}
