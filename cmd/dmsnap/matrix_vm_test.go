//go:build vm

package main

// The byte-exact matrix, fast tier: filesystems × workloads through the real
// binary. Each case makes a filesystem on a loop device, hashes the whole
// device, activates it, mounts the origin, runs a workload, unmounts, waits
// for the watcher to close the session, restores it and checks the device is
// back byte for byte and its filesystem checker finds nothing.

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/vmtest"
)

type matrixFS struct {
	name string
	size int64
	mkfs []string
	fsck []string // the device is appended
}

var matrixFilesystems = map[string]matrixFS{
	"ext4":  {"ext4", 64 << 20, []string{"mkfs.ext4", "-q", "-F"}, []string{"e2fsck", "-fn"}},
	"ext2":  {"ext2", 64 << 20, []string{"mkfs.ext2", "-q", "-F"}, []string{"e2fsck", "-fn"}},
	"xfs":   {"xfs", 128 << 20, []string{"mkfs.xfs", "-q", "-f"}, []string{"xfs_repair", "-n"}},
	"btrfs": {"btrfs", 128 << 20, []string{"mkfs.btrfs", "-q", "-f"}, []string{"btrfs", "check", "--readonly"}},
}

type matrixWorkload func(t *testing.T, r *rand.Rand, mnt string)

var matrixWorkloads = map[string]matrixWorkload{
	"files":   workloadFiles,
	"odirect": workloadODirect,
	"mmap":    workloadMmap,
	"fsync":   workloadFsync,
	"fio":     workloadFio,
	"discard": workloadDiscard,
	"meta":    workloadMetaStorm,
}

// The fast tier: every filesystem and every workload at least once, several
// workloads in one session where they share a filesystem ("a+b" runs a,
// then b): each case's set-up, hashes, restore and fsck cost more than its
// workload under emulation. The soak tier runs every pair on its own.
var matrixCases = []struct{ fs, workload string }{
	{"ext4", "odirect+discard"}, // discard runs the files workload first
	// One xfs case: xfs needs the largest device, slow to hash under emulation.
	{"xfs", "fio"},
	// mmap, and a metadata storm, on the filesystem without a journal.
	{"ext2", "mmap+meta"},
	{"btrfs", "fsync+files"},
}

// matrixPlan is the cases to run: the fast tier, or with DMSNAP_MATRIX=full
// (the soak tier) every filesystem × every workload, DMSNAP_MATRIX_ROUNDS
// times over (default 1), each round with its own seeds.
func matrixPlan(t *testing.T) (cases []struct{ fs, workload string }, rounds int) {
	t.Helper()
	rounds = 1
	if s := os.Getenv("DMSNAP_MATRIX_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("DMSNAP_MATRIX_ROUNDS=%q: want a positive number", s)
		}
		rounds = n
	}
	switch m := os.Getenv("DMSNAP_MATRIX"); m {
	case "", "fast":
		return matrixCases, rounds
	case "full":
		for _, fs := range slices.Sorted(maps.Keys(matrixFilesystems)) {
			for _, w := range slices.Sorted(maps.Keys(matrixWorkloads)) {
				cases = append(cases, struct{ fs, workload string }{fs, w})
			}
		}
		return cases, rounds
	default:
		t.Fatalf("DMSNAP_MATRIX=%q: want fast or full", m)
	}
	return nil, 0
}

func matrixSeed(t *testing.T) uint64 {
	t.Helper()
	if s := os.Getenv("DMSNAP_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("DMSNAP_SEED=%q: %v", s, err)
		}
		return v
	}
	return uint64(time.Now().UnixNano())
}

func TestMatrix(t *testing.T) {
	c := newCLI(t)
	seed := matrixSeed(t)
	t.Logf("seed %d (replay with DMSNAP_SEED=%d)", seed, seed)
	c.watch(t)
	start := time.Now()
	cases, rounds := matrixPlan(t)
	perFS := map[string]int{}
	run, failed := 0, 0
	for round := 0; round < rounds; round++ {
		for j, mc := range cases {
			i := round*len(cases) + j
			ran := false
			ok := t.Run(fmt.Sprintf("%s-%s/round%d", mc.fs, mc.workload, round), func(t *testing.T) {
				ran = true
				caseStart := time.Now()
				runMatrixCase(t, c, matrixFilesystems[mc.fs], mc.workload, rand.New(rand.NewPCG(seed, uint64(i))), i)
				t.Logf("%s × %s: %v (seed %d, case %d)", mc.fs, mc.workload, time.Since(caseStart).Round(time.Millisecond), seed, i)
			})
			if !ran {
				continue // not selected by -run
			}
			perFS[mc.fs]++
			run++
			if !ok {
				failed++
			}
		}
	}
	var counts []string
	for _, fs := range slices.Sorted(maps.Keys(perFS)) {
		counts = append(counts, fmt.Sprintf("%s=%d", fs, perFS[fs]))
	}
	t.Logf("matrix: %d cases (%s) in %v, %d failed, seed %d", run, strings.Join(counts, " "), time.Since(start).Round(time.Second), failed, seed)
	t.Logf("soak-count matrix-cases %d matrix-failed %d %s", run, failed, strings.Join(counts, " "))
}

