package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/storedev"
)

// Write cost: what a snapshot costs the writes of the device it protects.
// Every configuration's backing "disk" is a file on the benchmark's tmpfs
// behind a loop device, so all of them sit on the same medium:
//
//   - raw: fio on that loop device;
//   - dmsnap: `dmsnap activate` on it (COW file on the ext4 store, behind a
//     loop device with direct I/O, as dmsnap runs it), fio on the origin
//     /dev/mapper/dmsnap-NAME with the session armed;
//   - lvm-snap: an LVM2 classic snapshot (dm-snapshot, the kernel mechanism
//     dmsnap uses) of an LV on a PV over such a loop device, COW chunk
//     size the same as dmsnap's; fio on the origin LV;
//   - lvm-thin: a thin LV in a thin pool (64 KiB blocks, the smallest
//     dm-thin allows) with a thin snapshot; fio on the origin thin LV.

// WriteJob is one fio job's result on one configuration.
type WriteJob struct {
	Job     string  `json:"job"`
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	MBps    float64 `json:"mb_per_s"`
	Cost    float64 `json:"cost_vs_raw"` // seconds / raw's seconds
}

// WriteRow is one configuration.
type WriteRow struct {
	Config     string     `json:"config"`
	ChunkSize  int64      `json:"chunk_size,omitempty"`
	Jobs       []WriteJob `json:"jobs"`
	CowBytes   int64      `json:"cow_bytes"`             // snapshot space used after the fio jobs
	Untar      float64    `json:"untar_seconds"`         // untar-like workload on ext4, to sync
	UntarCost  float64    `json:"untar_cost_vs_raw"`     // Untar / raw's
	UntarCow   int64      `json:"untar_cow_bytes"`       // snapshot space used by it
	UntarBytes int64      `json:"untar_bytes,omitempty"` // file bytes the workload writes
	// Activate is how long `dmsnap activate` took before the fio jobs: the
	// stack, the first session armed, its COW written ahead (--prealloc).
	Activate float64 `json:"activate_seconds,omitempty"`
}

// fioJob is a named fio command line (without the device).
type fioJob struct {
	name  string
	bytes int64
	args  []string
}

func fioJobs(scale int64) []fioJob {
	seq := max(128<<20/scale, 16<<20)
	rnd := max(16<<20/scale, 2<<20)
	common := []string{"--direct=1", "--ioengine=psync", "--end_fsync=1", "--randrepeat=1", "--output-format=terse"}
	seqJob := append([]string{"--rw=write", "--bs=1M", "--offset=0", fmt.Sprintf("--size=%d", seq)}, common...)
	rndJob := append([]string{"--rw=randwrite", "--bs=4k", fmt.Sprintf("--offset=%d", seq), fmt.Sprintf("--size=%d", rnd)}, common...)
	// As users run: libaio at queue depth 1 and 16 (the kernel batches the
	// commits of concurrent exceptions), and a 70/30 read/write mix, each
	// on a region of its own, first touches. Bytes are all I/O done, reads
	// included.
	aio := func(at, depth int64, rw ...string) []string {
		return append([]string{"--bs=4k", fmt.Sprintf("--offset=%d", at), fmt.Sprintf("--size=%d", rnd),
			"--direct=1", "--ioengine=libaio", fmt.Sprintf("--iodepth=%d", depth), "--end_fsync=1", "--randrepeat=1", "--output-format=terse"}, rw...)
	}
	return []fioJob{
		{"seq 1 MiB, first touch", seq, seqJob},
		{"seq 1 MiB, re-write", seq, seqJob},
		{"rand 4 KiB, first touch", rnd, rndJob},
		{"rand 4 KiB, re-write", rnd, rndJob},
		{"rand 4 KiB, first touch, libaio iodepth 1", rnd, aio(seq+rnd, 1, "--rw=randwrite")},
		{"rand 4 KiB, first touch, libaio iodepth 16", rnd, aio(seq+2*rnd, 16, "--rw=randwrite")},
		{"randrw 70/30 4 KiB, first touch, libaio iodepth 16", rnd, aio(seq+3*rnd, 16, "--rw=randrw", "--rwmixread=70")},
	}
}

// target is a configured device under test.
type target struct {
	origin   string
	cowBytes func() (int64, error) // snapshot space in use
	activate float64               // seconds `dmsnap activate` took (dmsnap only)
	teardown func() error
}

// lvmConf makes lvm work in the guest, which runs no udev and no lvmetad.
const lvmConf = `activation{udev_sync=0 udev_rules=0 monitoring=0} devices{obtain_device_list_from_udev=0 external_device_info_source="none"} global{thin_check_executable="" use_lvmpolld=0}`

