package session

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/internal/atomicfile"
	"github.com/dmsnap/dmsnap/internal/devid"
)

// Defaults for the global flags (README, "Using it").
const (
	DefaultStateDir = "/var/lib/dmsnap"
	DefaultStore    = "/snapshot"
)

// RegistryFile is the registry's file name in the state directory.
const RegistryFile = "registry.json"

// RegistryVersion is the registry format this code writes and the newest it
// reads. A newer file is refused (ErrUnsupportedVersion) rather than
// rewritten without the fields this version does not know.
const RegistryVersion = 1

// Registry is the list of activated devices, registry.json in the state
// directory:
//
//	{
//	  "version": 1,
//	  "devices": [
//	    {"name": "sdb1", "path": "/dev/sdb1",
//	     "identity": {"dev": "8:17", "size": 1073741824, "fs_type": "ext4", "fs_uuid": "…"},
//	     "origin": "253:1", "chunk_size": 4096, "store": "/snapshot",
//	     "state": "active", "activated": "2024-…Z", "next_session": 4,
//	     "sessions": [{"n": 3, "dir": "/snapshot/sdb1_1700000000", "state": "open", "armed": "…", "mounted": "…"}]}
//	  ]
//	}
//
// It is read and written only under the state lock (Lock), and written
// atomically and durably (internal/atomicfile: temporary file, fsync,
// rename, fsync of the directory), so a reader sees either the old or the
// new list, never a torn one, and a power cut after Save keeps the new one.
type Registry struct {
	Version int       `json:"version"`
	Devices []*Device `json:"devices"`
}

// RegistryPath returns the registry file of a state directory.
func RegistryPath(stateDir string) string { return filepath.Join(stateDir, RegistryFile) }

// LoadRegistry reads the registry of stateDir. A missing file is an empty
// registry (nothing activated yet).
func LoadRegistry(stateDir string) (*Registry, error) {
	path := RegistryPath(stateDir)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &Registry{Version: RegistryVersion}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read registry: %w", err)
	}
	return ParseRegistry(b, path)
}

// ParseRegistry decodes and checks registry bytes; name is used in errors.
func ParseRegistry(b []byte, name string) (*Registry, error) {
	var head struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return nil, fmt.Errorf("registry %s is damaged: %w; move it away and re-activate the devices", name, err)
	}
	if head.Version > RegistryVersion {
		return nil, fmt.Errorf("registry %s has version %d, this dmsnap reads version %d and older: upgrade dmsnap: %w",
			name, head.Version, RegistryVersion, ErrUnsupportedVersion)
	}
	if head.Version < 1 {
		return nil, fmt.Errorf("registry %s has no version: not a dmsnap registry", name)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var r Registry
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("registry %s is damaged: %w; move it away and re-activate the devices", name, err)
	}
	if err := r.check(); err != nil {
		return nil, fmt.Errorf("registry %s: %w", name, err)
	}
	r.Version = RegistryVersion
	return &r, nil
}

func (r *Registry) check() error {
	seen := map[string]bool{}
	for i, d := range r.Devices {
		if d == nil {
			return fmt.Errorf("device %d is null", i)
		}
		if err := ValidateName(d.Name); err != nil {
			return fmt.Errorf("device %d: %w", i, err)
		}
		if seen[d.Name] {
			return fmt.Errorf("device name %q appears twice", d.Name)
		}
		seen[d.Name] = true
		switch d.State {
		case DeviceActivating, DeviceActive, DeviceDeactivating:
		default:
			return fmt.Errorf("device %s: unknown state %q", d.Name, d.State)
		}
		switch d.OnUnmount {
		case "", OnUnmountRevert:
		default:
			return fmt.Errorf("device %s: unknown on_unmount %q", d.Name, d.OnUnmount)
		}
		if d.RevertBase < 0 || d.RevertBase > d.NextSession || (d.OnUnmount == "" && (d.RevertBase != 0 || d.RevertPending)) {
			return fmt.Errorf("device %s: revert base %d (pending %v) does not fit on_unmount %q and next session %d", d.Name, d.RevertBase, d.RevertPending, d.OnUnmount, d.NextSession)
		}
		live := 0
		ns := map[int]bool{}
		for _, s := range d.Sessions {
			if s == nil {
				return fmt.Errorf("device %s: null session", d.Name)
			}
			switch s.State {
			case SessionArming, SessionArmed, SessionOpening, SessionOpen, SessionClosing, SessionInvalid:
			default:
				return fmt.Errorf("device %s session %d: unknown state %q", d.Name, s.N, s.State)
			}
			if s.N < 1 || s.N >= d.NextSession {
				return fmt.Errorf("device %s: session number %d outside 1..%d", d.Name, s.N, d.NextSession-1)
			}
			if ns[s.N] {
				return fmt.Errorf("device %s: session %d appears twice", d.Name, s.N)
			}
			ns[s.N] = true
			if s.State.Live() {
				live++
			}
		}
		if live > 1 {
			return fmt.Errorf("device %s: %d live sessions, at most one allowed", d.Name, live)
		}
	}
	return nil
}

