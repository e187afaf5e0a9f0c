// Package hostfiles renders the files dmsnap installs on the host: the udev
// rule that re-attaches the activated devices when they appear, the
// systemd unit it hands them to, and the systemd unit that runs the
// watcher. It knows nothing of the registry: its
// callers hand it the devices (session.Registry.UdevDevices) and the paths
// (session.HostFileOptions fills in the global flags' defaults).
package hostfiles

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/dmsnap/dmsnap/internal/atomicfile"
	"github.com/dmsnap/dmsnap/internal/devid"
	"github.com/dmsnap/dmsnap/internal/devnum"
)

// Where the generated files go by default.
const (
	UdevRulePath    = "/etc/udev/rules.d/90-dmsnap.rules"
	SystemdUnitPath = SystemdDir + "/" + WatchUnitName
	AttachUnitPath  = SystemdDir + "/" + AttachUnitName
	DefaultBinary   = "/usr/local/sbin/dmsnap"
)

// Options are the paths the generated rule and unit run dmsnap with. Only
// Binary has a default here; StateDir and Store must be given (an empty one
// is refused), session.HostFileOptions fills in the global flags' defaults.
type Options struct {
	Binary   string // the dmsnap executable (DefaultBinary when "")
	StateDir string // --state
	Store    string // --store, for the unit
}

func (o Options) withDefaults() Options {
	if o.Binary == "" {
		o.Binary = DefaultBinary
	}
	return o
}

// plainPath: udev's RUN and systemd's ExecStart split on whitespace and give
// quotes and '%' / '$' their own meanings; a path made of these characters
// needs no quoting in either.
var plainPath = regexp.MustCompile(`^/[A-Za-z0-9_./+-]*$`)

func (o Options) check() error {
	for _, p := range []struct{ what, path string }{{"dmsnap binary", o.Binary}, {"state directory", o.StateDir}, {"store", o.Store}} {
		if err := checkPath(p.what, p.path); err != nil {
			return err
		}
	}
	return nil
}

// checkPath refuses a path the generated files cannot carry as it is.
func checkPath(what, path string) error {
	if !plainPath.MatchString(path) || strings.Contains(path, "/../") || strings.HasSuffix(path, "/..") {
		return fmt.Errorf("%s %q: the generated udev rule and systemd unit need an absolute path of letters, digits and _ . / + -", what, path)
	}
	return nil
}

// uuidRule is what may appear in an ID_FS_UUID match unquoted and unescaped.
var uuidRule = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

// Device is what the udev rule matches one activated device by.
type Device struct {
	Name   string     // its dmsnap name, for a comment
	Path   string     // the device path it was activated as, for a comment
	Dev    devnum.Dev // its number when last seen
	FSUUID string     // its filesystem's UUID; "" when not known
	Stable *devid.ID  // its stable identity; nil when not known
}

