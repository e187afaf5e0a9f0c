package session

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/dmsnap/dmsnap/internal/atomicfile"
	"github.com/dmsnap/dmsnap/internal/devid"
)

// Where the generated files go by default.
const (
	UdevRulePath    = "/etc/udev/rules.d/90-dmsnap.rules"
	SystemdUnitPath = "/etc/systemd/system/dmsnap-watch.service"
	DefaultBinary   = "/usr/local/sbin/dmsnap"
)

// GenOptions are the paths the generated rule and unit run dmsnap with.
type GenOptions struct {
	Binary   string // the dmsnap executable (DefaultBinary when "")
	StateDir string // --state (DefaultStateDir when "")
	Store    string // --store, for the unit (DefaultStore when "")
}

func (o GenOptions) withDefaults() GenOptions {
	if o.Binary == "" {
		o.Binary = DefaultBinary
	}
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.Store == "" {
		o.Store = DefaultStore
	}
	return o
}

// plainPath: udev's RUN and systemd's ExecStart split on whitespace and give
// quotes and '%' / '$' their own meanings; a path made of these characters
// needs no quoting in either.
var plainPath = regexp.MustCompile(`^/[A-Za-z0-9_./+-]*$`)

func (o GenOptions) check() error {
	for _, p := range []struct{ what, path string }{{"dmsnap binary", o.Binary}, {"state directory", o.StateDir}, {"store", o.Store}} {
		if !plainPath.MatchString(p.path) || strings.Contains(p.path, "/../") || strings.HasSuffix(p.path, "/..") {
			return fmt.Errorf("%s %q: the generated udev rule and systemd unit need an absolute path of letters, digits and _ . / + -", p.what, p.path)
		}
	}
	return nil
}

// uuidRule is what may appear in an ID_FS_UUID match unquoted and unescaped.
var uuidRule = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

// UdevRules renders the udev rule that re-attaches the activated devices of
// reg when they appear (at boot, on hot-plug): per device, lines matching
// what names it (a partition's ID_PART_ENTRY_UUID, a disk's
// ID_SERIAL_SHORT, a device-mapper device's DM_UUID, all set by
// 60-persistent-storage.rules, hence the 90- file), its filesystem UUID
// (ID_FS_UUID) when known, and its major:minor, each running
// `dmsnap attach $devnode`. The number alone is not enough: two disks may
// be found in the other order at the next boot. dmsnap's own devices
// (DM_NAME dmsnap-*) show the same filesystem UUID and are skipped. A
// registry with no device gives a rule file that matches nothing.
//
// attach finds the device by its stable identity, number or filesystem
// UUID, refuses any device whose identity differs from the registry's, and
// does nothing when the stack is up already, so extra runs are harmless.
func UdevRules(reg *Registry, opt GenOptions) (string, error) {
	opt = opt.withDefaults()
	if err := opt.check(); err != nil {
		return "", err
	}
	run := fmt.Sprintf(`RUN+="%s --state %s attach $devnode"`, opt.Binary, opt.StateDir)
	var b strings.Builder
	fmt.Fprintf(&b, "# dmsnap: re-attach activated devices when they appear (boot, hot-plug).\n")
	fmt.Fprintf(&b, "# Generated from %s by `dmsnap activate` and `dmsnap deactivate`; edits are lost.\n",
		RegistryPath(opt.StateDir))
	b.WriteString(`ACTION!="add", GOTO="dmsnap_end"` + "\n")
	b.WriteString(`SUBSYSTEM!="block", GOTO="dmsnap_end"` + "\n")
	b.WriteString(`ENV{DM_NAME}=="dmsnap-*", GOTO="dmsnap_end"` + "\n")
	for _, d := range reg.Devices {
		if d.State == DeviceDeactivating {
			continue
		}
		fmt.Fprintf(&b, "\n# %s (%s)\n", d.Name, commentSafe(d.Path))
		if key, val := stableMatch(d.Identity.Stable); key != "" {
			fmt.Fprintf(&b, "ENV{%s}==\"%s\", %s\n", key, val, run)
		}
		if uuidRule.MatchString(d.Identity.FSUUID) {
			fmt.Fprintf(&b, "ENV{ID_FS_UUID}==\"%s\", %s\n", d.Identity.FSUUID, run)
		}
		fmt.Fprintf(&b, "ENV{MAJOR}==\"%d\", ENV{MINOR}==\"%d\", %s\n", d.Identity.Dev.Major, d.Identity.Dev.Minor, run)
	}
	b.WriteString("\nLABEL=\"dmsnap_end\"\n")
	return b.String(), nil
}

// stableMatch is the udev property and value that name a device with
// stable identity id, or "" when none does (or the value is not safe in a
// rule: serial numbers may hold anything).
func stableMatch(id *devid.ID) (key, value string) {
	if id == nil {
		return "", ""
	}
	switch {
	case id.Kind == devid.KindPartition && uuidRule.MatchString(id.PartUUID):
		return "ID_PART_ENTRY_UUID", strings.ToLower(id.PartUUID)
	case id.Kind == devid.KindDisk && serialRule.MatchString(id.Serial):
		return "ID_SERIAL_SHORT", id.Serial
	case id.Kind == devid.KindDM && serialRule.MatchString(id.DMUUID):
		return "DM_UUID", id.DMUUID
	}
	return "", ""
}

// serialRule is what may appear in an ID_SERIAL_SHORT or DM_UUID match
// unquoted and unescaped.
var serialRule = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,128}$`)

// WriteUdevRules writes UdevRules(reg) to path atomically (UdevRulePath
// when ""). udev reads changed rule files on its next event.
func WriteUdevRules(path string, reg *Registry, opt GenOptions) error {
	if path == "" {
		path = UdevRulePath
	}
	text, err := UdevRules(reg, opt)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write udev rule: %w", err)
	}
	if err := atomicfile.WriteFile(path, []byte(text), 0o644); err != nil {
		return fmt.Errorf("write udev rule %s: %w", path, err)
	}
	return nil
}

// SystemdUnit renders the service that runs `dmsnap watch`. The watcher
// must see the mounts of the host, so the unit sets up no private mount
// namespace (no PrivateMounts, ProtectSystem, ...); it needs the state
// directory and the store mounted before it starts.
func SystemdUnit(opt GenOptions) (string, error) {
	opt = opt.withDefaults()
	if err := opt.check(); err != nil {
		return "", err
	}
	return fmt.Sprintf(`[Unit]
Description=dmsnap watcher: mount-scoped snapshot sessions
After=systemd-udevd.service
RequiresMountsFor=%[2]s %[3]s

[Service]
Type=simple
ExecStart=%[1]s --state %[2]s --store %[3]s watch
Restart=on-failure
RestartSec=5s
# Closing a session converts it; give a conversion in progress time to
# reach a step it can resume from.
TimeoutStopSec=90s

[Install]
WantedBy=multi-user.target
`, opt.Binary, opt.StateDir, opt.Store), nil
}

func commentSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}