func lvm(args ...string) (string, error) {
	args = append([]string{args[0], "--config", lvmConf}, args[1:]...)
	out, err := exec.Command("lvm", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("lvm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// backing makes a sparse file of size bytes on the tmpfs behind a loop
// device.
func backing(name string, size int64) (*dm.Loop, func(), error) {
	f := filepath.Join(benchRoot, name)
	if err := sparse(f, size); err != nil {
		return nil, nil, err
	}
	l, err := dm.AttachLoop(f, dm.LoopOptions{})
	if err != nil {
		os.Remove(f)
		return nil, nil, err
	}
	return l, func() {
		l.Close()
		dm.DetachLoop(l.Path)
		os.Remove(f)
	}, nil
}

// deviceOr returns the block device given, or else a fresh one: a loop
// device over a sparse tmpfs file of size bytes (backing). free releases
// what it made (nothing for a given device).
func deviceOr(given, name string, size int64) (string, func(), error) {
	if given != "" {
		return given, func() {}, nil
	}
	l, free, err := backing(name, size)
	if err != nil {
		return "", nil, err
	}
	return l.Path, free, nil
}

const dmsnapName = "wbench"

// setupDmsnap activates dmsnap on a fresh disk of size bytes with chunk
// bytes per chunk; prep runs on the raw device first (mkfs).
func setupDmsnap(size, chunk int64, storeDir string, prep func(dev string) error, extra ...string) (*target, error) {
	disk, free, err := backing("wdisk.img", size)
	if err != nil {
		return nil, err
	}
	return activateOn(disk.Path, free, chunk, storeDir, prep, extra...)
}

// activateOn activates dmsnap on the block device disk (free releases it
// at teardown) with the store in storeDir; prep runs on the device first.
func activateOn(disk string, free func(), chunk int64, storeDir string, prep func(dev string) error, extra ...string) (*target, error) {
	if prep != nil {
		if err := prep(disk); err != nil {
			free()
			return nil, err
		}
	}
	store := filepath.Join(storeDir, "wstore")
	state := filepath.Join(benchRoot, "wstate")
	os.RemoveAll(store)
	os.RemoveAll(state)
	dmsnap := func(args ...string) error {
		return run("dmsnap", append([]string{"--store", store, "--state", state}, args...)...)
	}
	start := time.Now()
	if err := dmsnap(append([]string{"activate", disk, "--name", dmsnapName, "--chunk-size", fmt.Sprintf("%dKiB", chunk>>10)}, extra...)...); err != nil {
		free()
		return nil, err
	}
	activate := time.Since(start).Seconds()
	if c, err := (dm.Stack{Name: dmsnapName}).COWInfo(1); err == nil {
		logf("activate %s: %.2f s; COW of %d MiB, %d MiB mapped to the store's device (route %s), %d segments", disk, activate, c.Bytes>>20, c.FastBytes>>20, c.Route, c.Segments)
	}
	return &target{
		activate: activate,
		origin:   "/dev/mapper/dmsnap-" + dmsnapName,
		cowBytes: func() (int64, error) { return snapshotUsed(dmsnapName) },
		teardown: func() error {
			err := dmsnap("deactivate", dmsnapName)
			free()
			os.RemoveAll(store)
			os.RemoveAll(state)
			return err
		},
	}, nil
}

// setupDmsnapWatched is setupDmsnap with `dmsnap watch` running from the
// activation to the teardown, so that the armed session's COW is written
// ahead and mapped as the jobs fill it (session.GrowCOWs): the row shows
// what a session larger than --prealloc costs.
func setupDmsnapWatched(size, chunk int64, storeDir string, prep func(dev string) error, extra ...string) (*target, error) {
	t, err := setupDmsnap(size, chunk, storeDir, prep, extra...)
	if err != nil {
		return nil, err
	}
	var log bytes.Buffer
	w := exec.Command("dmsnap", "--store", filepath.Join(storeDir, "wstore"), "--state", filepath.Join(benchRoot, "wstate"), "watch")
	w.Stdout, w.Stderr = &log, &log
	if err := w.Start(); err != nil {
		return nil, errors.Join(err, t.teardown())
	}
	down := t.teardown
	t.teardown = func() error {
		w.Process.Signal(unix.SIGTERM)
		werr := w.Wait()
		grows := strings.Count(log.String(), `msg="COW grown"`)
		if c, err := (dm.Stack{Name: dmsnapName}).COWInfo(1); err == nil {
			logf("watcher: %d grows; COW of %d MiB, %d MiB mapped to the store's device, %d segments", grows, c.Bytes>>20, c.FastBytes>>20, c.Segments)
		}
		if werr != nil {
			werr = fmt.Errorf("dmsnap watch: %v\n%s", werr, log.String())
		}
		return errors.Join(werr, down())
	}
	return t, nil
}

// snapshotUsed is the COW space the armed snapshot of stack name uses,
// metadata included, as the kernel reports it (what LVM's snap_percent
// says too). The COW file's allocated size would count the zeros written
// ahead of the kernel (activate --prealloc).
func snapshotUsed(name string) (int64, error) {
	s := dm.Stack{Name: name}
	snaps, err := s.Snapshots()
	if err != nil {
		return 0, err
	}
	if len(snaps) != 1 {
		return 0, fmt.Errorf("want one snapshot of %s, found %d", name, len(snaps))
	}
	st, err := s.SnapshotStatus(snaps[0].N)
	if err != nil {
		return 0, err
	}
	return int64(st.Allocated) * dm.SectorSize, nil
}

// setupDmsnapOn activates dmsnap with its store on an fstype filesystem
// (made with mkfsOpts) of its own, on a loop device over a 1 GiB tmpfs file.
func setupDmsnapOn(fstype string, mkfsOpts []string, size, chunk int64, prep func(dev string) error, extra ...string) (*target, error) {
	return setupDmsnapStore(fstype, mkfsOpts, func() (string, func(), error) {
		dev, free, err := backing("wstore-fs.img", 1<<30)
		if err != nil {
			return "", nil, err
		}
		return dev.Path, free, nil
	}, size, chunk, prep, extra...)
}

// setupDmsnapOnLV activates dmsnap with its store on ext4 on an LVM
// logical volume (volume group svg on a 1 GiB tmpfs file's loop device),
// as a default Debian or RHEL install has it: the COW's mapped part then
// goes straight to the physical volume, with no loop device (dm/below.go).
func setupDmsnapOnLV(size, chunk int64, prep func(dev string) error, extra ...string) (*target, error) {
	return setupDmsnapStore("ext4", nil, func() (string, func(), error) {
		os.MkdirAll("/run/lock/lvm", 0o755)
		pv, free, err := backing("wstore-pv.img", 1<<30+8<<20)
		if err != nil {
			return "", nil, err
		}
		down := func() {
			lvm("vgremove", "-q", "-f", "svg")
			lvm("pvremove", "-q", "-y", pv.Path)
			free()
		}
		for _, args := range [][]string{{"pvcreate", "-q", "-y", pv.Path}, {"vgcreate", "-q", "svg", pv.Path},
			{"lvcreate", "-q", "-y", "-Wn", "-Zn", "-l", "100%FREE", "-n", "store", "svg"}} {
			if _, err := lvm(args...); err != nil {
				down()
				return "", nil, err
			}
		}
		return "/dev/mapper/svg-store", down, nil
	}, size, chunk, prep, extra...)
}

// setupDmsnapManaged activates dmsnap with its store on a managed store
// (dmsnap store create, ext4) on a 1 GiB tmpfs file's loop device: the
// COW's mapped part goes straight to that loop device, below the store's
// dmsnap_store linear device, with no loop device of dmsnap's own.
func setupDmsnapManaged(size, chunk int64, prep func(dev string) error, extra ...string) (*target, error) {
	disk, free, err := backing("wstore-managed.img", 1<<30+8<<20)
	if err != nil {
		return nil, err
	}
	dir, state := filepath.Join(benchRoot, "wstore-managed"), filepath.Join(benchRoot, "mstate")
	os.RemoveAll(state)
	down := func() {
		unix.Unmount(dir, 0)
		if rs, err := storedev.LoadRecords(state); err == nil {
			for _, r := range rs.Stores {
				storedev.System{}.Unwrap(r.UUID)
			}
		}
		os.RemoveAll(state)
		free()
	}
	if err := run("dmsnap", "--state", state, "--store", dir, "store", "create", disk.Path, "--fs", "ext4"); err != nil {
		down()
		return nil, err
	}
	return setupDmsnapOver(size, chunk, dir, down, prep, extra...)
}

// setupDmsnapOver activates dmsnap with its store in dir, a store that
// down takes away after dmsnap's own teardown (or at once, when the
// activation fails).
func setupDmsnapOver(size, chunk int64, dir string, down func(), prep func(dev string) error, extra ...string) (*target, error) {
	t, err := setupDmsnap(size, chunk, dir, prep, extra...)
	if err != nil {
		down()
		return nil, err
	}
	teardown := t.teardown
	t.teardown = func() error {
		err := teardown()
		down()
		return err
	}
	return t, nil
}

// setupDmsnapStore activates dmsnap with its store on an fstype filesystem
// made on the block device that makeDev gives (its free releases it).
func setupDmsnapStore(fstype string, mkfsOpts []string, makeDev func() (string, func(), error), size, chunk int64, prep func(dev string) error, extra ...string) (*target, error) {
	dev, free, err := makeDev()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(benchRoot, "wstore-fs")
	args := []string{"-q", "-f", dev}
	if fstype == "ext4" {
		args = []string{"-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", dev}
	}
	if err := run("mkfs."+fstype, append(mkfsOpts, args...)...); err != nil {
		free()
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		free()
		return nil, err
	}
	if err := unix.Mount(dev, dir, fstype, 0, ""); err != nil {
		free()
		return nil, fmt.Errorf("mount %s on %s: %w", fstype, dir, err)
	}
	down := func() { unix.Unmount(dir, 0); free() }
	return setupDmsnapOver(size, chunk, dir, down, prep, extra...)
}

// lvmSetup makes volume group bvg on a fresh PV of pvSize bytes, or on
// the disk lvmDisk when it is set (the disks part).
func lvmSetup(pvSize int64) (func() error, error) {
	os.MkdirAll("/run/lock/lvm", 0o755)
	pv, free, err := deviceOr(lvmDisk, "wpv.img", pvSize)
	if err != nil {
		return nil, err
	}
	if _, err := lvm("pvcreate", "-q", "-y", pv); err != nil {
		free()
		return nil, err
	}
	if _, err := lvm("vgcreate", "-q", "bvg", pv); err != nil {
		lvm("pvremove", "-q", "-y", pv)
		free()
		return nil, err
	}
	return func() error {
		_, err := lvm("vgremove", "-q", "-f", "bvg")
		lvm("pvremove", "-q", "-y", pv)
		free()
		return err
	}, nil
}

// lvmDisk, when set, is the block device lvmSetup makes its PV on.
var lvmDisk string

// lvPath is an LV's device node. With no udev only /dev/dm-N exists; find
// N by the device-mapper name in sysfs.
func lvPath(lv string) (string, error) {
	want := "bvg-" + strings.ReplaceAll(lv, "-", "--")
	names, _ := filepath.Glob("/sys/block/dm-*/dm/name")
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err == nil && strings.TrimSpace(string(b)) == want {
			return "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(n))), nil
		}
	}
	return "", fmt.Errorf("no device-mapper device %s", want)
}

// lvBytes reads an LV's size times one of its percent fields.
func lvBytes(lv, field string) (int64, error) {
	out, err := lvm("lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_size,"+field, "bvg/"+lv)
	if err != nil {
		return 0, err
	}
	f := strings.Fields(out)
	if len(f) != 2 {
		return 0, fmt.Errorf("lvs %s: %q", lv, out)
	}
	size, err1 := strconv.ParseFloat(f[0], 64)
	pct, err2 := strconv.ParseFloat(f[1], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("lvs %s: %q", lv, out)
	}
	return int64(size * pct / 100), nil
}

// setupHop stacks the kernel's snapshot targets by hand, as LVM classic
// does (snapshot-origin over a linear device, snapshot with a persistent
// store), with the COW on a loop device (direct I/O) over a device of the
// same kind as LVM's PV: cowDev, or a loop device over a tmpfs file. That
// is the path dmsnap's mapped COW segments take (dm.AttachCOW: a loop
// device over the store's device), so the row says what that one loop
// device costs, apart from everything else dmsnap does.
func setupHop(size, chunk int64, cowDev string, prep func(dev string) error) (*target, error) {
	disk, free, err := deviceOr(diskHop, "wdisk.img", size)
	if err != nil {
		return nil, err
	}
	frees := []func(){free}
	down := func() {
		for i := len(frees) - 1; i >= 0; i-- {
			frees[i]()
		}
	}
	if prep != nil {
		if err := prep(disk); err != nil {
			down()
			return nil, err
		}
	}
	cowDev, freeCOW, err := deviceOr(cowDev, "whop.img", size+size/64+8<<20)
	if err != nil {
		down()
		return nil, err
	}
	frees = append(frees, freeCOW)
	hop, err := dm.AttachLoop(cowDev, dm.LoopOptions{AutoClear: true, DirectIO: true, BlockDevice: true, BlockSize: 4096})
	if err != nil {
		down()
		return nil, err
	}
	if !hop.DirectIO {
		hop.Close()
		down()
		return nil, fmt.Errorf("the loop device over %s took no direct I/O", cowDev)
	}
	s := dm.Stack{Name: "whop", Device: disk}
	if err := s.Build(); err != nil {
		hop.Close()
		down()
		return nil, err
	}
	err = s.AddSnapshot(1, hop.Path, uint32(chunk/dm.SectorSize))
	hop.Close()
	if err != nil {
		s.Teardown()
		down()
		return nil, err
	}
	return &target{origin: s.OriginPath(), cowBytes: func() (int64, error) { return snapshotUsed("whop") }, teardown: func() error {
		err := s.Teardown()
		down()
		return err
	}}, nil
}

// diskHop, when set, is the device setupHop snapshots (the disks part).
var diskHop string

func setupLVMSnap(size, chunk int64, prep func(dev string) error) (*target, error) {
	down, err := lvmSetup(2*size + 64<<20)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*target, error) { down(); return nil, err }
	if _, err := lvm("lvcreate", "-q", "-y", "-Wn", "-Zn", "-L", fmt.Sprintf("%db", size), "-n", "origin", "bvg"); err != nil {
		return fail(err)
	}
	origin, err := lvPath("origin")
	if err != nil {
		return fail(err)
	}
	if prep != nil {
		if err := prep(origin); err != nil {
			return fail(err)
		}
	}
	// A COW as large as the origin plus its metadata never fills.
	if _, err := lvm("lvcreate", "-q", "-y", "-s", "-c", fmt.Sprintf("%dk", chunk>>10), "-L", fmt.Sprintf("%db", size+size/64+8<<20), "-n", "snap", "bvg/origin"); err != nil {
		return fail(err)
	}
	if origin, err = lvPath("origin"); err != nil {
		return fail(err)
	}
	return &target{origin: origin, cowBytes: func() (int64, error) { return lvBytes("snap", "snap_percent") }, teardown: down}, nil
}

func setupLVMThin(size int64, prep func(dev string) error) (*target, error) {
	down, err := lvmSetup(2*size + 64<<20)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*target, error) { down(); return nil, err }
	if _, err := lvm("lvcreate", "-q", "-y", "-Wn", "-Zn", "-L", fmt.Sprintf("%db", 2*size), "-c", "64k", "-T", "bvg/pool"); err != nil {
		return fail(err)
	}
	if _, err := lvm("lvcreate", "-q", "-y", "-V", fmt.Sprintf("%db", size), "-T", "bvg/pool", "-n", "thin"); err != nil {
		return fail(err)
	}
	origin, err := lvPath("thin")
	if err != nil {
		return fail(err)
	}
	if prep != nil {
		if err := prep(origin); err != nil {
			return fail(err)
		}
	} else {
		// Provision every block first, as on the other configurations
		// where the device holds data: the snapshot then shares them all.
		if err := fillDevice(origin); err != nil {
			return fail(err)
		}
	}
	if _, err := lvm("lvcreate", "-q", "-y", "-s", "-n", "tsnap", "bvg/thin"); err != nil {
		return fail(err)
	}
	base, err := lvBytes("pool", "data_percent")
	if err != nil {
		return fail(err)
	}
	return &target{origin: origin, cowBytes: func() (int64, error) {
		b, err := lvBytes("pool", "data_percent")
		return b - base, err
	}, teardown: down}, nil
}