// Save writes the registry to stateDir atomically. The caller holds the lock.
func (r *Registry) Save(stateDir string) error {
	r.Version = RegistryVersion
	if err := r.check(); err != nil {
		return fmt.Errorf("save registry: %w", err)
	}
	slices.SortFunc(r.Devices, func(a, b *Device) int { return strings.Compare(a.Name, b.Name) })
	for _, d := range r.Devices {
		slices.SortFunc(d.Sessions, func(a, b *Session) int { return a.N - b.N })
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("save registry: %w", err)
	}
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return fmt.Errorf("save registry: %w", err)
	}
	path := RegistryPath(stateDir)
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("save registry %s: %w", path, err)
	}
	return nil
}

// Device returns the device registered under name, or nil.
func (r *Registry) Device(name string) *Device {
	for _, d := range r.Devices {
		if d.Name == name {
			return d
		}
	}
	return nil
}

// ByDevNum returns the device whose raw device or origin (dmsnap-NAME) has
// number n, or nil.
func (r *Registry) ByDevNum(n DevNum) *Device {
	if n.IsZero() {
		return nil
	}
	for _, d := range r.Devices {
		// An image's loop device number is only its last one: another
		// loop device may have it now.
		if (d.Identity.Dev == n && !d.Identity.Image) || d.Origin == n {
			return d
		}
	}
	return nil
}

// ByStable returns the device whose recorded stable identity id matches
// (devid.ID.Match), or nil. Nil and identities that are not Stable match
// nothing.
func (r *Registry) ByStable(id *devid.ID) *Device {
	if id == nil || !id.Stable() {
		return nil
	}
	for _, d := range r.Devices {
		if d.Identity.Stable != nil && d.Identity.Stable.Match(*id) == nil {
			return d
		}
	}
	return nil
}

// ByFSUUID returns the device whose filesystem UUID is uuid, or nil.
func (r *Registry) ByFSUUID(uuid string) *Device {
	if uuid == "" {
		return nil
	}
	for _, d := range r.Devices {
		if strings.EqualFold(d.Identity.FSUUID, uuid) {
			return d
		}
	}
	return nil
}

// Lookup finds an activated device by what a user typed: a dmsnap name
// ("sdb1"), or a device path (anything with a '/': /dev/sdb1,
// /dev/mapper/dmsnap-sdb1, /dev/disk/by-uuid/…), which is resolved through
// its symlinks and compared by device number with both the raw device and
// the origin; or an image file's path, compared by device and inode with
// the activated image files. Not found is ErrNotActivated.
func (r *Registry) Lookup(arg string) (*Device, error) {
	if !strings.Contains(arg, "/") {
		if d := r.Device(arg); d != nil {
			return d, nil
		}
		return nil, fmt.Errorf("%s: %w; `dmsnap status` lists the activated devices", arg, ErrNotActivated)
	}
	resolved, err := filepath.EvalSymlinks(arg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", arg, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(resolved, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
		if d := r.byImage(st.Dev, st.Ino); d != nil {
			return d, nil
		}
		return nil, fmt.Errorf("%s (an image file): %w; `dmsnap status` lists the activated devices", arg, ErrNotActivated)
	}
	n, err := BlockDevNum(resolved)
	if err != nil {
		return nil, err
	}
	if d := r.ByDevNum(n); d != nil {
		return d, nil
	}
	return nil, fmt.Errorf("%s (%s): %w; `dmsnap status` lists the activated devices", arg, n, ErrNotActivated)
}

// byImage returns the image device whose file has device and inode
// numbers dev and ino, or nil.
func (r *Registry) byImage(dev, ino uint64) *Device {
	for _, d := range r.Devices {
		if st := d.Identity.Stable; d.Identity.Image && st != nil && st.LoopFileDev == dev && st.LoopFileInode == ino {
			return d
		}
	}
	return nil
}

// Add registers d; its name must be free.
func (r *Registry) Add(d *Device) error {
	if r.Device(d.Name) != nil {
		return fmt.Errorf("name %s: %w", d.Name, ErrAlreadyActivated)
	}
	r.Devices = append(r.Devices, d)
	return nil
}

// Remove drops the device registered under name.
func (r *Registry) Remove(name string) {
	r.Devices = slices.DeleteFunc(r.Devices, func(d *Device) bool { return d.Name == name })
}
