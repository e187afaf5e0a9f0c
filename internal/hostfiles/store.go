package hostfiles

import (
	"fmt"
	"strings"
)

// The managed stores' files (dmsnap store create).
const (
	StoreUdevRulePath = "/etc/udev/rules.d/89-dmsnap-store.rules"
	StoreUnitName     = "dmsnap-store@.service"
	StoreUnitPath     = "/etc/systemd/system/" + StoreUnitName
)

// StoreUdevRules renders the udev rule that brings the managed stores
// back when their devices appear: per store, lines matching its device's
// stable identity and its number (Device.Name is the store's path, for a
// comment; FSUUID is unused: the raw device shows no filesystem, only
// dmsnap's header). A match is handed to dmsnap-store@.service under
// systemd (StoreUnit), else `dmsnap store up $devnode` runs at once.
// store up reads the header and refuses a device that is not the store
// it names, so a number reused by another device after a reboot does no
// harm. records is the file the rule was made from, for its header.
func StoreUdevRules(records string, stores []Device, opt Options) (string, error) {
	opt = opt.withDefaults()
	if err := opt.check(); err != nil {
		return "", err
	}
	const up = `GOTO="dmsnap_store_up"`
	var b strings.Builder
	ruleHead(&b, "bring managed stores back", records, "`dmsnap store create`", "dmsnap_store_end", "dmsnap*")
	for _, d := range stores {
		fmt.Fprintf(&b, "\n# the store on %s (%s)\n", commentSafe(d.Name), commentSafe(d.Path))
		if key, val := stableMatch(d.Stable); key != "" {
			fmt.Fprintf(&b, "ENV{%s}==\"%s\", %s\n", key, val, up)
		}
		fmt.Fprintf(&b, "ENV{MAJOR}==\"%d\", ENV{MINOR}==\"%d\", %s\n", d.Dev.Major, d.Dev.Minor, up)
	}
	ruleTail(&b, len(stores) > 0, "dmsnap_store_up", "dmsnap_store_end", StoreUnitName, "waits have no place in RUN", "bring it up at once",
		fmt.Sprintf("%s --state %s store up $devnode", opt.Binary, opt.StateDir))
	return b.String(), nil
}

// StoreUnit renders dmsnap-store@.service, which the store rule asks for
// when a managed store's device appears: `dmsnap store up` makes the
// store's linear device and mounts it. It runs before the watcher and the
// attach units; attach itself also brings up, or waits for, the store of
// the device it attaches (dmsnap attach), since systemd cannot order one
// template's instances before another's.
func StoreUnit(opt Options) (string, error) {
	opt = opt.withDefaults()
	if err := opt.check(); err != nil {
		return "", err
	}
	return fmt.Sprintf(`[Unit]
Description=dmsnap: bring back the managed store on %%f
Documentation=man:dmsnap-store-up(8)
DefaultDependencies=no
BindsTo=%%i.device
After=%%i.device systemd-udevd.service
RequiresMountsFor=%[2]s
Before=%[3]s shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=%[1]s --state %[2]s store up %%f
TimeoutStartSec=5min
%[4]s`, opt.Binary, opt.StateDir, WatchUnitName, hardening), nil
}