func setupRaw(size int64, prep func(dev string) error) (*target, error) {
	disk, free, err := backing("wdisk.img", size)
	if err != nil {
		return nil, err
	}
	if prep != nil {
		if err := prep(disk.Path); err != nil {
			free()
			return nil, err
		}
	}
	return &target{origin: disk.Path, cowBytes: func() (int64, error) { return 0, nil }, teardown: func() error { free(); return nil }}, nil
}

// config sets up one configuration of a size-byte device.
type config struct {
	name  string
	chunk int64
	setup func(size int64, prep func(string) error) (*target, error)
}

func configs(chunk int64) []config {
	return []config{
		{"raw device", 0, setupRaw},
		{"dmsnap origin, session armed (store: ext4)", chunk, func(size int64, prep func(string) error) (*target, error) {
			return setupDmsnap(size, chunk, storeMount, prep)
		}},
		{"dmsnap, store: ext4, --prealloc 0 (all of the COW through the filesystem)", chunk, func(size int64, prep func(string) error) (*target, error) {
			return setupDmsnap(size, chunk, storeMount, prep, "--prealloc", "0")
		}},
		{"dmsnap, store: ext4, --prealloc 32MiB, `dmsnap watch` writing the COW ahead as it fills", chunk, func(size int64, prep func(string) error) (*target, error) {
			return setupDmsnapWatched(size, chunk, storeMount, prep, "--prealloc", "32MiB")
		}},
		{"dmsnap origin, session armed (store: xfs)", chunk, func(size int64, prep func(string) error) (*target, error) {
			return setupDmsnapOn("xfs", nil, size, chunk, prep)
		}},
		{"dmsnap origin, session armed (store: tmpfs, no journal)", chunk, func(size int64, prep func(string) error) (*target, error) {
			return setupDmsnap(size, chunk, benchRoot, prep)
		}},
		{cfgLVMStore, chunk, func(size int64, prep func(string) error) (*target, error) {
			return setupDmsnapOnLV(size, chunk, prep)
		}},
		{cfgManagedStore, chunk, func(size int64, prep func(string) error) (*target, error) {
			return setupDmsnapManaged(size, chunk, prep)
		}},
		{"LVM2 classic snapshot origin", chunk, func(size int64, prep func(string) error) (*target, error) {
			return setupLVMSnap(size, chunk, prep)
		}},
		{"the same kernel targets, COW behind one more loop device (direct I/O)", chunk, func(size int64, prep func(string) error) (*target, error) {
			return setupHop(size, chunk, "", prep)
		}},
		{"LVM2 thin snapshot origin (64 KiB blocks)", 64 << 10, setupLVMThin},
	}
}

