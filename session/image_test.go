package session_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/session"
)

const imagePath = "/srv/images/image.img"

// imageWorld is a world with an image file of 64 MiB at imagePath.
func imageWorld(t *testing.T) *world {
	w := newWorld(t)
	w.sys.Images.AddImage(imagePath, 64<<20, 2049, 12, "6d1f0a52-2222-4c1b-8f0e-3c4d5e6f7a8b")
	return w
}

func (w *world) activateImage() (*session.Device, error) {
	return w.manager().Activate(bgctx, session.ActivateRequest{Device: imagePath, Store: w.store})
}

// imageSteady checks an activated image.img: its stack over the one loop
// device dmsnap bound, which is recorded as the raw device, and session n
// armed in its own COW.
func (w *world) imageSteady(n int) *session.Device {
	w.t.Helper()
	d := w.registry().Device("image.img")
	if d == nil {
		w.t.Fatal("image.img is not in the registry")
	}
	loops := w.sys.Images.LoopPaths()
	if len(loops) != 1 {
		w.t.Fatalf("loop devices %v, want the one under the stack", loops)
	}
	id, err := w.sys.Prober.Identify(bgctx, loops[0])
	if err != nil {
		w.t.Fatal(err)
	}
	if d.State != session.DeviceActive || d.Path != imagePath || !d.Identity.Image || d.Identity.Dev != id.Dev {
		w.t.Fatalf("device %+v, identity %+v (want active, %s, the raw device %s)", d, d.Identity, imagePath, id.Dev)
	}
	if got := w.sys.Kernel.Snapshots("image.img"); !slices.Equal(got, []int{n}) {
		w.t.Fatalf("kernel snapshots %v, want [%d]", got, n)
	}
	if len(d.Sessions) != 1 || d.Sessions[0].N != n || d.Sessions[0].State != session.SessionArmed {
		w.t.Fatalf("sessions %v, want %d armed", sessions(d), n)
	}
	if len(w.sys.Violations) > 0 {
		w.t.Fatalf("invariants broken: %v", w.sys.Violations)
	}
	return d
}

// An image file is activated through a loop device dmsnap binds; the
// sessions are named after its base name, as the seed named them; the
// loop device goes with the stack (reboot, deactivate), and comes back,
// with the armed session, at the next reconcile (the watcher's start).
func TestImageActivateRebootDeactivate(t *testing.T) {
	w := imageWorld(t)
	d, err := w.activateImage()
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "image.img" {
		t.Fatalf("name %s, want image.img", d.Name)
	}
	before := w.imageSteady(1).Sessions[0]
	if devs := w.registry().UdevDevices(); len(devs) != 0 {
		t.Fatalf("the udev rule would match the image's loop device: %+v", devs)
	}
	if !strings.HasPrefix(before.Dir, w.store+"/image.img_") {
		t.Fatalf("session directory %s, want %s/image.img_<seconds>", before.Dir, w.store)
	}
	w.settled()

	w.sys.Reboot()
	// Its last loop device number names no image: another loop device
	// may have it now.
	if d := w.registry().ByDevNum(w.registry().Device("image.img").Identity.Dev); d != nil {
		t.Fatalf("the old loop device number still finds %s", d.Name)
	}
	w.tick(time.Minute)
	w.sys.ResetCalls()
	w.reconcile()
	after := w.imageSteady(1).Sessions[0]
	if after.Dir != before.Dir || len(w.sys.CallsMatching("ArmSession")) != 0 {
		t.Fatalf("after the reboot the armed session is %s (was %s), calls %v: want it re-attached", after.Dir, before.Dir, w.sys.Calls)
	}
	if got := w.sys.CallsMatching("BindImage"); len(got) != 1 {
		t.Fatalf("binds %v, want one", got)
	}
	w.settled()

	// Found by its path as by its name.
	if err := w.manager().Deactivate(bgctx, imagePath); err != nil {
		t.Fatal(err)
	}
	if loops := w.sys.Images.LoopPaths(); len(loops) != 0 || len(w.sys.Kernel.StackNames()) != 0 {
		t.Fatalf("after deactivate: loops %v, stacks %v", loops, w.sys.Kernel.StackNames())
	}
}

