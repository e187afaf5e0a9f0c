package dm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"unsafe"

	devmapper "github.com/anatol/devmapper.go"
	"golang.org/x/sys/unix"
)

// ControlPath is the device-mapper control node every ioctl goes through.
const ControlPath = "/dev/mapper/control"

// controlMisc is the fixed misc device number of /dev/mapper/control
// (MAPPER_CTRL_MINOR), used when sysfs does not say.
var controlMisc = Dev{Major: 10, Minor: 236}

// maxStatusBuffer bounds the retries of DM_TABLE_STATUS on a full buffer.
const maxStatusBuffer = 4 << 20

// DeviceInfo describes a device-mapper device (DM_DEV_STATUS).
type DeviceInfo struct {
	Name        string
	UUID        string
	Dev         Dev
	OpenCount   int32 // openers of the mapped device: mounts, open files, stacked tables
	TargetCount uint32
	Suspended   bool
	LiveTable   bool // DM_ACTIVE_PRESENT_FLAG
	Inactive    bool // an inactive table is loaded (DM_INACTIVE_PRESENT_FLAG)
	ReadOnly    bool
}

// Path is the device's /dev/mapper node.
func (i DeviceInfo) Path() string { return MapperPath(i.Name) }

// ListItem is a device-mapper device as DM_LIST_DEVICES reports it.
type ListItem struct {
	Name string
	Dev  Dev
}

// Version is the kernel's device-mapper ioctl interface version.
type Version [3]uint32

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v[0], v[1], v[2]) }

// dmErr turns an error of a device-mapper call into an *Error. A control
// node that cannot be opened means there is no usable device-mapper.
func dmErr(op, name string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) && pe.Path == ControlPath {
		return &Error{Op: op, Device: name, Kind: ErrNoDeviceMapper, Err: err,
			Hint: "the device-mapper control node is missing or has no driver: load dm-mod (modprobe dm-snapshot)"}
	}
	e := newError(op, name, err, "")
	if op == "create" && errors.Is(err, unix.EBUSY) {
		e.Hint = "a device-mapper device with this name already exists: remove it or choose another name"
	}
	if errors.Is(err, unix.ENXIO) && op != "create" {
		e.Hint = "no device-mapper device has this name"
	}
	return e
}

// EnsureControl makes sure /dev/mapper/control exists (creating the misc
// node 10:236, or the number sysfs gives, when it is missing) and that the
// kernel answers DM_VERSION. Without device-mapper it returns an error that
// is ErrNoDeviceMapper. The node can exist while dm-mod is not loaded, so
// only the ioctl proves device-mapper is there.
func EnsureControl() (Version, error) {
	dev := controlMisc
	if d, err := readSysDev(sysDir + "/class/misc/device-mapper/dev"); err == nil {
		dev = d
	}
	if err := ensureNode(ControlPath, unix.S_IFCHR, dev, false); err != nil {
		return Version{}, &Error{Op: "create control node", Device: ControlPath, Kind: ErrNoDeviceMapper, Err: err,
			Hint: "create it with `mknod /dev/mapper/control c 10 236` as root"}
	}
	maj, min, patch, err := devmapper.GetVersion()
	if err != nil {
		op := "query device-mapper version"
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			return Version{}, dmErr(op, ControlPath, err)
		}
		e := newError(op, ControlPath, err, "")
		e.Kind = ErrNoDeviceMapper
		e.Hint = defaultHint(op, ErrNoDeviceMapper, 0)
		return Version{}, e
	}
	return Version{maj, min, patch}, nil
}

// Create creates an empty device-mapper device (no table, suspended) and its
// /dev/mapper node.
func Create(name, uuid string) (DeviceInfo, error) {
	if err := checkName(name); err != nil {
		return DeviceInfo{}, &Error{Op: "create", Device: name, Err: err}
	}
	if err := devmapper.Create(name, uuid); err != nil {
		return DeviceInfo{}, dmErr("create", name, err)
	}
	info, err := Info(name)
	if err != nil {
		return DeviceInfo{}, err
	}
	if err := ensureNode(MapperPath(name), unix.S_IFBLK, info.Dev, true); err != nil {
		return info, newError("create device node", MapperPath(name), err, "")
	}
	return info, nil
}

// Info returns a device's state; a missing device is ErrNotFound.
func Info(name string) (DeviceInfo, error) {
	if err := checkName(name); err != nil {
		return DeviceInfo{}, &Error{Op: "info", Device: name, Err: err}
	}
	di, err := devmapper.InfoByName(name)
	if err != nil {
		return DeviceInfo{}, dmErr("info", name, err)
	}
	return DeviceInfo{
		Name:        di.Name,
		UUID:        di.UUID,
		Dev:         DevFromNumber(di.DevNo),
		OpenCount:   di.OpenCount,
		TargetCount: di.TargetsNum,
		Suspended:   di.Flags&unix.DM_SUSPEND_FLAG != 0,
		LiveTable:   di.Flags&unix.DM_ACTIVE_PRESENT_FLAG != 0,
		Inactive:    di.Flags&unix.DM_INACTIVE_PRESENT_FLAG != 0,
		ReadOnly:    di.Flags&unix.DM_READONLY_FLAG != 0,
	}, nil
}