// cfgLVMStore is dmsnap with its store on an LVM logical volume.
const cfgLVMStore = "dmsnap origin, session armed (store: ext4 on an LVM LV, COW below it, no loop device)"

// cfgManagedStore is dmsnap with a managed store (dmsnap store create).
const cfgManagedStore = "dmsnap origin, session armed (managed store: ext4 on dmsnap_store, COW below it, no loop device)"

// Names of the attribution rows (attrib.go) in the gap part.
const (
	cfgHopLinear         = "by hand, COW: a dm-linear device over one loop device"
	cfgStore             = "by hand, COW: one loop device over the mounted ext4 store's device (a file written ahead)"
	cfgStoreLinear       = "by hand, COW: a dm-linear device over that loop device (one segment)"
	cfgStoreLinearTail   = "by hand, COW: that and a second segment over a write-through tail loop device (dmsnap's shape)"
	cfgFile              = "by hand, COW: one loop device over a tmpfs file (512-byte blocks, buffered)"
	cfgFileDmsnapOptions = "by hand, COW: a dm-linear device over a loop device over a tmpfs file (4 KiB blocks, direct I/O asked: dmsnap's shape)"
)

// attribConfigs are the attribution rows (attrib.go).
func attribConfigs(chunk int64) []config {
	shaped := func(sh cowShape) func(int64, func(string) error) (*target, error) {
		return func(size int64, prep func(string) error) (*target, error) { return setupShaped(size, chunk, sh, prep) }
	}
	return []config{
		{cfgHopLinear, chunk, shaped(cowShape{linear: true})},
		{cfgStore, chunk, shaped(cowShape{onStore: true})},
		{cfgStoreLinear, chunk, shaped(cowShape{onStore: true, linear: true})},
		{cfgStoreLinearTail, chunk, shaped(cowShape{onStore: true, linear: true, tail: true})},
		{cfgFile, chunk, shaped(cowShape{file: true})},
		{cfgFileDmsnapOptions, chunk, shaped(cowShape{file: true, dmsnap: true, linear: true})},
	}
}

