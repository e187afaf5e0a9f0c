//go:build vmhost

package main

// A guest power cut, driven from the host (`make test-powercut`, part of
// `make test`): the origin and the store are virtio disks backed by files
// here, so they outlive the guest. The store is ext4 with 4 KiB blocks, so
// the COW's first 4 MiB are written straight to its device and the rest
// through the filesystem (dm.AttachCOW). Boot 1 activates the origin, runs the
// watcher, mounts, writes records with fsync — printing "ACK n" after each
// fsync returned — and cuts its power while writes are still going. Boot 2
// mounts the store, runs `dmsnap attach` and the watcher, and checks every
// acknowledged record is on the filesystem, every session verifies, and
// restoring the session of boot 1 gives the device back as it was before it.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/internal/vmtest"
)

// boot1Disks starts both boot-1 scripts: a fresh ext4 on the device under
// test (/dev/vda) and on the persistent disk (/dev/vdb, mounted at
// /persist: state and store), and PRE, the device's SHA-256 before
// anything else.
const boot1Disks = `
set -e
D="dmsnap --state /persist/state --store /persist/store"
mkfs.ext4 -q -F /dev/vda
mkfs.ext4 -q -F -b 4096 /dev/vdb
mkdir -p /persist /mnt/pc
mount /dev/vdb /persist
echo "PRE $(sha256sum /dev/vda | cut -d' ' -f1)"
`

// Boot 1. PRE is the origin before activation; records are 4 KiB blocks of
// one file, "rec NNNNNN" at the start of block NNNNNN-1, each fsync'd
// before its ACK line. A background writer keeps dirtying another file
// without fsync, so the cut comes mid-write.
const powercutBoot1 = boot1Disks + `
$D activate /dev/vda --name pc --prealloc 4MiB
echo "FAST $($D status --json | grep -o '"cow_fast_bytes": *[0-9]*' | grep -o '[0-9]*$')"
$D watch --interval 1s >/persist/watch1.log 2>&1 &
n=0; until grep -q msg=watching /persist/watch1.log; do n=$((n+1)); [ $n -lt 150 ] || exit 11; sleep 0.2; done
mount /dev/mapper/dmsnap-pc /mnt/pc
n=0; until $D status --json | grep -q '"state": *"open"'; do n=$((n+1)); [ $n -lt 150 ] || exit 12; sleep 0.2; done
echo OPEN
(while :; do dd if=/dev/urandom of=/mnt/pc/junk bs=64k count=32 conv=notrunc 2>/dev/null; done) &
i=0
while :; do
	i=$((i+1))
	printf 'rec %06d\n' $i | dd of=/mnt/pc/acked bs=4096 seek=$((i-1)) conv=notrunc,sync,fsync 2>/dev/null
	echo "ACK $i"
	[ $i = 40 ] && vm-powercut 2 &
done
`

// Boot 2: attach, watch, check, restore. FOUND lines list the records on
// the filesystem; POST is the origin after the restore, RAW the raw device
// after deactivation.
const powercutBoot2 = `
set -e
D="dmsnap --state /persist/state --store /persist/store"
mkdir -p /persist /mnt/pc
mount /dev/vdb /persist
$D attach /dev/vda
$D watch --interval 1s >/persist/watch2.log 2>&1 &
wpid=$!
n=0; until grep -q msg=watching /persist/watch2.log; do n=$((n+1)); [ $n -lt 150 ] || exit 21; sleep 0.2; done
n=0; until $D sessions list pc --json | grep -q '"state": *"closed"'; do n=$((n+1)); [ $n -lt 300 ] || { cat /persist/watch2.log; exit 22; }; sleep 0.2; done
first=$($D sessions list pc --json | grep -o '"id": *"[^"]*"' | head -n1 | cut -d'"' -f4)
echo "SESSION $first"
mount /dev/mapper/dmsnap-pc /mnt/pc
tr -d '\000' </mnt/pc/acked | grep -o 'rec [0-9]*' | sed 's/^/FOUND /'
umount /mnt/pc
n=0; until [ "$($D sessions list pc --json | grep -c '"state": *"closed"')" = 2 ]; do n=$((n+1)); [ $n -lt 300 ] || { cat /persist/watch2.log; exit 23; }; sleep 0.2; done
$D sessions list pc
$D sessions verify
$D restore pc --session "$first" --yes
echo "POST $(sha256sum /dev/mapper/dmsnap-pc | cut -d' ' -f1)"
kill $wpid; wait $wpid || true
$D deactivate pc
echo "RAW $(sha256sum /dev/vda | cut -d' ' -f1)"
umount /persist
sync
echo BOOT2-DONE
`

