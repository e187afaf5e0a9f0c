package session

import (
	"errors"
	"github.com/dmsnap/dmsnap/internal/devid"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func sampleRegistry() *Registry {
	armed := time.Date(2024, 3, 1, 10, 0, 0, 123456789, time.UTC)
	return &Registry{Devices: []*Device{
		{
			Name: "sdb1", Path: "/dev/sdb1",
			Identity: Identity{Dev: DevNum{Major: 8, Minor: 17}, Size: 1 << 30, FSType: "ext4", FSUUID: "0b9a4c8e-1111-4d7e-9d43-5a1b2c3d4e5f",
				Stable: &devid.ID{Kind: devid.KindPartition, PartUUID: "5a1b2c3d-01", PartNumber: 1, Start: 2048, Sectors: 1 << 21}},
			Origin:    DevNum{Major: 253, Minor: 1},
			ChunkSize: 4096, Store: "/snapshot", State: DeviceActive, Activated: armed.Add(-time.Hour),
			NextSession: 4,
			Sessions: []*Session{
				{N: 3, Dir: "/snapshot/sdb1_1709287200", State: SessionOpen, Armed: armed, Mounted: armed.Add(time.Minute), FSType: "ext4"},
				{N: 2, Dir: "/snapshot/sdb1_1709280000", State: SessionClosing, Armed: armed.Add(-2 * time.Hour), Unmounted: armed},
			},
		},
		{Name: "a-disk", Path: "/dev/vdb", Identity: Identity{Dev: DevNum{Major: 254, Minor: 16}, Size: 64 << 20}, ChunkSize: 65536,
			Store: "/snapshot", State: DeviceActivating, Activated: armed, NextSession: 1},
	}}
}

func TestRegistrySaveLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	empty, err := LoadRegistry(dir)
	if err != nil || len(empty.Devices) != 0 || empty.Version != RegistryVersion {
		t.Fatalf("missing registry: %+v %v", empty, err)
	}
	reg := sampleRegistry()
	if err := reg.Save(dir); err != nil {
		t.Fatal(err)
	}
	got, err := LoadRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, reg) {
		t.Fatalf("round trip\n got %+v\nwant %+v", got, reg)
	}
	// Sorted on save: devices by name, sessions by number.
	if got.Devices[0].Name != "a-disk" || got.Devices[1].Sessions[0].N != 2 {
		t.Fatalf("not sorted: %s, session %d", got.Devices[0].Name, got.Devices[1].Sessions[0].N)
	}
	b, _ := os.ReadFile(RegistryPath(dir))
	for _, want := range []string{`"version": 1`, `"dev": "8:17"`, `"origin": "253:1"`, `"state": "open"`, `"fs_uuid": "0b9a4c8e`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("registry.json lacks %s:\n%s", want, b)
		}
	}
	if strings.Contains(string(b), `"origin": "0:0"`) {
		t.Error("a zero origin is written")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("state directory holds %d files after save, want only the registry", len(ents))
	}
}

func TestRegistryRefusals(t *testing.T) {
	cases := map[string]string{
		"newer":          `{"version": 2, "devices": []}`,
		"no version":     `{"devices": []}`,
		"garbage":        `{"version": 1, "devices": [`,
		"unknown field":  `{"version": 1, "devices": [], "extra": 1}`,
		"bad state":      `{"version": 1, "devices": [{"name": "a", "state": "weird", "next_session": 1}]}`,
		"bad name":       `{"version": 1, "devices": [{"name": "a/b", "state": "active", "next_session": 1}]}`,
		"duplicate":      `{"version": 1, "devices": [{"name": "a", "state": "active", "next_session": 1}, {"name": "a", "state": "active", "next_session": 1}]}`,
		"two live":       `{"version": 1, "devices": [{"name": "a", "state": "active", "next_session": 3, "sessions": [{"n": 1, "state": "armed"}, {"n": 2, "state": "open"}]}]}`,
		"session number": `{"version": 1, "devices": [{"name": "a", "state": "active", "next_session": 2, "sessions": [{"n": 2, "state": "armed"}]}]}`,
		"bad dev":        `{"version": 1, "devices": [{"name": "a", "state": "active", "next_session": 1, "identity": {"dev": "8"}}]}`,
		"bad on_unmount": `{"version": 1, "devices": [{"name": "a", "state": "active", "next_session": 1, "on_unmount": "sometimes"}]}`,
		"base too far":   `{"version": 1, "devices": [{"name": "a", "state": "active", "next_session": 2, "on_unmount": "revert", "revert_base": 3}]}`,
		"base on keep":   `{"version": 1, "devices": [{"name": "a", "state": "active", "next_session": 2, "revert_base": 1}]}`,
		"pending, keep":  `{"version": 1, "devices": [{"name": "a", "state": "active", "next_session": 2, "revert_pending": true}]}`,
	}
	for name, text := range cases {
		_, err := ParseRegistry([]byte(text), "registry.json")
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
		if name == "newer" && !errors.Is(err, ErrUnsupportedVersion) {
			t.Errorf("newer: %v, want ErrUnsupportedVersion", err)
		}
	}
	reg := sampleRegistry()
	reg.Devices[0].Sessions[1].State = SessionArmed // two live sessions
	if err := reg.Save(t.TempDir()); err == nil {
		t.Fatal("saved a registry with two live sessions")
	}
}