// UdevRules renders the udev rule that re-attaches the activated devices
// devs, read from the registry file registry (named in the rule's header),
// when they appear (at boot, on hot-plug): per device, lines matching
// what names it (a partition's ID_PART_ENTRY_UUID, a disk's
// ID_SERIAL_SHORT, a device-mapper device's DM_UUID, all set by
// 60-persistent-storage.rules, hence the 90- file), its filesystem UUID
// (ID_FS_UUID) when known, and its major:minor. The number alone is not
// enough: two disks may be found in the other order at the next boot.
// dmsnap's own devices (DM_NAME dmsnap-*) show the same filesystem UUID and
// are skipped. No device gives a rule file that matches nothing.
//
// A matching device is handed to systemd, as lvm2 does: udev's RUN is for
// very short tasks, and attach may wait for the lock or for the store's
// file system. The rule tags the device for systemd and asks for an
// instance of dmsnap-attach@.service (AttachUnit), which systemd names
// after the device's sysfs path and starts once the state directory and
// the store are mounted. Where systemd is not the init system
// (/run/systemd/system missing) the rule runs `dmsnap attach $devnode`
// itself.
//
// attach finds the device by its stable identity, number or filesystem
// UUID, refuses any device whose identity differs from the registry's, and
// does nothing when the stack is up already, so extra runs are harmless.
func UdevRules(registry string, devs []Device, opt Options) (string, error) {
	opt = opt.withDefaults()
	if err := opt.check(); err != nil {
		return "", err
	}
	const attach = `GOTO="dmsnap_attach"`
	var b strings.Builder
	ruleHead(&b, "re-attach activated devices", registry, "`dmsnap activate` and `dmsnap deactivate`", "dmsnap_end", "dmsnap-*")
	for _, d := range devs {
		fmt.Fprintf(&b, "\n# %s (%s)\n", d.Name, commentSafe(d.Path))
		if key, val := stableMatch(d.Stable); key != "" {
			fmt.Fprintf(&b, "ENV{%s}==\"%s\", %s\n", key, val, attach)
		}
		if uuidRule.MatchString(d.FSUUID) {
			fmt.Fprintf(&b, "ENV{ID_FS_UUID}==\"%s\", %s\n", d.FSUUID, attach)
		}
		fmt.Fprintf(&b, "ENV{MAJOR}==\"%d\", ENV{MINOR}==\"%d\", %s\n", d.Dev.Major, d.Dev.Minor, attach)
	}
	ruleTail(&b, len(devs) > 0, "dmsnap_attach", "dmsnap_end", AttachUnitName, "attach may wait; RUN must not", "attach at once",
		fmt.Sprintf("%s --state %s attach $devnode", opt.Binary, opt.StateDir))
	return b.String(), nil
}

// ruleTail ends a rule file: when any device matched (some), the label
// label, which hands the device to systemd's unit (a reason why), or
// without systemd runs run itself (what), and the end label.
func ruleTail(b *strings.Builder, some bool, label, end, unit, why, what, run string) {
	if some {
		fmt.Fprintf(b, "GOTO=\"%s\"\n\n", end)
		fmt.Fprintf(b, "LABEL=\"%s\"\n", label)
		fmt.Fprintf(b, "# Under systemd: %s (%s).\n", unit, why)
		fmt.Fprintf(b, "TEST==\"/run/systemd/system\", TAG+=\"systemd\", ENV{SYSTEMD_WANTS}+=\"%s\", GOTO=\"%s\"\n", unit, end)
		fmt.Fprintf(b, "# Without systemd: %s.\n", what)
		fmt.Fprintf(b, "RUN+=\"%s\"\n", run)
	}
	fmt.Fprintf(b, "\nLABEL=\"%s\"\n", end)
}

// ruleHead starts a rule file: what it does, the file it is made from and
// by whom, and the lines that skip to label end every event but a block
// device's add, and dmsnap's own devices (DM_NAME matching skipDM).
func ruleHead(b *strings.Builder, what, from, by, end, skipDM string) {
	fmt.Fprintf(b, "# dmsnap: %s when they appear (boot, hot-plug).\n", what)
	fmt.Fprintf(b, "# Generated from %s by %s; edits are lost.\n", from, by)
	fmt.Fprintf(b, "ACTION!=\"add\", GOTO=\"%s\"\n", end)
	fmt.Fprintf(b, "SUBSYSTEM!=\"block\", GOTO=\"%s\"\n", end)
	fmt.Fprintf(b, "ENV{DM_NAME}==\"%s\", GOTO=\"%s\"\n", skipDM, end)
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

// WriteUdevRules writes UdevRules(registry, devs, opt) to path atomically
// (UdevRulePath when ""). udev reads changed rule files on its next event.
func WriteUdevRules(path, registry string, devs []Device, opt Options) error {
	if path == "" {
		path = UdevRulePath
	}
	text, err := UdevRules(registry, devs, opt)
	if err != nil {
		return err
	}
	return WriteRule(path, text)
}

// WriteRule writes a rule file's text to path atomically (udev reads a
// changed rule file on its next event).
func WriteRule(path, text string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write udev rule: %w", err)
	}
	if err := atomicfile.WriteFile(path, []byte(text), 0o644); err != nil {
		return fmt.Errorf("write udev rule %s: %w", path, err)
	}
	return nil
}