// powercutDisks makes the two disks of a power-cut test (origin and store,
// sparse files) and returns a function that boots the guest on them with
// a script; the guest's output is returned.
func powercutDisks(t *testing.T) (origin string, boot func(n int, script string) string) {
	// The store disk holds the state directory too: a revert's merge
	// store needs its plan plus a 64 MiB margin there, which 128 MiB did
	// not always leave beside the COW files (the revert then wrote the
	// plan instead of merging, and the "merging" cut never came).
	g := newGuest(t, map[string]int64{"origin": 64 << 20, "store": 256 << 20})
	return g.disk["origin"], func(n int, script string) string {
		t.Helper()
		return g.boot(n, script, "origin", "store")
	}
}

// guest boots the test guest, several times, on disks that outlive each
// boot: sparse files in a test directory, attached as virtio disks.
type guest struct {
	t    *testing.T
	root string            // the repository
	bin  string            // bin/dmsnap, the release build
	dir  string            // the test's directory
	disk map[string]string // name -> file
	env  []string          // for hack/vm/run, beside DMSNAP_VM_DISKS
	// files are more hack/vm/run --file arguments.
	files []string
	// guestBin is where the binary is put in the guest.
	guestBin string
}

// newGuest makes the named disks, each a sparse file of its size.
func newGuest(t *testing.T, disks map[string]int64) *guest {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	g := &guest{t: t, root: root, bin: filepath.Join(root, "bin", "dmsnap"), dir: t.TempDir(),
		disk: map[string]string{}, env: []string{"DMSNAP_VM_TIMEOUT=600"}, guestBin: "/usr/bin/dmsnap"}
	if _, err := os.Stat(g.bin); err != nil {
		t.Fatalf("%s: run `make build` first (%v)", g.bin, err)
	}
	for name, size := range disks {
		p := filepath.Join(g.dir, name+".img")
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, size); err != nil {
			t.Fatal(err)
		}
		g.disk[name] = p
	}
	return g
}