// The disks part: the device under test, LVM's PV and dmsnap's stores each
// on a virtio disk of its own, backed by a file on the host and opened
// there with O_DIRECT (cache=none), so that a flush costs what the host's
// storage makes it cost, as on a real machine, where a loop device over a
// tmpfs file (the write part) makes it free.
const (
	diskDev     = "/dev/vda" // the device under test: raw, or activated
	diskPV      = "/dev/vdb" // LVM's PV
	diskStore   = "/dev/vdc" // dmsnap's store: ext4
	diskMount   = "/mnt/dstore"
	diskManaged = "/dev/vdd" // dmsnap's managed store (store create)
	diskMMount  = "/mnt/dmanaged"
	diskLVPV    = "/dev/vde" // the PV of dmsnap's store on an LVM LV (VG dsvg)
	diskLVMount = "/mnt/dlvstore"
	diskMState  = "/run/bench-mstate" // the managed store's state directory
)

// The rows of dmsnap on the disks part's managed and LVM stores.
const (
	cfgDiskManaged  = "dmsnap origin, session armed (managed store on its own disk, COW below it)"
	cfgDiskLVMStore = "dmsnap origin, session armed (store: ext4 on an LVM LV on its own disk, COW below it)"
)

func diskConfigs(chunk int64) []config {
	onDisk := func(extra ...string) func(int64, func(string) error) (*target, error) {
		return func(size int64, prep func(string) error) (*target, error) {
			return activateOn(diskDev, func() {}, chunk, diskMount, prep, extra...)
		}
	}
	return []config{
		{"raw disk", 0, func(size int64, prep func(string) error) (*target, error) {
			if err := prep(diskDev); err != nil {
				return nil, err
			}
			return &target{origin: diskDev, cowBytes: func() (int64, error) { return 0, nil }, teardown: func() error { return nil }}, nil
		}},
		{"dmsnap origin, session armed (store: ext4 on its own disk)", chunk, onDisk()},
		{"dmsnap, store: ext4 on its own disk, --prealloc 0", chunk, onDisk("--prealloc", "0")},
		{cfgDiskManaged, chunk, func(size int64, prep func(string) error) (*target, error) {
			return activateOn(diskDev, func() {}, chunk, diskMMount, prep)
		}},
		{cfgDiskLVMStore, chunk, func(size int64, prep func(string) error) (*target, error) {
			return activateOn(diskDev, func() {}, chunk, diskLVMount, prep)
		}},
		{"LVM2 classic snapshot origin (PV: its own disk)", chunk, func(size int64, prep func(string) error) (*target, error) {
			lvmDisk = diskPV
			defer func() { lvmDisk = "" }()
			return setupLVMSnap(size, chunk, prep)
		}},
		{"the same kernel targets, COW on a loop device (direct I/O) over its own disk", chunk, func(size int64, prep func(string) error) (*target, error) {
			diskHop = diskDev
			defer func() { diskHop = "" }()
			return setupHop(size, chunk, diskPV, prep)
		}},
	}
}