// Load loads targets as the device's inactive table; Resume makes it live.
func Load(name string, targets ...Target) error {
	specs, err := Specs(targets...)
	if err != nil {
		return &Error{Op: "load table", Device: name, Err: err}
	}
	buf, err := encodeTableLoad(name, 0, specs)
	if err != nil {
		return &Error{Op: "load table", Device: name, Err: err}
	}
	if err := controlIoctl(unix.DM_TABLE_LOAD, buf); err != nil {
		e := dmErr("load table", name, err)
		if ee, ok := e.(*Error); ok && errors.Is(err, unix.EINVAL) {
			ee.Hint = fmt.Sprintf("the kernel refused the table %q (see dmesg for why)", joinSpecs(specs))
		}
		return e
	}
	return nil
}

func joinSpecs(specs []TargetSpec) string {
	lines := make([]string, len(specs))
	for i, s := range specs {
		lines[i] = s.String()
	}
	return strings.Join(lines, "; ")
}

// ClearTable drops the device's inactive table, if any.
func ClearTable(name string) error {
	buf, err := encodeRequest(name, 0, headerSize)
	if err != nil {
		return &Error{Op: "clear table", Device: name, Err: err}
	}
	if err := controlIoctl(unix.DM_TABLE_CLEAR, buf); err != nil {
		return dmErr("clear table", name, err)
	}
	return nil
}

// Suspend suspends the device: in-flight I/O completes, new I/O waits, and
// a file system on it is frozen (its dirty data flushed first).
func Suspend(name string) error {
	if err := devmapper.Suspend(name); err != nil {
		return dmErr("suspend", name, err)
	}
	return nil
}

// Resume makes a loaded inactive table live (if any) and resumes I/O. It
// also restores the /dev/mapper node if it went missing.
func Resume(name string) error {
	if err := devmapper.Resume(name); err != nil {
		return dmErr("resume", name, err)
	}
	info, err := Info(name)
	if err != nil {
		return err
	}
	if err := ensureNode(MapperPath(name), unix.S_IFBLK, info.Dev, true); err != nil {
		return newError("create device node", MapperPath(name), err, "")
	}
	return nil
}

// Remove removes the device and its /dev/mapper node. It fails with ErrBusy
// while the device is open, mounted or used by another table.
func Remove(name string) error {
	if err := checkName(name); err != nil {
		return &Error{Op: "remove", Device: name, Err: err}
	}
	if err := devmapper.Remove(name); err != nil {
		return dmErr("remove", name, err)
	}
	if err := removeNode(MapperPath(name)); err != nil {
		return newError("remove device node", MapperPath(name), err, "")
	}
	return nil
}

// List returns every device-mapper device.
func List() ([]ListItem, error) {
	items, err := devmapper.List()
	if err != nil {
		return nil, dmErr("list devices", "", err)
	}
	out := make([]ListItem, 0, len(items))
	for _, it := range items {
		// With no devices the kernel returns one empty record (dev 0).
		if it.DevNo == 0 && it.Name == "" {
			continue
		}
		out = append(out, ListItem{Name: it.Name, Dev: DevFromNumber(it.DevNo)})
	}
	return out, nil
}

// Status returns each target's status line (DM_TABLE_STATUS) of the live
// table. For a snapshot, parse it with ParseSnapshotStatus.
func Status(name string) ([]TargetSpec, error) {
	return tableStatus("status", name, 0)
}

// Table returns the live table as the kernel holds it (DM_TABLE_STATUS with
// DM_STATUS_TABLE_FLAG); ParseTarget turns lines back into targets.
func Table(name string) ([]TargetSpec, error) {
	return tableStatus("table", name, unix.DM_STATUS_TABLE_FLAG)
}

func tableStatus(op, name string, flags uint32) ([]TargetSpec, error) {
	for size := 16 << 10; size <= maxStatusBuffer; size *= 4 {
		buf, err := encodeRequest(name, flags, size)
		if err != nil {
			return nil, &Error{Op: op, Device: name, Err: err}
		}
		if err := controlIoctl(unix.DM_TABLE_STATUS, buf); err != nil {
			return nil, dmErr(op, name, err)
		}
		r, err := decodeStatusReply(buf)
		if err != nil {
			return nil, &Error{Op: op, Device: name, Err: err}
		}
		if !r.Full {
			return r.Specs, nil
		}
	}
	return nil, &Error{Op: op, Device: name, Err: fmt.Errorf("reply larger than %d bytes", maxStatusBuffer)}
}

// controlIoctl issues one device-mapper ioctl with buf as its argument.
func controlIoctl(cmd uintptr, buf []byte) error {
	f, err := os.OpenFile(ControlPath, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), cmd, uintptr(unsafe.Pointer(&buf[0])))
	if errno != 0 {
		return errno
	}
	return nil
}