// A loop device someone else bound to the image (mount -o loop, losetup)
// writes it past the snapshot: activate refuses, changing nothing, and a
// reconcile does not re-stack until it is gone. dmsnap never detaches it.
func TestImageBoundByAnotherLoopDevice(t *testing.T) {
	w := imageWorld(t)
	theirs, err := w.sys.Images.BindByUser(imagePath)
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.activateImage()
	if !errors.Is(err, session.ErrBusy) || !strings.Contains(err.Error(), theirs) || !strings.Contains(err.Error(), "losetup -d") {
		t.Fatalf("activate of an image on %s: %v, want busy naming it", theirs, err)
	}
	if len(w.registry().Devices) != 0 || len(w.sys.Kernel.StackNames()) != 0 || len(w.sys.Calls) != 0 {
		t.Fatalf("a refused activate changed something: registry %v, stacks %v, calls %v", w.registry().Devices, w.sys.Kernel.StackNames(), w.sys.Calls)
	}
	w.sys.Images.Detach(theirs)
	if _, err := w.activateImage(); err != nil {
		t.Fatal(err)
	}
	w.sys.Reboot()
	theirs, err = w.sys.Images.BindByUser(imagePath)
	if err != nil {
		t.Fatal(err)
	}
	rep := w.reconcile()
	if len(w.sys.Kernel.StackNames()) != 0 || len(rep.Issues) != 1 || !strings.Contains(rep.Issues[0].Problem, theirs) {
		t.Fatalf("stacks %v, issues %v: want no stack and an issue naming %s", w.sys.Kernel.StackNames(), rep.Issues, theirs)
	}
	if loops := w.sys.Images.LoopPaths(); !slices.Equal(loops, []string{theirs}) {
		t.Fatalf("loops %v, want theirs alone", loops)
	}
	w.sys.Images.Detach(theirs)
	w.reconcile()
	w.imageSteady(1)
}

// After a reboot a file put in the image's place (same name and size, a
// new inode), or none, is reported and left alone: never guessed.
func TestImageReplacedOrMissing(t *testing.T) {
	w := imageWorld(t)
	if _, err := w.activateImage(); err != nil {
		t.Fatal(err)
	}
	w.sys.Reboot()
	w.sys.Images.AddImage(imagePath, 64<<20, 2049, 13, "6d1f0a52-2222-4c1b-8f0e-3c4d5e6f7a8b")
	w.sys.ResetCalls()
	rep := w.reconcile()
	if len(rep.Issues) != 1 || !strings.Contains(rep.Issues[0].Problem, "inode 13") || len(w.sys.Calls) != 0 {
		t.Fatalf("issues %v, calls %v: want the replaced file reported, nothing done", rep.Issues, w.sys.Calls)
	}
	if _, err := w.manager().Attach(bgctx, imagePath, session.AttachOptions{}); !errors.Is(err, session.ErrIdentityMismatch) {
		t.Fatalf("attach of the replaced file: %v, want ErrIdentityMismatch", err)
	}
	if len(w.sys.Images.LoopPaths()) != 0 || len(w.sys.Kernel.StackNames()) != 0 {
		t.Fatalf("loops %v, stacks %v after refusing", w.sys.Images.LoopPaths(), w.sys.Kernel.StackNames())
	}
	w.sys.Prober.Remove(imagePath)
	rep = w.reconcile()
	if len(rep.Issues) != 1 || !strings.Contains(rep.Issues[0].Problem, "image file is not there") {
		t.Fatalf("issues %v, want the missing file reported", rep.Issues)
	}
	// The file itself back: attached by its path.
	w.sys.Images.AddImage(imagePath, 64<<20, 2049, 12, "6d1f0a52-2222-4c1b-8f0e-3c4d5e6f7a8b")
	if _, err := w.manager().Attach(bgctx, imagePath, session.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	w.imageSteady(1)
}

// A crash at any step of an image's activation, the process dying with it
// (its holds on loop devices go) with or without a reboot, ends, after a
// reconcile, with the image active over one loop device.
func TestImageActivateCrashAtEveryStep(t *testing.T) {
	w := imageWorld(t)
	if _, err := w.activateImage(); err != nil {
		t.Fatal(err)
	}
	steps := w.sys.MutatingCalls()
	for k := 1; k <= steps; k++ {
		for _, after := range []bool{false, true} {
			for _, reboot := range []bool{false, true} {
				t.Run(fmt.Sprintf("call%d/after=%v/reboot=%v", k, after, reboot), func(t *testing.T) {
					w := imageWorld(t)
					if after {
						w.sys.CrashAfter(k)
					} else {
						w.sys.CrashBefore(k)
					}
					if !crashes(t, func() { w.activateImage() }) {
						t.Fatalf("no crash at call %d", k)
					}
					w.sys.Images.ProcessExit()
					if reboot {
						w.sys.Reboot()
					}
					w.reconcile()
					w.imageSteady(1)
					w.settled()
				})
			}
		}
	}
}