// benchDisks runs the write jobs (no untar) on the disks part's
// configurations. The disks must be there (run.sh attaches them).
func benchDisks(rep *Report, scale int64) error {
	unmount, err := mountDiskStore()
	if err != nil {
		return err
	}
	defer unmount()
	size := max(int64(256<<20)/scale, 64<<20)
	rep.DiskDevice = size
	jobs := fioJobs(scale)
	for _, c := range diskConfigs(chunkSize) {
		row, err := oneConfig(c, size, jobs, "")
		if err != nil {
			return fmt.Errorf("disks, %s: %w", c.name, err)
		}
		rep.Disks = append(rep.Disks, row)
	}
	ratios(rep.Disks)
	return nil
}

// mountDiskStore makes the disks part's three stores, each on a disk of
// its own: a fresh ext4 on diskStore, a managed store (dmsnap store
// create) on diskManaged, and ext4 on an LVM LV on diskLVPV; unmount
// undoes them.
func mountDiskStore() (unmount func(), err error) {
	for _, d := range []string{diskDev, diskPV, diskStore, diskManaged, diskLVPV} {
		if _, err := os.Stat(d); err != nil {
			return nil, fmt.Errorf("disks part: %s is missing (hack/bench/run.sh attaches five virtio disks): %w", d, err)
		}
	}
	var undo []func()
	unmount = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	mkfsMount := func(dev, dir string) error {
		if err := run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", dev); err != nil {
			return err
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(dev, dir, "ext4", 0, ""); err != nil {
			return fmt.Errorf("mount %s: %w", dev, err)
		}
		undo = append(undo, func() { unix.Unmount(dir, 0) })
		return nil
	}
	if err := mkfsMount(diskStore, diskMount); err != nil {
		unmount()
		return nil, err
	}
	os.RemoveAll(diskMState)
	if err := run("dmsnap", "--state", diskMState, "--store", diskMMount, "store", "create", diskManaged, "--fs", "ext4", "--force"); err != nil {
		unmount()
		return nil, err
	}
	undo = append(undo, func() {
		unix.Unmount(diskMMount, 0)
		if rs, err := storedev.LoadRecords(diskMState); err == nil {
			for _, r := range rs.Stores {
				storedev.System{}.Unwrap(r.UUID)
			}
		}
		os.RemoveAll(diskMState)
	})
	os.MkdirAll("/run/lock/lvm", 0o755)
	undo = append(undo, func() {
		lvm("vgremove", "-q", "-f", "dsvg")
		lvm("pvremove", "-q", "-y", diskLVPV)
	})
	for _, args := range [][]string{{"pvcreate", "-q", "-y", "-ff", diskLVPV}, {"vgcreate", "-q", "dsvg", diskLVPV},
		{"lvcreate", "-q", "-y", "-Wn", "-Zn", "-l", "100%FREE", "-n", "store", "dsvg"}} {
		if _, err := lvm(args...); err != nil {
			unmount()
			return nil, err
		}
	}
	if err := mkfsMount("/dev/mapper/dsvg-store", diskLVMount); err != nil {
		unmount()
		return nil, err
	}
	return unmount, nil
}

