package storedev

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/atomicfile"
	"github.com/dmsnap/dmsnap/internal/devid"
	"github.com/dmsnap/dmsnap/internal/devnum"
	"github.com/dmsnap/dmsnap/internal/hostfiles"
)

// RecordsFile is the file, in the state directory, that lists the managed
// stores made on this host.
const RecordsFile = "stores.json"

// recordsVersion is the file's layout; a newer one is refused.
const recordsVersion = 1

// Record is one managed store as store create made it.
type Record struct {
	Path    string     `json:"path"`   // where it is mounted: the store directory
	UUID    string     `json:"uuid"`   // the header's, 32 hex digits
	FS      string     `json:"fs"`     // ext4 or xfs
	Device  string     `json:"device"` // the device's path when last seen
	Dev     devnum.Dev `json:"dev"`    // its number when last seen
	Stable  *devid.ID  `json:"stable,omitempty"`
	Created int64      `json:"created"` // Unix seconds
}

// MapperName is the device-mapper device that carries the store's
// filesystem: dmsnap_store-<the UUID's first 12 digits>. It never starts
// with "dmsnap-", the prefix of the stacks' devices (dm.Prefix), so no
// stack takes it for one of its own.
func (r Record) MapperName() string { return MapperName(r.UUID) }

// MapperPath is the /dev/mapper node of the store's linear device.
func (r Record) MapperPath() string { return dm.MapperPath(r.MapperName()) }

// MapperName is the device-mapper name of the store with UUID uuid.
func MapperName(uuid string) string { return "dmsnap_store-" + uuid[:min(12, len(uuid))] }

// MapperUUID is the device-mapper UUID of the store with UUID uuid.
func MapperUUID(uuid string) string { return "DMSNAPSTORE-" + uuid }

// Records is the content of RecordsFile.
type Records struct {
	Version int      `json:"version"`
	Stores  []Record `json:"stores"`
}

// ByPath returns the record of the store mounted at path (nil: none).
func (rs *Records) ByPath(path string) *Record {
	for i := range rs.Stores {
		if rs.Stores[i].Path == path {
			return &rs.Stores[i]
		}
	}
	return nil
}

// ByUUID returns the record of the store with UUID uuid (nil: none).
func (rs *Records) ByUUID(uuid string) *Record {
	for i := range rs.Stores {
		if rs.Stores[i].UUID == uuid {
			return &rs.Stores[i]
		}
	}
	return nil
}

// LoadRecords reads the state directory's RecordsFile; a missing file is
// no managed store.
func LoadRecords(stateDir string) (*Records, error) {
	p := filepath.Join(stateDir, RecordsFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return &Records{Version: recordsVersion}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	return ParseRecords(b, p)
}

// ParseRecords decodes and checks RecordsFile's bytes; name is for errors.
func ParseRecords(b []byte, name string) (*Records, error) {
	var rs Records
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rs); err != nil {
		return nil, fmt.Errorf("%s is damaged: %w", name, err)
	}
	if rs.Version != recordsVersion {
		return nil, fmt.Errorf("%s: version %d, this dmsnap reads version %d", name, rs.Version, recordsVersion)
	}
	seen := map[string]bool{}
	for _, r := range rs.Stores {
		switch {
		case !filepath.IsAbs(r.Path) || filepath.Clean(r.Path) != r.Path:
			return nil, fmt.Errorf("%s: store path %q is not a clean absolute path", name, r.Path)
		case len(r.UUID) != 32 || !isHex(r.UUID):
			return nil, fmt.Errorf("%s: store %s: UUID %q is not 32 hex digits", name, r.Path, r.UUID)
		case !knownFS(r.FS):
			return nil, fmt.Errorf("%s: store %s: filesystem %q is not one of %v", name, r.Path, r.FS, FSTypes)
		case seen[r.Path] || seen[r.UUID]:
			return nil, fmt.Errorf("%s: store %s is listed twice", name, r.Path)
		}
		seen[r.Path], seen[r.UUID] = true, true
	}
	return &rs, nil
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// Save writes rs to the state directory's RecordsFile, atomically.
func (rs *Records) Save(stateDir string) error {
	b, err := json.MarshalIndent(rs, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return err
	}
	p := filepath.Join(stateDir, RecordsFile)
	if err := atomicfile.WriteFile(p, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

// LockFile is the lock, in the state directory, that store commands take:
// not the state directory's own lock, which an attach holds while it
// waits for its store to come up.
const LockFile = "stores.lock"

// UdevDevices are the stores as their udev rule matches them
// (hostfiles.StoreUdevRules): Name is the store's path, Path its device.
func (rs *Records) UdevDevices() []hostfiles.Device {
	var ds []hostfiles.Device
	for _, r := range rs.Stores {
		ds = append(ds, hostfiles.Device{Name: r.Path, Path: r.Device, Dev: r.Dev, Stable: r.Stable})
	}
	return ds
}
