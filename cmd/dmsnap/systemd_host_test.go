//go:build vmhost

package main

// A real systemd boot (`make test-systemd`, part of `make test`): the guest
// boots Debian 12's systemd and udev from a root disk
// (hack/vm/systemd-root.sh) instead of the busybox init, twice, on disks
// that outlive each boot. What it proves is what the busybox guest cannot:
// the udev rule's hand-off to dmsnap-attach@.service at boot, the units'
// ordering (after the state directory's and the store's mounts, the
// store's through the drop-in, since the device's store is not the one the
// units were written with; before the device's own mount from fstab), the
// watcher as a Type=notify service under its hardening, closing and
// converting sessions, and a shutdown that leaves everything attachable.
//
// Boot 1 installs the binary and the units (install-files), makes the
// state and the store disks and their fstab lines, starts the watcher,
// activates the device with the other store, mounts it through systemd
// (data.mount from fstab), writes, unmounts and powers off.
// Boot 2 finds the stack built at boot and the device mounted, writes,
// unmounts, checks both sessions, and restores the first.

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dmsnap/dmsnap/internal/vmtest"
)

// sdWait is a shell function: sdWait N CMD... retries CMD every 0.2 s, N
// times, and fails the script with the last output when it never succeeds.
const sdWait = `
sdWait() { n=$1; shift; i=0; until "$@" >/tmp/sdwait.out 2>&1; do i=$((i+1)); [ $i -lt $n ] || { echo "gave up waiting for: $*"; cat /tmp/sdwait.out; exit 9; }; sleep 0.2; done; }
closed() { [ "$(dmsnap sessions list data --json | grep -c '"state": *"closed"')" = "$1" ]; }
`

const systemdBoot1 = sdWait + `
set -e
cp /work/dmsnap /usr/local/sbin/dmsnap && chmod 755 /usr/local/sbin/dmsnap
mkfs.ext4 -q -F /dev/vdb
mkfs.ext4 -q -F -b 4096 /dev/vdc
mkfs.ext4 -q -F -b 4096 /dev/vdd
mkdir -p /var/lib/dmsnap /srv/snaps /data /snapshot
printf '%s\n' '/dev/vdc /var/lib/dmsnap ext4 defaults 0 0' '/dev/vdd /srv/snaps ext4 defaults 0 0' >>/etc/fstab
systemctl daemon-reload
systemctl start var-lib-dmsnap.mount srv-snaps.mount
dmsnap install-files /
systemctl daemon-reload
systemctl enable dmsnap-watch.service
systemctl start dmsnap-watch.service
echo "WATCH1 $(systemctl is-active dmsnap-watch.service)"
dmsnap activate /dev/vdb --name data --store /srv/snaps
echo "PRE $(sha256sum /dev/mapper/dmsnap-data | cut -d' ' -f1)"
echo "DROPIN $(cat /etc/systemd/system/dmsnap-attach@.service.d/50-dmsnap-stores.conf | grep RequiresMountsFor)"
echo '/dev/mapper/dmsnap-data /data ext4 defaults 0 0' >>/etc/fstab
systemctl daemon-reload
systemctl start data.mount
sdWait 300 sh -c 'dmsnap status --json | grep -q "\"state\": *\"open\""'
dd if=/dev/urandom of=/data/boot1 bs=1M count=4 conv=fsync 2>/dev/null
systemctl stop data.mount
sdWait 600 closed 1
echo BOOT1-DONE
`

const systemdBoot2 = sdWait + `
set -e
unit=$(systemctl list-units --all --no-legend --plain 'dmsnap-attach@*' | awk '{print $1}' | head -n1)
echo "ATTACH ${unit:-none} $(systemctl show -p ActiveState --value "$unit")/$(systemctl show -p Result --value "$unit")"
echo "ATTACH-AFTER $(systemctl show -p After --value "$unit" | tr ' ' '\n' | grep -E '^(srv-snaps|var-lib-dmsnap)\.mount$' | sort | tr '\n' ,)"
echo "WATCH-AFTER $(systemctl show -p After --value dmsnap-watch.service | tr ' ' '\n' | grep -E '^(srv-snaps|var-lib-dmsnap)\.mount$' | sort | tr '\n' ,)"
echo "WATCH2 $(systemctl is-active dmsnap-watch.service)"
echo "DATA $(awk '$2 == "/data" {print $1}' /proc/mounts)"
done_at=$(systemctl show -p ExecMainExitTimestampMonotonic --value "$unit")
mounted_at=$(systemctl show -p ActiveEnterTimestampMonotonic --value data.mount)
echo "ORDER $([ "$done_at" -gt 0 ] && [ "$done_at" -le "$mounted_at" ] && echo attach-first || echo "attach $done_at mount $mounted_at")"
sdWait 300 sh -c 'dmsnap status --json | grep -q "\"state\": *\"open\""'
dd if=/dev/urandom of=/data/boot2 bs=1M count=4 conv=fsync 2>/dev/null
systemctl stop data.mount
sdWait 600 closed 2
dmsnap sessions list data
dmsnap sessions verify
first=$(dmsnap sessions list data --json | grep -o '"id": *"[^"]*"' | head -n1 | cut -d'"' -f4)
echo "SESSION $first"
dmsnap restore data --session "$first" --yes
echo "POST $(sha256sum /dev/mapper/dmsnap-data | cut -d' ' -f1)"
echo "DENIED $(journalctl -b -o cat -u dmsnap-watch.service -u 'dmsnap-attach@*' | grep -ciE 'not permitted|permission denied' || true)"
echo "FAILED $(systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ,)"
echo "DMSNAP-FAILED $(systemctl --failed --no-legend --plain | awk '{print $1}' | grep dmsnap | tr '\n' ,)"
echo BOOT2-DONE
`