// fillDevice writes the whole device once (raw, before any snapshot), so
// the snapshot's first-touch copies read real data.
func fillDevice(dev string) error {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	tmpl := template()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		for i := 0; i < len(buf); i += chunkSize {
			chunkData(buf[i:i+chunkSize], tmpl, uint64(off+int64(i))/chunkSize, 9)
		}
		n := min(int64(len(buf)), size-off)
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return err
		}
	}
	return f.Sync()
}

// runFio runs the jobs on dev and fills row.Jobs.
func runFio(row *WriteRow, dev string, jobs []fioJob) error {
	for _, j := range jobs {
		m, _, err := measure("fio", append([]string{"--name=bench", "--filename=" + dev}, j.args...)...)
		if err != nil {
			return err
		}
		row.Jobs = append(row.Jobs, WriteJob{Job: j.name, Bytes: j.bytes, Seconds: m.Seconds, MBps: float64(j.bytes) / 1e6 / m.Seconds})
		logf("write %s, %s: %.3f s (%.1f MB/s)", row.Config, j.name, m.Seconds, float64(j.bytes)/1e6/m.Seconds)
	}
	return nil
}

// makeTree writes the untar workload's archive: files of 1 to 32 KiB in
// 64 directories, like a source tree.
func makeTree(path string, files int) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	r := rand.New(rand.NewPCG(3, 4))
	tmpl := template()
	var total int64
	for d := 0; d < 64; d++ {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("d%02d/", d), Mode: 0o755, ModTime: time.Unix(1700000000, 0)}); err != nil {
			return 0, err
		}
	}
	for i := 0; i < files; i++ {
		n := 1024 + r.IntN(31*1024)
		off := r.IntN(len(tmpl) - n)
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("d%02d/f%05d.c", i%64, i), Mode: 0o644, Size: int64(n), ModTime: time.Unix(1700000000, 0)}); err != nil {
			return 0, err
		}
		if _, err := tw.Write(tmpl[off : off+n]); err != nil {
			return 0, err
		}
		total += int64(n)
	}
	return total, tw.Close()
}

const untarMount = "/mnt/wbench"

func mkfs(dev string) error {
	return run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", dev)
}

// runUntar mounts dev (ext4), times `tar -xf` of the archive and a sync,
// unmounts, and fills the row.
func runUntar(row *WriteRow, t *target, archive string) error {
	if err := os.MkdirAll(untarMount, 0o755); err != nil {
		return err
	}
	if err := syscall.Mount(t.origin, untarMount, "ext4", 0, ""); err != nil {
		return fmt.Errorf("mount %s: %w", t.origin, err)
	}
	m, _, err := measure("sh", "-c", fmt.Sprintf("tar -xf %s -C %s && sync", archive, untarMount))
	if uerr := syscall.Unmount(untarMount, 0); err == nil && uerr != nil {
		err = fmt.Errorf("unmount %s: %w", untarMount, uerr)
	}
	if err != nil {
		return err
	}
	row.Untar = m.Seconds
	if row.UntarCow, err = t.cowBytes(); err != nil {
		return err
	}
	logf("untar %s: %.3f s, snapshot space %d KiB", row.Config, row.Untar, row.UntarCow>>10)
	return nil
}

// oneConfig runs the fio jobs and the untar workload on one configuration.
func oneConfig(c config, size int64, jobs []fioJob, archive string) (WriteRow, error) {
	row := WriteRow{Config: c.name, ChunkSize: c.chunk}
	t, err := c.setup(size, fillDevice)
	if err != nil {
		return row, err
	}
	row.Activate = t.activate
	err = runFio(&row, t.origin, jobs)
	if err == nil {
		row.CowBytes, err = t.cowBytes()
	}
	if terr := t.teardown(); err == nil {
		err = terr
	}
	if err != nil {
		return row, err
	}
	if archive == "" {
		return row, nil
	}
	if t, err = c.setup(size, mkfs); err != nil {
		return row, err
	}
	err = runUntar(&row, t, archive)
	if terr := t.teardown(); err == nil {
		err = terr
	}
	return row, err
}

func benchWrite(rep *Report, scale int64) error {
	size := max(int64(256<<20)/scale, 64<<20)
	archive := filepath.Join(benchRoot, "tree.tar")
	var err error
	if rep.UntarBytes, err = makeTree(archive, int(max(3000/scale, 300))); err != nil {
		return err
	}
	rep.WriteDevice = size
	jobs := fioJobs(scale)
	for _, c := range configs(chunkSize) {
		row, err := oneConfig(c, size, jobs, archive)
		if err != nil {
			return fmt.Errorf("write cost, %s: %w", c.name, err)
		}
		rep.Write = append(rep.Write, row)
	}
	ratios(rep.Write)
	return nil
}

// ratios fills each row's cost against the first (raw) row.
func ratios(rows []WriteRow) {
	if len(rows) == 0 {
		return
	}
	raw := rows[0]
	for i := range rows {
		for j := range rows[i].Jobs {
			if j < len(raw.Jobs) {
				rows[i].Jobs[j].Cost = rows[i].Jobs[j].Seconds / raw.Jobs[j].Seconds
			}
		}
		if raw.Untar > 0 {
			rows[i].UntarCost = rows[i].Untar / raw.Untar
		}
	}
}