// fsDevice makes fs on a loop device over a sparse file of its size, gone
// at the test's end, and returns the loop device.
func fsDevice(t *testing.T, fs matrixFS) string {
	t.Helper()
	file := vmtest.TempFile(t, t.TempDir(), "raw.img", fs.size)
	l, err := dm.AttachLoop(file, dm.LoopOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	t.Cleanup(func() { dm.DetachLoop(l.Path) })
	// mkfs.xfs refuses file systems under 300 MiB but for fstests runs
	// (these variables; the others ignore them): a smaller device is
	// quicker to hash under emulation.
	vmtest.Sh(t, "TEST_DIR=1 TEST_DEV=1 QA_CHECK_FS=1 "+strings.Join(append(fs.mkfs, l.Path), " "))
	return l.Path
}

func runMatrixCase(t *testing.T, c *cli, fs matrixFS, workload string, r *rand.Rand, i int) {
	dev := fsDevice(t, fs)
	before := hash(t, dev)

	name := fmt.Sprintf("mx%d", i)
	origin := "/dev/mapper/dmsnap-" + name
	c.activate(t, dev, name)
	mnt := t.TempDir()
	vmtest.Run(t, "mount", "-t", fs.name, origin, mnt)
	for _, w := range strings.Split(workload, "+") {
		matrixWorkloads[w](t, r, mnt)
	}
	vmtest.Run(t, "umount", mnt)

	var id string
	eventually(t, "the session to close", 120*time.Second, func() bool {
		for _, s := range c.list(t, name) {
			if s.State == "closed" {
				id = s.ID
				return true
			}
		}
		return false
	})
	if h := hash(t, origin); h == before {
		t.Fatalf("the %s workload changed nothing on the device", workload)
	}
	c.ok(t, "restore", name, "--session", id, "--yes")
	if h := hash(t, origin); h != before {
		t.Fatalf("%s × %s: origin after restore of %s: sha256 %s, before the session %s", fs.name, workload, id, h, before)
	}
	vmtest.Run(t, fs.fsck[0], append(fs.fsck[1:], origin)...)
	c.ok(t, "deactivate", name)
	if h := hash(t, dev); h != before {
		t.Fatalf("%s × %s: raw device after deactivate: sha256 %s, before the session %s", fs.name, workload, h, before)
	}
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for k := 0; k < 8; k++ {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	return b
}

// workloadFiles creates, overwrites, deletes and renames files of random
// sizes, about 8 MiB written in all.
func workloadFiles(t *testing.T, r *rand.Rand, mnt string) {
	var names []string
	written := 0
	for op := 0; written < 8<<20; op++ {
		switch k := r.IntN(10); {
		case k < 5 || len(names) == 0: // create
			n := filepath.Join(mnt, fmt.Sprintf("f%03d", op))
			size := r.IntN(512 << 10)
			if err := os.WriteFile(n, randBytes(r, size), 0o644); err != nil {
				t.Fatal(err)
			}
			names = append(names, n)
			written += size
		case k < 7: // overwrite part of one
			n := names[r.IntN(len(names))]
			f, err := os.OpenFile(n, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			size := r.IntN(256 << 10)
			if _, err := f.WriteAt(randBytes(r, size), int64(r.IntN(256<<10))); err != nil {
				t.Fatal(err)
			}
			f.Close()
			written += size
		case k < 8: // delete
			j := r.IntN(len(names))
			if err := os.Remove(names[j]); err != nil {
				t.Fatal(err)
			}
			names = append(names[:j], names[j+1:]...)
		default: // rename
			j := r.IntN(len(names))
			n := filepath.Join(mnt, fmt.Sprintf("r%03d", op))
			if err := os.Rename(names[j], n); err != nil {
				t.Fatal(err)
			}
			names[j] = n
		}
	}
	syscall.Sync()
}

// workloadMetaStorm is a metadata storm: 600 small files in 20
// directories, then half of them deleted, a third renamed across
// directories, and a few directories removed whole.
func workloadMetaStorm(t *testing.T, r *rand.Rand, mnt string) {
	var files []string
	for d := 0; d < 20; d++ {
		dir := filepath.Join(mnt, fmt.Sprintf("d%02d", d))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for f := 0; f < 30; f++ {
			p := filepath.Join(dir, fmt.Sprintf("f%03d", f))
			if err := os.WriteFile(p, randBytes(r, r.IntN(3000)), 0o644); err != nil {
				t.Fatal(err)
			}
			files = append(files, p)
		}
	}
	r.Shuffle(len(files), func(i, j int) { files[i], files[j] = files[j], files[i] })
	for i, p := range files {
		switch {
		case i%2 == 0:
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		case i%3 == 0:
			to := filepath.Join(mnt, fmt.Sprintf("d%02d", r.IntN(20)), fmt.Sprintf("m%05d", i))
			if err := os.Rename(p, to); err != nil {
				t.Fatal(err)
			}
		}
	}
	for d := 0; d < 20; d += 7 {
		if err := os.RemoveAll(filepath.Join(mnt, fmt.Sprintf("d%02d", d))); err != nil {
			t.Fatal(err)
		}
	}
	syscall.Sync()
}

// alignedBuf is n bytes of page-aligned anonymous memory.
func alignedBuf(t *testing.T, n int) []byte {
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Munmap(b) })
	return b
}

// workloadODirect writes 4 MiB with O_DIRECT in 64 KiB aligned blocks at
// random aligned offsets of an 8 MiB file.
func workloadODirect(t *testing.T, r *rand.Rand, mnt string) {
	fd, err := syscall.Open(filepath.Join(mnt, "direct.dat"), syscall.O_CREAT|syscall.O_RDWR|syscall.O_DIRECT, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	const bs = 64 << 10
	buf := alignedBuf(t, bs)
	for i := 0; i < 64; i++ {
		copy(buf, randBytes(r, bs))
		off := int64(r.IntN(128)) * bs
		if n, err := syscall.Pwrite(fd, buf, off); err != nil || n != bs {
			t.Fatalf("O_DIRECT pwrite at %d: %d, %v", off, n, err)
		}
	}
	if err := syscall.Fsync(fd); err != nil {
		t.Fatal(err)
	}
}

// workloadMmap writes random pages of a 4 MiB file through a shared
// mapping and msyncs it.
func workloadMmap(t *testing.T, r *rand.Rand, mnt string) {
	const size = 4 << 20
	f, err := os.OpenFile(filepath.Join(mnt, "mmap.dat"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	m, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 512; i++ {
		p := r.IntN(size / 4096)
		copy(m[p*4096:], randBytes(r, 4096))
	}
	if err := unix.Msync(m, unix.MS_SYNC); err != nil {
		t.Fatalf("msync: %v", err)
	}
	if err := syscall.Munmap(m); err != nil {
		t.Fatal(err)
	}
}

// workloadFsync appends small random records to a few files, fsyncing after
// each.
func workloadFsync(t *testing.T, r *rand.Rand, mnt string) {
	var fs []*os.File
	for i := 0; i < 4; i++ {
		f, err := os.OpenFile(filepath.Join(mnt, fmt.Sprintf("log%d", i)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fs = append(fs, f)
	}
	for i := 0; i < 300; i++ {
		f := fs[r.IntN(len(fs))]
		if _, err := f.Write(randBytes(r, 1+r.IntN(8<<10))); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
}

// workloadFio runs fio's randwrite with crc32c verify in the mount.
func workloadFio(t *testing.T, r *rand.Rand, mnt string) {
	vmtest.Run(t, "fio", "--name=v", "--filename="+filepath.Join(mnt, "fio.dat"), "--size=8m", "--rw=randwrite",
		"--bs=4k", "--verify=crc32c", "--direct=1", fmt.Sprintf("--randseed=%d", r.Uint32()))
}

// workloadDiscard writes files, deletes some and runs fstrim, which must
// fail: the origin advertises no discard (README caveat).
func workloadDiscard(t *testing.T, r *rand.Rand, mnt string) {
	workloadFiles(t, r, mnt)
	ents, err := os.ReadDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range ents {
		if i%2 == 0 && !e.IsDir() {
			os.Remove(filepath.Join(mnt, e.Name()))
		}
	}
	syscall.Sync()
	out, err := exec.Command("fstrim", "-v", mnt).CombinedOutput()
	if err == nil {
		t.Fatalf("fstrim %s succeeded, want \"operation not supported\": %s", mnt, out)
	}
	if !strings.Contains(strings.ToLower(string(out)), "not supported") {
		t.Fatalf("fstrim %s: %v: %s, want \"operation not supported\"", mnt, err, out)
	}
	t.Logf("fstrim as expected: %s", strings.TrimSpace(string(out)))
}