// hardening is the sandboxing of dmsnap's units that keeps them working.
// The watcher must see the host's mounts as they come and go, and attach
// and the watcher write the state directory, the store, the udev rule in
// /etc and device nodes in /dev/mapper: so nothing that sets up a mount
// namespace (PrivateMounts, ProtectSystem, ProtectHome, PrivateTmp,
// PrivateDevices, ProtectKernelTunables, ProtectControlGroups,
// ProtectKernelLogs, ReadOnlyPaths, ...) and no DevicePolicy (device-mapper
// and loop devices come and go). What is left takes away what dmsnap never
// does: gain privileges, use capabilities beyond its own (device-mapper
// and loop ioctls need CAP_SYS_ADMIN, /dev/mapper nodes CAP_MKNOD, pinning
// a COW file CAP_LINUX_IMMUTABLE, files of other owners the DAC ones, a
// nearly full store the reserved blocks CAP_SYS_RESOURCE), open sockets
// other than unix (sd_notify) and netlink, run foreign-architecture system
// calls, change its personality, map memory writable and executable, take
// real-time scheduling, set setuid bits or create namespaces.
const hardening = `NoNewPrivileges=yes
CapabilityBoundingSet=CAP_SYS_ADMIN CAP_MKNOD CAP_LINUX_IMMUTABLE CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_CHOWN CAP_SYS_RESOURCE
RestrictAddressFamilies=AF_UNIX AF_NETLINK
SystemCallArchitectures=native
LockPersonality=yes
MemoryDenyWriteExecute=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RestrictNamespaces=yes
`

// The units' names.
const (
	WatchUnitName  = "dmsnap-watch.service"
	AttachUnitName = "dmsnap-attach@.service"
)

// SystemdUnit renders the service that runs `dmsnap watch`. It is
// Type=notify: the watcher says READY=1 once it has reconciled and watches
// the mount table, so units ordered after it start with every activated
// device protected. It needs the state directory and the store mounted
// before it starts. See hardening for what it may not do.
func SystemdUnit(opt Options) (string, error) {
	opt = opt.withDefaults()
	if err := opt.check(); err != nil {
		return "", err
	}
	return fmt.Sprintf(`[Unit]
Description=dmsnap watcher: mount-scoped snapshot sessions
Documentation=man:dmsnap-watch(8) man:dmsnap(8)
After=systemd-udevd.service
RequiresMountsFor=%[2]s %[3]s

[Service]
Type=notify
NotifyAccess=main
ExecStart=%[1]s --state %[2]s --store %[3]s watch
Restart=on-failure
RestartSec=5s
# Closing a session converts it; give a conversion in progress time to
# reach a step it can resume from.
TimeoutStopSec=90s
%[4]s
[Install]
WantedBy=multi-user.target
`, opt.Binary, opt.StateDir, opt.Store, hardening), nil
}

// AttachUnit renders dmsnap-attach@.service, which the udev rule asks for
// when an activated device appears. systemd names the instance after the
// device's sysfs path (%i, the device unit's name; %f, the path itself,
// which attach accepts), starts it once the state directory and the store
// are mounted, and stops it when the device goes. The device's own mounts
// are of /dev/mapper/dmsnap-NAME, which exists only once attach has built
// the stack, so they come after it. A oneshot: attach builds the stack and
// exits; the watcher, ordered after it, takes the sessions on.
func AttachUnit(opt Options) (string, error) {
	opt = opt.withDefaults()
	if err := opt.check(); err != nil {
		return "", err
	}
	return fmt.Sprintf(`[Unit]
Description=dmsnap: re-attach the activated device %%f
Documentation=man:dmsnap-attach(8)
DefaultDependencies=no
BindsTo=%%i.device
After=%%i.device systemd-udevd.service
RequiresMountsFor=%[2]s %[3]s
Before=%[4]s shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=%[1]s --state %[2]s attach %%f
# attach waits for the lock while another dmsnap command holds it.
TimeoutStartSec=5min
%[5]s`, opt.Binary, opt.StateDir, opt.Store, WatchUnitName, hardening), nil
}

func commentSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}
