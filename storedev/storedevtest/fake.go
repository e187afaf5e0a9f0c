// Package storedevtest is the fake of storedev.Host, for the tests of
// storedev and of the code above it: each device is a plain file, a wrap
// and a mount are entries in maps.
package storedevtest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/dmsnap/dmsnap/internal/devnum"
	"github.com/dmsnap/dmsnap/storedev"
)

// WrapDev is the number every store's linear device gets.
var WrapDev = devnum.Dev{Major: 253, Minor: 9}

// Host is a storedev.Host over plain files.
type Host struct {
	mu      sync.Mutex
	Devs    map[string]devnum.Dev // path → number
	BusyBy  map[string]string     // path → who holds it
	Wraps   map[string]devnum.Dev // store UUID → the device it maps
	Mounts  map[string]devnum.Dev // dir → device
	MkfsErr error
	Calls   []string
}

var _ storedev.Host = (*Host)(nil)

// New returns a Host with one device: a sparse file of size bytes,
// numbered 8:17, whose path it returns.
func New(t testing.TB, size int64) (*Host, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return &Host{Devs: map[string]devnum.Dev{p: {Major: 8, Minor: 17}}, BusyBy: map[string]string{},
		Wraps: map[string]devnum.Dev{}, Mounts: map[string]devnum.Dev{}}, p
}

func (h *Host) call(c string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.Calls = append(h.Calls, c)
}

// Inspect implements storedev.Host.
func (h *Host) Inspect(path string) (storedev.Device, error) {
	if strings.HasPrefix(path, "/dev/mapper/") {
		return storedev.Device{Path: path, Dev: WrapDev}, nil
	}
	dev, ok := h.Devs[path]
	if !ok {
		return storedev.Device{}, os.ErrNotExist
	}
	fi, err := os.Stat(path)
	if err != nil {
		return storedev.Device{}, err
	}
	return storedev.Device{Path: path, Dev: dev, Size: fi.Size()}, nil
}

// Busy implements storedev.Host.
func (h *Host) Busy(path string) (string, error) { return h.BusyBy[path], nil }

// Open implements storedev.Host.
func (h *Host) Open(path string, write bool) (storedev.DeviceFile, error) {
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
	}
	return os.OpenFile(path, flag, 0)
}

// Wrapped implements storedev.Host.
func (h *Host) Wrapped(uuid string) (string, devnum.Dev, bool, error) {
	below, ok := h.Wraps[uuid]
	return "/dev/mapper/" + storedev.MapperName(uuid), below, ok, nil
}

// Wrap implements storedev.Host.
func (h *Host) Wrap(hd storedev.Header, dev devnum.Dev) (string, error) {
	h.call("wrap")
	if _, ok := h.Wraps[hd.UUIDString()]; ok {
		return "", errors.New("exists")
	}
	h.Wraps[hd.UUIDString()] = dev
	return "/dev/mapper/" + storedev.MapperName(hd.UUIDString()), nil
}

// Unwrap implements storedev.Host.
func (h *Host) Unwrap(uuid string) error {
	h.call("unwrap")
	delete(h.Wraps, uuid)
	return nil
}

// Mkfs implements storedev.Host.
func (h *Host) Mkfs(_ context.Context, fs, path string) error {
	h.call("mkfs " + fs)
	return h.MkfsErr
}

// Mount implements storedev.Host.
func (h *Host) Mount(path, dir, fs string) error {
	h.call("mount " + dir)
	h.Mounts[dir] = WrapDev
	return nil
}

// MountedAt implements storedev.Host.
func (h *Host) MountedAt(dir string) (devnum.Dev, bool, error) {
	d, ok := h.Mounts[dir]
	return d, ok, nil
}

// Find implements storedev.Host.
func (h *Host) Find(dev devnum.Dev) string {
	for p, d := range h.Devs {
		if d == dev {
			return p
		}
	}
	return ""
}