func TestSystemdBoot(t *testing.T) {
	g := newGuest(t, map[string]int64{"data": 64 << 20, "state": 64 << 20, "store": 256 << 20})
	img, err := exec.Command(filepath.Join(g.root, "hack/vm/systemd-root.sh")).Output()
	if err != nil {
		t.Fatalf("hack/vm/systemd-root.sh: %v", err)
	}
	g.disk["root"] = filepath.Join(g.dir, "root.img")
	if out, err := exec.Command("cp", "--sparse=always", strings.TrimSpace(string(img)), g.disk["root"]).CombinedOutput(); err != nil {
		t.Fatalf("copy the root disk: %v\n%s", err, out)
	}
	g.env = append(g.env, "DMSNAP_VM_INIT=/init-root", "DMSNAP_VM_APPEND=systemd.show_status=0")
	g.files = []string{"--file", filepath.Join(g.root, "hack/vm/init-root") + ":/init-root"}
	g.guestBin = "/work/dmsnap"
	disks := []string{"root", "data", "state", "store"}

	out1 := g.boot(1, systemdBoot1, disks...)
	if !strings.Contains(out1, "BOOT1-DONE") {
		t.Fatalf("boot 1 did not finish:\n%s", out1)
	}
	if w := field(t, out1, "WATCH1"); w != "active" {
		t.Fatalf("boot 1: the watcher is %s after systemctl start (Type=notify), want active:\n%s", w, out1)
	}
	if d := field(t, out1, "DROPIN"); d != "RequiresMountsFor=/srv/snaps" {
		t.Fatalf("boot 1: the attach unit's drop-in says %q, want the device's store:\n%s", d, out1)
	}
	pre := field(t, out1, "PRE")

	out2 := g.boot(2, systemdBoot2, disks...)
	if !strings.Contains(out2, "BOOT2-DONE") {
		t.Fatalf("boot 2 did not finish:\n%s", out2)
	}
	for _, c := range []struct{ key, want, what string }{
		{"ATTACH", "", "the attach unit started by the udev rule"},
		{"ATTACH-AFTER", "srv-snaps.mount,var-lib-dmsnap.mount,", "the attach unit's ordering"},
		{"WATCH-AFTER", "srv-snaps.mount,var-lib-dmsnap.mount,", "the watcher's ordering"},
		{"WATCH2", "active", "the watcher at boot"},
		{"DATA", "/dev/mapper/dmsnap-data", "the device's mount from fstab"},
		{"ORDER", "attach-first", "attach before the device's mount"},
		{"POST", pre, "the device after restoring boot 1's session"},
		{"DENIED", "0", "permission errors in the units' journal"},
	} {
		got := line(out2, c.key)
		if c.key == "ATTACH" {
			if !strings.HasPrefix(got, "dmsnap-attach@") || !strings.HasSuffix(got, " active/success") {
				t.Errorf("boot 2: %s: %q, want an active dmsnap-attach@ instance\n", c.what, got)
			}
			continue
		}
		if got != c.want {
			t.Errorf("boot 2: %s: %q, want %q", c.what, got, c.want)
		}
	}
	if f := line(out2, "DMSNAP-FAILED"); f != "" {
		t.Errorf("boot 2: failed dmsnap units: %s", f)
	}
	t.Logf("boot 2: failed units (any): %q", line(out2, "FAILED"))
	if t.Failed() {
		t.Logf("boot 2's output:\n%s", out2)
	}
	// The disk itself, read on the host after the guest's shutdown, holds
	// the device as boot 1's session found it.
	if h := vmtest.SHA256(t, g.disk["data"]); h != pre {
		t.Errorf("%s on the host: sha256 %s, before boot 1's session %s", g.disk["data"], h, pre)
	}
	for _, k := range []string{"ATTACH", "ATTACH-AFTER", "WATCH-AFTER", "DATA", "ORDER", "DENIED"} {
		t.Logf("boot 2: %s %s", k, line(out2, k))
	}
	t.Logf("the restore of %s gave the pre-session bytes: %v", line(out2, "SESSION"), !t.Failed())
}

// line is the rest of the first "KEY ..." line of out ("" when none).
func line(out, key string) string {
	for _, l := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(l, key+" "); ok {
			return strings.TrimSpace(rest)
		}
		if l == key {
			return ""
		}
	}
	return ""
}
