package hostfiles

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/internal/devid"
	"github.com/dmsnap/dmsnap/internal/devnum"
)

// The global flags' defaults (session.HostFileOptions fills them in).
var defaults = Options{StateDir: "/var/lib/dmsnap", Store: "/snapshot"}

const registry = "/var/lib/dmsnap/registry.json"

// sampleDevices are the devices of session's sample registry that the rule
// re-attaches (session.Registry.UdevDevices).
func sampleDevices() []Device {
	return []Device{
		{Name: "sdb1", Path: "/dev/sdb1", Dev: devnum.Dev{Major: 8, Minor: 17}, FSUUID: "0b9a4c8e-1111-4d7e-9d43-5a1b2c3d4e5f",
			Stable: &devid.ID{Kind: devid.KindPartition, PartUUID: "5a1b2c3d-01", PartNumber: 1, Start: 2048, Sectors: 1 << 21}},
		{Name: "a-disk", Path: "/dev/vdb", Dev: devnum.Dev{Major: 254, Minor: 16}},
	}
}

func TestUdevRules(t *testing.T) {
	text, err := UdevRules(registry, sampleDevices(), defaults)
	if err != nil {
		t.Fatal(err)
	}
	want := `# dmsnap: re-attach activated devices when they appear (boot, hot-plug).
# Generated from /var/lib/dmsnap/registry.json by ` + "`dmsnap activate` and `dmsnap deactivate`" + `; edits are lost.
ACTION!="add", GOTO="dmsnap_end"
SUBSYSTEM!="block", GOTO="dmsnap_end"
ENV{DM_NAME}=="dmsnap-*", GOTO="dmsnap_end"

# sdb1 (/dev/sdb1)
ENV{ID_PART_ENTRY_UUID}=="5a1b2c3d-01", GOTO="dmsnap_attach"
ENV{ID_FS_UUID}=="0b9a4c8e-1111-4d7e-9d43-5a1b2c3d4e5f", GOTO="dmsnap_attach"
ENV{MAJOR}=="8", ENV{MINOR}=="17", GOTO="dmsnap_attach"

# a-disk (/dev/vdb)
ENV{MAJOR}=="254", ENV{MINOR}=="16", GOTO="dmsnap_attach"
GOTO="dmsnap_end"

LABEL="dmsnap_attach"
# Under systemd: dmsnap-attach@.service (attach may wait; RUN must not).
TEST=="/run/systemd/system", TAG+="systemd", ENV{SYSTEMD_WANTS}+="dmsnap-attach@.service", GOTO="dmsnap_end"
# Without systemd: attach at once.
RUN+="/usr/local/sbin/dmsnap --state /var/lib/dmsnap attach $devnode"

LABEL="dmsnap_end"
`
	if text != want {
		t.Fatalf("rule text:\n%s\nwant:\n%s", text, want)
	}

	empty, err := UdevRules("/srv/state/registry.json", nil, Options{Binary: "/usr/bin/dmsnap", StateDir: "/srv/state", Store: "/snapshot"})
	if err != nil || strings.Contains(empty, "RUN") || strings.Contains(empty, "SYSTEMD_WANTS") || !strings.Contains(empty, "/srv/state/registry.json") {
		t.Fatalf("empty registry: %v\n%s", err, empty)
	}

	// A UUID that is not safe in a rule falls back to the device number.
	devs := []Device{{Name: "x", Path: "/dev/x\nRUN+=\"/bin/evil\"", Dev: devnum.Dev{Major: 7, Minor: 3}, FSUUID: `a", RUN+="/bin/evil`}}
	text, err = UdevRules(registry, devs, defaults)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, "#") && strings.Contains(line, "evil") {
			t.Fatalf("unsafe values reached a rule line %q:\n%s", line, text)
		}
	}
	if !strings.Contains(text, `ENV{MAJOR}=="7", ENV{MINOR}=="3"`) {
		t.Fatalf("no fallback to the device number:\n%s", text)
	}
	state, store := defaults.StateDir, defaults.Store
	for _, bad := range []Options{
		{Binary: "dmsnap", StateDir: state, Store: store},
		{Binary: "/opt/my dmsnap", StateDir: state, Store: store},
		{StateDir: "/var/lib/$x", Store: store},
		{StateDir: state, Store: "/a/../b"},
		{Store: store}, // no state directory: the caller fills in the defaults
		{StateDir: state},
	} {
		if _, err := UdevRules(registry, nil, bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
		if _, err := SystemdUnit(bad); err == nil {
			t.Errorf("unit: %+v accepted", bad)
		}
		if _, err := AttachUnit(bad); err == nil {
			t.Errorf("attach unit: %+v accepted", bad)
		}
	}
}

func TestWriteUdevRules(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.d", "90-dmsnap.rules")
	if err := WriteUdevRules(path, registry, sampleDevices(), defaults); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(b), "0b9a4c8e-1111") {
		t.Fatalf("%s: %v", b, err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v", fi.Mode())
	}
}

func TestSystemdUnit(t *testing.T) {
	text, err := SystemdUnit(Options{Binary: "/usr/bin/dmsnap", StateDir: "/var/lib/dmsnap", Store: "/data/snapshots"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"\n[Service]\nType=notify\nNotifyAccess=main\nExecStart=/usr/bin/dmsnap --state /var/lib/dmsnap --store /data/snapshots watch\n",
		"RequiresMountsFor=/var/lib/dmsnap /data/snapshots\n",
		"Documentation=man:dmsnap-watch(8) man:dmsnap(8)\n",
		"Restart=on-failure\n",
		"NoNewPrivileges=yes\n",
		"RestrictAddressFamilies=AF_UNIX AF_NETLINK\n",
		"SystemCallArchitectures=native\n",
		"\n[Install]\nWantedBy=multi-user.target\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("unit lacks %q:\n%s", want, text)
		}
	}
	noMountNamespace(t, text)
}

func TestAttachUnit(t *testing.T) {
	text, err := AttachUnit(Options{Binary: "/usr/bin/dmsnap", StateDir: "/var/lib/dmsnap", Store: "/data/snapshots"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"DefaultDependencies=no\n",
		"BindsTo=%i.device\n",
		"RequiresMountsFor=/var/lib/dmsnap /data/snapshots\n",
		"Before=dmsnap-watch.service shutdown.target\n",
		"\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/bin/dmsnap --state /var/lib/dmsnap attach %f\n",
		"CapabilityBoundingSet=CAP_SYS_ADMIN ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("attach unit lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "[Install]") {
		t.Errorf("attach unit has an [Install] section: only udev starts it:\n%s", text)
	}
	noMountNamespace(t, text)
}

// noMountNamespace fails when a unit sets up a mount namespace of its own:
// the watcher would not see the host's mounts come and go, and attach
// could not make nodes in /dev/mapper or write /etc/udev.
func noMountNamespace(t *testing.T, unit string) {
	t.Helper()
	for _, bad := range []string{"PrivateMounts", "ProtectSystem", "MountFlags", "PrivateTmp", "PrivateDevices", "ProtectHome",
		"ProtectKernelTunables", "ProtectControlGroups", "ProtectKernelLogs", "ReadOnlyPaths", "InaccessiblePaths", "DevicePolicy", "ProtectClock"} {
		if strings.Contains(unit, bad) {
			t.Errorf("unit sets %s, which needs a mount namespace or closes devices:\n%s", bad, unit)
		}
	}
}