// boot runs script in the guest with the named disks attached in order
// (/dev/vda, /dev/vdb, ...) and returns its output; a boot that fails is
// fatal.
func (g *guest) boot(n int, script string, disks ...string) string {
	t := g.t
	t.Helper()
	sh := filepath.Join(g.dir, fmt.Sprintf("boot%d.sh", n))
	if err := os.WriteFile(sh, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, d := range disks {
		files = append(files, g.disk[d])
	}
	args := append([]string{"--file", g.bin + ":" + g.guestBin, "--file", sh + ":/work/boot.sh"}, g.files...)
	cmd := exec.Command(filepath.Join(g.root, "hack/vm/run"), append(args, "--", "sh", "/work/boot.sh")...)
	cmd.Env = append(append(os.Environ(), "DMSNAP_VM_DISKS="+strings.Join(files, " ")), g.env...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("boot %d: %v", n, time.Since(start).Round(time.Second))
	if err != nil {
		t.Fatalf("boot %d: %v\n%s", n, err, out)
	}
	return string(out)
}

func TestPowerCut(t *testing.T) {
	origin, boot := powercutDisks(t)
	out1 := boot(1, powercutBoot1)
	if !strings.Contains(out1, "hack/vm/run: power cut") {
		t.Fatalf("boot 1 did not end in a power cut:\n%s", out1)
	}
	pre := field(t, out1, "PRE")
	// The store is ext4 with 4 KiB blocks: the COW's first 4 MiB go
	// straight to its device, the rest through the file (dm.AttachCOW).
	if fast := field(t, out1, "FAST"); fast != strconv.Itoa(4<<20) {
		t.Fatalf("boot 1: %s bytes of the COW mapped to the store's device, want %d:\n%s", fast, 4<<20, out1)
	}
	acked := 0
	for _, m := range regexp.MustCompile(`(?m)^ACK ([0-9]+)$`).FindAllStringSubmatch(out1, -1) {
		n, _ := strconv.Atoi(m[1])
		acked = max(acked, n)
	}
	if acked < 40 {
		t.Fatalf("boot 1 acknowledged %d records before the cut, want at least 40:\n%s", acked, out1)
	}

	out2 := boot(2, powercutBoot2)
	if !strings.Contains(out2, "BOOT2-DONE") {
		t.Fatalf("boot 2 did not finish:\n%s", out2)
	}
	found := map[int]bool{}
	for _, m := range regexp.MustCompile(`(?m)^FOUND rec ([0-9]+)$`).FindAllStringSubmatch(out2, -1) {
		n, _ := strconv.Atoi(m[1])
		found[n] = true
	}
	var missing []int
	for i := 1; i <= acked; i++ {
		if !found[i] {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		t.Errorf("records acknowledged by fsync before the power cut and missing after it: %v (acknowledged 1..%d)\n%s", missing, acked, out2)
	}
	if post := field(t, out2, "POST"); post != pre {
		t.Errorf("origin after restoring the session of boot 1 (%s): sha256 %s, before it %s\n%s", field(t, out2, "SESSION"), post, pre, out2)
	}
	if raw := field(t, out2, "RAW"); raw != pre {
		t.Errorf("raw device after deactivation: sha256 %s, before boot 1's session %s", raw, pre)
	}
	// The disk file itself, read on the host.
	if h := vmtest.SHA256(t, origin); h != pre {
		t.Errorf("%s on the host: sha256 %s, before boot 1's session %s", origin, h, pre)
	}
	t.Logf("soak-count power-cuts 1 acked-records %d", acked)
	t.Logf("power cut after %d acknowledged records; %d found after it; restore of %s gave the pre-session bytes: %v",
		acked, len(found), field(t, out2, "SESSION"), !t.Failed())
}

// field is the value of the first "KEY value" line of out.
func field(t *testing.T, out, key string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + key + ` (\S+)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no %s line in the guest's output:\n%s", key, out)
	}
	return m[1]
}

// Revert on unmount and a power cut in the middle of a revert. Boot 1
// activates the origin with --on-unmount revert, mounts it, writes 12 MiB,
// unmounts, and cuts the power at the point WAIT_FOR waits for: the
// watcher holding the device (the session not closed yet), or status
// showing the revert's instant restore (recorded, maybe merging: the
// kernel's copy is slowed down so that it is still under way). PRE is the
// origin before the mount.
const revertBoot1 = boot1Disks + `
$D activate /dev/vda --name pc --prealloc 4MiB --on-unmount revert
$D watch --interval 1s >/persist/watch1.log 2>&1 &
n=0; until grep -q msg=watching /persist/watch1.log; do n=$((n+1)); [ $n -lt 150 ] || exit 11; sleep 0.2; done
mount /dev/mapper/dmsnap-pc /mnt/pc
dd if=/dev/urandom of=/mnt/pc/big bs=1M count=12 conv=fsync 2>/dev/null
umount /mnt/pc
echo 1 >/sys/module/dm_snapshot/parameters/snapshot_copy_throttle
n=0; until WAIT_FOR; do n=$((n+1)); [ $n -lt 600 ] || { cat /persist/watch1.log; exit 12; }; sleep 0.02; done
echo REVERTING
vm-powercut 0
`

// Boot 2: attach must show PRE before anything mounts (AFTER); a mount
// cycle under the watcher reverts to PRE again (CYCLE); the raw device
// after deactivation is PRE (RAW).
const revertBoot2 = `
set -e
D="dmsnap --state /persist/state --store /persist/store"
mkdir -p /persist /mnt/pc
mount /dev/vdb /persist
$D attach /dev/vda
echo "AFTER $(sha256sum /dev/mapper/dmsnap-pc | cut -d' ' -f1)"
$D watch --interval 1s >/persist/watch2.log 2>&1 &
wpid=$!
n=0; until grep -q msg=watching /persist/watch2.log; do n=$((n+1)); [ $n -lt 150 ] || exit 21; sleep 0.2; done
# The watcher holds the device while it closes the session that recorded
# the revert, once the copy resumed at attach has ended: a mount then
# fails as busy, and is retried.
n=0; until mount /dev/mapper/dmsnap-pc /mnt/pc 2>/dev/null; do n=$((n+1)); [ $n -lt 300 ] || { cat /persist/watch2.log; exit 23; }; sleep 0.05; done
echo "MOUNT-RETRIES $n"
[ ! -e /mnt/pc/big ] || { echo "BIG-AFTER-ATTACH"; ls -l /mnt/pc; }
dd if=/dev/urandom of=/mnt/pc/small bs=1M count=4 conv=fsync 2>/dev/null
umount /mnt/pc
n=0; until grep -q "reverted on unmount" /persist/watch2.log && ! $D status --json | grep -q '"merge": {\|"revert_pending": true'; do n=$((n+1)); [ $n -lt 600 ] || { cat /persist/watch2.log; exit 22; }; sleep 0.2; done
echo "CYCLE $(sha256sum /dev/mapper/dmsnap-pc | cut -d' ' -f1)"
$D sessions list pc
kill $wpid; wait $wpid || true
$D deactivate pc
echo "RAW $(sha256sum /dev/vda | cut -d' ' -f1)"
umount /persist
sync
echo BOOT2-DONE
`

func TestPowerCutRevert(t *testing.T) {
	for _, tc := range []struct{ name, waitFor string }{
		{"holding", `grep -q "holding the device" /persist/watch1.log`},
		{"merging", `$D status --json | grep -q '"merge": {'`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			origin, boot := powercutDisks(t)
			out1 := boot(1, strings.Replace(revertBoot1, "WAIT_FOR", tc.waitFor, 1))
			if !strings.Contains(out1, "REVERTING") || !strings.Contains(out1, "hack/vm/run: power cut") {
				t.Fatalf("boot 1 did not cut the power in the middle of a revert:\n%s", out1)
			}
			pre := field(t, out1, "PRE")
			out2 := boot(2, revertBoot2)
			if !strings.Contains(out2, "BOOT2-DONE") {
				t.Fatalf("boot 2 did not finish:\n%s", out2)
			}
			t.Logf("boot 2: the mount after attach failed %s times as busy before it went through", field(t, out2, "MOUNT-RETRIES"))
			if after := field(t, out2, "AFTER"); after != pre {
				t.Errorf("origin right after attach, before any mount: sha256 %s, before the mount of boot 1 %s\n%s", after, pre, out2)
			}
			if strings.Contains(out2, "BIG-AFTER-ATTACH") {
				t.Errorf("boot 1's file is on the device after attach\n%s", out2)
			}
			if cycle := field(t, out2, "CYCLE"); cycle != pre {
				t.Errorf("origin after a mount cycle of boot 2: sha256 %s, want %s\n%s", cycle, pre, out2)
			}
			if raw := field(t, out2, "RAW"); raw != pre {
				t.Errorf("raw device after deactivation: sha256 %s, want %s", raw, pre)
			}
			if h := vmtest.SHA256(t, origin); h != pre {
				t.Errorf("%s on the host: sha256 %s, want %s", origin, h, pre)
			}
			t.Logf("soak-count power-cuts 1")
			t.Logf("power cut while %s (revert on unmount): the device showed the pre-mount bytes at attach, after a mount cycle and after deactivation: %v", tc.name, !t.Failed())
		})
	}
}