func TestRegistryLookup(t *testing.T) {
	reg := sampleRegistry()
	dev := t.TempDir()
	// Device nodes with the registered numbers, and a by-uuid style symlink.
	mk := func(name string, d DevNum) string {
		p := filepath.Join(dev, name)
		if err := unix.Mknod(p, unix.S_IFBLK|0o600, int(unix.Mkdev(d.Major, d.Minor))); err != nil {
			t.Fatalf("mknod: %v", err)
		}
		return p
	}
	raw := mk("sdb1", DevNum{Major: 8, Minor: 17})
	origin := mk("dm-1", DevNum{Major: 253, Minor: 1})
	other := mk("sdc1", DevNum{Major: 8, Minor: 33})
	link := filepath.Join(dev, "by-uuid")
	if err := os.Symlink(raw, link); err != nil {
		t.Fatal(err)
	}
	for _, arg := range []string{"sdb1", raw, origin, link} {
		d, err := reg.Lookup(arg)
		if err != nil || d.Name != "sdb1" {
			t.Errorf("Lookup(%s) = %v, %v", arg, d, err)
		}
	}
	for _, arg := range []string{"sdc1", other, filepath.Join(dev, "missing")} {
		if _, err := reg.Lookup(arg); err == nil {
			t.Errorf("Lookup(%s) found something", arg)
		}
	}
	if _, err := reg.Lookup(other); !errors.Is(err, ErrNotActivated) {
		t.Errorf("unregistered device: %v, want ErrNotActivated", err)
	}
	if reg.ByFSUUID("0B9A4C8E-1111-4D7E-9D43-5A1B2C3D4E5F") == nil || reg.ByFSUUID("") != nil {
		t.Error("ByFSUUID")
	}
	if err := reg.Add(&Device{Name: "sdb1"}); !errors.Is(err, ErrAlreadyActivated) {
		t.Errorf("Add of a taken name: %v", err)
	}
	reg.Remove("sdb1")
	if reg.Device("sdb1") != nil {
		t.Error("Remove")
	}
	if n, err := BlockDevNum(origin); err != nil || n != (DevNum{Major: 253, Minor: 1}) {
		t.Errorf("BlockDevNum = %v %v", n, err)
	}
	if _, err := BlockDevNum(dev); err == nil {
		t.Error("BlockDevNum of a directory succeeded")
	}
}

func TestIdentityMatches(t *testing.T) {
	disk := &devid.ID{Kind: devid.KindDisk, Serial: "S1"}
	other := &devid.ID{Kind: devid.KindDisk, Serial: "S2"}
	id := Identity{Dev: DevNum{Major: 8, Minor: 17}, Size: 100, FSUUID: "abc", Stable: disk}
	if err := id.Matches(Identity{Dev: DevNum{Major: 8, Minor: 33}, Size: 100, FSUUID: "ABC", Stable: disk}); err != nil {
		t.Errorf("another number, same disk, size and UUID: %v", err)
	}
	if err := id.Matches(Identity{Size: 101, FSUUID: "abc", Stable: disk}); !errors.Is(err, ErrIdentityMismatch) {
		t.Errorf("size: %v", err)
	}
	if err := id.Matches(Identity{Size: 100, Stable: disk}); !errors.Is(err, ErrIdentityMismatch) {
		t.Errorf("no UUID: %v", err)
	}
	// A dd copy: same size, same filesystem UUID, another disk.
	if err := id.Matches(Identity{Size: 100, FSUUID: "abc", Stable: other}); !errors.Is(err, ErrIdentityMismatch) {
		t.Errorf("a copy on another disk: %v", err)
	}
	if err := id.Matches(Identity{Size: 100, FSUUID: "abc"}); !errors.Is(err, ErrIdentityMismatch) {
		t.Errorf("a device with no identity found: %v", err)
	}
	// Recorded without a stable identity (an older dmsnap, a device with
	// none): nothing matches, not even a device of the same size.
	noID := Identity{Size: 100}
	if err := noID.Matches(Identity{Size: 100, Stable: disk}); !errors.Is(err, ErrNoIdentity) || !errors.Is(err, ErrIdentityMismatch) {
		t.Errorf("recorded without identity: %v, want ErrNoIdentity", err)
	}
	if err := (Identity{Size: 100, Stable: &devid.ID{Kind: devid.KindOther}}).Matches(Identity{Size: 100, Stable: &devid.ID{Kind: devid.KindOther}}); !errors.Is(err, ErrNoIdentity) {
		t.Errorf("a device kind without identity: %v, want ErrNoIdentity", err)
	}
	if err := (Identity{Size: 100, Stable: disk}).Matches(Identity{Size: 100, FSUUID: "new", Stable: disk}); err != nil {
		t.Errorf("activated without a filesystem, one made since: %v", err)
	}
	if _, err := ParseDevNum("8:x"); err == nil {
		t.Error("ParseDevNum accepted 8:x")
	}
}
