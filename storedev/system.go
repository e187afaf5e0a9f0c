package storedev

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/devid"
	"github.com/dmsnap/dmsnap/internal/devnum"
	"github.com/dmsnap/dmsnap/internal/mountinfo"
)

// System is the running system. Its zero value is ready to use.
type System struct{}

var _ Host = System{}

// Inspect implements Host: the number and size (dm.Inspect) and the stable
// identity (devid) of a block device.
func (System) Inspect(path string) (Device, error) {
	bd, err := dm.Inspect(path)
	if err != nil {
		return Device{}, err
	}
	d := Device{Path: path, Dev: bd.Dev, Size: int64(bd.Sectors) * dm.SectorSize}
	if id, err := devid.Read(bd.Dev.Major, bd.Dev.Minor); err == nil {
		d.Stable = &id
	}
	return d, nil
}

// Busy implements Host (dm.Busy).
func (System) Busy(path string) (string, error) { return dm.Busy(path) }

// Open implements Host. The device is not opened exclusively: the linear
// device that Create then makes over it must be able to claim it.
func (System) Open(path string, write bool) (DeviceFile, error) {
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
	}
	return os.OpenFile(path, flag|unix.O_CLOEXEC, 0)
}

// Wrapped implements Host: the linear device named after the store's UUID,
// checked by its device-mapper UUID, and the device its table maps.
func (System) Wrapped(uuid string) (string, devnum.Dev, bool, error) {
	name := MapperName(uuid)
	info, err := dm.Info(name)
	if errors.Is(err, dm.ErrNotFound) {
		return "", devnum.Dev{}, false, nil
	}
	if err != nil {
		return "", devnum.Dev{}, false, err
	}
	if info.UUID != MapperUUID(uuid) {
		return "", devnum.Dev{}, false, fmt.Errorf("device-mapper device %s has UUID %q, not the store's %q", name, info.UUID, MapperUUID(uuid))
	}
	tbl, err := dm.Table(name)
	if err != nil {
		return "", devnum.Dev{}, false, err
	}
	if len(tbl) != 1 || tbl[0].Type != "linear" {
		return "", devnum.Dev{}, false, fmt.Errorf("device-mapper device %s does not have the one linear target of a store", name)
	}
	below, err := dm.ParseDev(strings.Fields(tbl[0].Params)[0])
	if err != nil {
		return "", devnum.Dev{}, false, fmt.Errorf("device-mapper device %s: %w", name, err)
	}
	return dm.MapperPath(name), below, true, nil
}

// Wrap implements Host: a linear device over dev from h.DataOffset for
// h.DataLength bytes, removed again when a step fails.
func (System) Wrap(h Header, dev devnum.Dev) (string, error) {
	uuid := h.UUIDString()
	name := MapperName(uuid)
	if _, err := dm.Create(name, MapperUUID(uuid)); err != nil {
		return "", err
	}
	err := dm.Load(name, dm.Linear{Length: h.DataLength / dm.SectorSize, Device: dev, Offset: h.DataOffset / dm.SectorSize})
	if err == nil {
		err = dm.Resume(name)
	}
	if err != nil {
		return "", errors.Join(err, dm.Remove(name))
	}
	return dm.MapperPath(name), nil
}

// Unwrap implements Host.
func (System) Unwrap(uuid string) error {
	if err := dm.Remove(MapperName(uuid)); err != nil && !errors.Is(err, dm.ErrNotFound) {
		return err
	}
	return nil
}

// Mkfs implements Host with mkfs.ext4 or mkfs.xfs, forced (the device was
// checked before, and its header written: mkfs must not stop to ask), with
// 4 KiB blocks: mke2fs picks 1 KiB blocks for a device under 512 MiB, and
// a COW file on blocks smaller than a page cannot be mapped (dm.MapFile).
func (System) Mkfs(ctx context.Context, fs, path string) error {
	var cmd *exec.Cmd
	switch fs {
	case "ext4":
		cmd = exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-b", "4096", path)
	case "xfs":
		cmd = exec.CommandContext(ctx, "mkfs.xfs", "-q", "-f", "-b", "size=4096", path)
	default:
		return fmt.Errorf("mkfs: filesystem %q is not one of %v", fs, FSTypes)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// Mount implements Host.
func (System) Mount(path, dir, fs string) error {
	if err := unix.Mount(path, dir, fs, 0, ""); err != nil {
		return fmt.Errorf("mount %s on %s: %w", path, dir, err)
	}
	return nil
}

// MountedAt implements Host from /proc/self/mountinfo: the last mount on
// dir (the one on top).
func (System) MountedAt(dir string) (devnum.Dev, bool, error) {
	if p, err := filepath.EvalSymlinks(dir); err == nil {
		dir = p
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return devnum.Dev{}, false, err
	}
	defer f.Close()
	ms, err := mountinfo.Parse(f)
	if err != nil {
		return devnum.Dev{}, false, err
	}
	var dev devnum.Dev
	var ok bool
	for _, m := range ms {
		if m.MountPoint == dir {
			dev, ok = m.Dev, true
		}
	}
	return dev, ok, nil
}

// Find implements Host through sysfs: /dev/ + the device's DEVNAME.
func (System) Find(dev devnum.Dev) string {
	name, err := devnum.DevName(filepath.Join("/sys/dev/block", strconv.FormatUint(uint64(dev.Major), 10)+":"+strconv.FormatUint(uint64(dev.Minor), 10)))
	if err != nil {
		return ""
	}
	p := filepath.Join("/dev", name)
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}