// benchSweep runs dmsnap with every chunk size from 4 KiB to 256 KiB:
// write cost against raw, and snapshot space used, for sequential writes,
// sparse random 4 KiB writes (1/16 of the blocks of a region) and the
// untar workload.
func benchSweep(rep *Report, scale int64) error {
	size := max(int64(256<<20)/scale, 64<<20)
	seq := max(64<<20/scale, 16<<20)
	region := max(192<<20/scale, 32<<20)
	common := []string{"--direct=1", "--ioengine=psync", "--end_fsync=1", "--randrepeat=1", "--output-format=terse"}
	jobs := []fioJob{
		{"seq 1 MiB, first touch", seq, append([]string{"--rw=write", "--bs=1M", "--offset=0", fmt.Sprintf("--size=%d", seq)}, common...)},
		{"rand 4 KiB over 1/64 of the blocks, first touch", region / 64, append([]string{"--rw=randwrite", "--bs=4k", fmt.Sprintf("--offset=%d", seq), fmt.Sprintf("--size=%d", region), fmt.Sprintf("--io_size=%d", region/64)}, common...)},
	}
	archive := filepath.Join(benchRoot, "tree.tar")
	if _, err := os.Stat(archive); err != nil {
		if rep.UntarBytes, err = makeTree(archive, int(max(3000/scale, 300))); err != nil {
			return err
		}
	}
	rep.SweepDevice, rep.SweepRegion = size, region
	rows := []WriteRow{}
	raw, err := oneConfig(configs(0)[0], size, jobs, archive)
	if err != nil {
		return err
	}
	rows = append(rows, raw)
	for chunk := int64(4 << 10); chunk <= 256<<10; chunk *= 2 {
		c := configs(chunk)[1]
		c.name = fmt.Sprintf("dmsnap, %d KiB chunks", chunk>>10)
		row, err := oneConfig(c, size, jobs, archive)
		if err != nil {
			return fmt.Errorf("sweep, %s: %w", c.name, err)
		}
		rows = append(rows, row)
	}
	ratios(rows)
	rep.Sweep = rows
	return nil
}

func writeMoreMarkdown(w io.Writer, r Report) {
	if len(r.Write) > 0 {
		fmt.Fprintf(w, "\n## Write cost (fio, O_DIRECT, psync, end_fsync) vs the raw device\n\n")
		fmt.Fprintf(w, "Device of %s, a loop device over a tmpfs file (the raw one; LVM's PV and dmsnap's disk are the same kind). The device is filled with data first, then the snapshot taken; each job runs once in this order, so \"first touch\" writes chunks not yet copied and \"re-write\" the same ones again. Cost = time / the raw device's time for the same job (1.00 = free). Untar: `tar -xf` of %s in files of 1–32 KiB onto a fresh ext4, then `sync`.\n\n", mib(r.WriteDevice), mib(r.UntarBytes))
		writeCostTable(w, r.Write)
	}
	if len(r.Disks) > 0 {
		fmt.Fprintf(w, "\n## Write cost on virtio disks (flushes cost what the host's storage makes them cost)\n\n")
		fmt.Fprintf(w, "The same jobs (no untar) with the device under test (%s of it), LVM's PV and dmsnap's stores (ext4; a managed store; ext4 on an LVM LV) each on a virtio disk of its own, backed by a file on the host opened with O_DIRECT (cache=none, aio=threads): a flush in the guest is an fdatasync of that file on the host. Cost = time / the raw disk's time.\n\n", mib(r.DiskDevice))
		writeCostTable(w, r.Disks)
	}
	if len(r.Sweep) > 0 {
		fmt.Fprintf(w, "\n## Chunk size sweep (dmsnap)\n\nDevice of %s. Same method; the random job writes 4 KiB blocks at random to 1/64 of the blocks of a %s region, so larger chunks copy (and keep) more than was written. Space = the COW space the kernel reports in use (metadata included). Store: ext4, as in use.\n\n", mib(r.SweepDevice), mib(r.SweepRegion))
		writeCostTable(w, r.Sweep)
	}
}

func writeCostTable(w io.Writer, rows []WriteRow) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "| configuration |")
	for _, j := range rows[0].Jobs {
		fmt.Fprintf(w, " %s (%s): MB/s, cost |", j.Job, mib(j.Bytes))
	}
	fmt.Fprintf(w, " snapshot space after the jobs | untar: s, cost | untar snapshot space |\n|---|")
	for range rows[0].Jobs {
		fmt.Fprintf(w, "---:|")
	}
	fmt.Fprintf(w, "---:|---:|---:|\n")
	for _, r := range rows {
		fmt.Fprintf(w, "| %s |", r.Config)
		for _, j := range r.Jobs {
			fmt.Fprintf(w, " %.1f, **%.2f** |", j.MBps, j.Cost)
		}
		fmt.Fprintf(w, " %s | %.2f, **%.2f** | %s |\n", mib(r.CowBytes), r.Untar, r.UntarCost, mib(r.UntarCow))
	}
	fmt.Fprintln(w)
	for _, r := range rows {
		if r.Activate > 0 {
			fmt.Fprintf(w, "- %s: `dmsnap activate` (stack, first session armed, its COW written ahead) %.2f s\n", r.Config, r.Activate)
		}
	}
}
