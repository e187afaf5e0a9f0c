package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dmsnap/dmsnap/dm"
	"github.com/dmsnap/dmsnap/internal/crc32c"
	"golang.org/x/sys/unix"
)

// Where the benchmark lives in the guest: a private tmpfs holding the ext4
// store's image and the restore target's backing file.
const (
	benchRoot  = "/bench"
	storeMount = "/mnt/store"
)

// Measure is one child process: wall time and peak resident memory.
// MaxRSSKB is wait4's ru_maxrss. Go starts children with vfork
// semantics (CLONE_VM), so until exec the child runs in the parent's
// memory and the kernel carries that memory's peak into the child's
// ru_maxrss: it is never below the parent's RSS, which the parent resets
// (clear_refs) before each run. PeakKB is the child's own peak (VmHWM of its
// exec'd image, which benchtool children report as they exit); 0 for cp
// and dd.
type Measure struct {
	Seconds  float64 `json:"seconds"`
	MaxRSSKB int64   `json:"max_rss_kib"`
	PeakKB   int64   `json:"vm_hwm_kib,omitempty"`
	// AnonPeakKB is the largest RssAnon a benchtool child saw sampling
	// itself every 20 ms: its peak RSS without the file pages it mapped
	// (a restore maps blocks.dat, whose pages are page cache and count in
	// VmHWM).
	AnonPeakKB int64 `json:"rss_anon_peak_kib,omitempty"`
	// Steps is a conversion's time per step (benchtool convert only).
	Steps []stepTime `json:"steps,omitempty"`
}

// peak is the figure the report shows: the child's own peak when known.
func (m Measure) peak() float64 {
	if m.PeakKB > 0 {
		return float64(m.PeakKB) / 1024
	}
	return float64(m.MaxRSSKB) / 1024
}

// hwmPrefix starts the line a benchtool child writes last on stderr.
const hwmPrefix = "benchtool-vmhwm-kib "

// reportHWM writes this process's peak resident memory (VmHWM) to stderr.
func reportHWM() {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			fmt.Fprintf(os.Stderr, "%s%s\n", hwmPrefix, strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
		}
	}
}

// anonPrefix starts the line with the child's sampled RssAnon peak.
const anonPrefix = "benchtool-rssanon-kib "

// anonPeak samples this process's RssAnon until report.
type anonPeak struct {
	stop chan struct{}
	done chan int64
}

func sampleAnon() *anonPeak {
	a := &anonPeak{stop: make(chan struct{}), done: make(chan int64)}
	go func() {
		var peak int64
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			if b, err := os.ReadFile("/proc/self/status"); err == nil {
				for _, l := range strings.Split(string(b), "\n") {
					if rest, ok := strings.CutPrefix(l, "RssAnon:"); ok {
						v, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
						peak = max(peak, v)
					}
				}
			}
			select {
			case <-a.stop:
				a.done <- peak
				return
			case <-t.C:
			}
		}
	}()
	return a
}

// report stops the sampling and writes the peak to stderr.
func (a *anonPeak) report() {
	close(a.stop)
	fmt.Fprintf(os.Stderr, "%s%d\n", anonPrefix, <-a.done)
}

// ConvRow is one conversion size.
type ConvRow struct {
	PreImageBytes int64   `json:"pre_image_bytes"`
	Records       int64   `json:"records"`
	GenSeconds    float64 `json:"gen_seconds"` // CowWriter writing cow.img (not a baseline)
	Convert       Measure `json:"convert"`
	Cp            Measure `json:"cp"`
	Read          Measure `json:"read"` // dd if=cow.img of=/dev/null bs=1M: reading it once, the least a conversion that checksums every byte can do
	Ratio         float64 `json:"convert_over_cp"`
}

// RestoreRun is one restore of the plan.
type RestoreRun struct {
	Name       string     `json:"name"`
	Measure    Measure    `json:"measure"`
	Bytes      uint64     `json:"bytes"`
	Writes     int64      `json:"writes"`
	Direct     bool       `json:"direct_io"` // the writes went around the page cache
	MBps       float64    `json:"mb_per_s"`
	RatioVsDD  float64    `json:"throughput_over_dd"`
	Phases     []stepTime `json:"phases"` // wall time of each part of the restore
	DeviceOKed bool       `json:"device_checked"`
}

// Report is the whole run.
type Report struct {
	Started      time.Time    `json:"started"`
	Kernel       string       `json:"kernel"`
	Store        string       `json:"store"`
	ChunkSize    int          `json:"chunk_size"`
	Conversion   []ConvRow    `json:"conversion"`
	RestoreDev   int64        `json:"restore_device_bytes"`
	RestorePre   int64        `json:"restore_pre_image_bytes"`
	RestoreSess  int          `json:"restore_sessions"`
	DD           Measure      `json:"dd"`
	DDBytes      uint64       `json:"dd_bytes"`
	DDMBps       float64      `json:"dd_mb_per_s"`
	Restores     []RestoreRun `json:"restores"`
	TotalSeconds float64      `json:"total_seconds"`
	// CRC32CMBps and SHA256MBps are this machine's hashing speed in memory:
	// a conversion computes CRC-32C over every pre-image byte.
	CRC32CMBps float64 `json:"crc32c_mb_per_s"`
	// CRC32CImpl is the implementation internal/crc32c chose here;
	// CRC32CStdlibMBps is hash/crc32's speed (the CPU instruction).
	CRC32CImpl       string  `json:"crc32c_impl"`
	CRC32CStdlibMBps float64 `json:"crc32c_stdlib_mb_per_s"`
	SHA256MBps       float64 `json:"sha256_mb_per_s"`
	// Write cost and the chunk size sweep.
	WriteDevice int64      `json:"write_device_bytes,omitempty"`
	UntarBytes  int64      `json:"untar_bytes,omitempty"`
	Write       []WriteRow `json:"write,omitempty"`
	SweepDevice int64      `json:"sweep_device_bytes,omitempty"`
	SweepRegion int64      `json:"sweep_random_region_bytes,omitempty"`
	Sweep       []WriteRow `json:"sweep,omitempty"`
	DiskDevice  int64      `json:"disk_device_bytes,omitempty"`
	Disks       []WriteRow `json:"disks,omitempty"` // the write jobs on virtio disks (benchDisks)
	// Gap is the random first-touch job in rounds (benchGap): tmpfs loops,
	// then virtio disks when the disks part runs too.
	Gap []GapSet `json:"gap,omitempty"`
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// dropCaches writes back and drops the page cache, so every timed step
// reads from the store's device.
func dropCaches() error {
	unix.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0)
}

// measure runs a child and returns its wall time, its peak RSS and stdout.
func measure(name string, args ...string) (Measure, []byte, error) {
	if err := dropCaches(); err != nil {
		return Measure{}, nil, err
	}
	// Reset this process's peak RSS to its current RSS: the child's
	// ru_maxrss starts from it (see Measure).
	os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
	cmd := exec.Command(name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	el := time.Since(start)
	if err != nil {
		return Measure{}, nil, fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, errb.Bytes())
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	m := Measure{Seconds: el.Seconds(), MaxRSSKB: ru.Maxrss}
	for _, l := range strings.Split(errb.String(), "\n") {
		if v, ok := strings.CutPrefix(l, hwmPrefix); ok {
			m.PeakKB, _ = strconv.ParseInt(v, 10, 64)
		}
		if v, ok := strings.CutPrefix(l, anonPrefix); ok {
			m.AnonPeakKB, _ = strconv.ParseInt(v, 10, 64)
		}
		if v, ok := strings.CutPrefix(l, stepsPrefix); ok {
			json.Unmarshal([]byte(v), &m.Steps)
		}
	}
	return m, out.Bytes(), nil
}

func runAll(args []string) error {
	fs := flag.NewFlagSet("all", flag.ContinueOnError)
	scale := fs.Int64("scale", 1, "divide every size by this (a quick trial)")
	partsFlag := fs.String("parts", "convert,restore,write,disks,sweep,gap", "which parts to run (comma-separated)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	parts := map[string]bool{}
	for _, p := range strings.Split(*partsFlag, ",") {
		parts[p] = true
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	rep := Report{Started: time.Now().UTC(), ChunkSize: chunkSize, Store: "ext4 on a loop device over a tmpfs file (mounted -o discard)"}
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		rep.Kernel = unix.ByteSliceToString(uts.Release[:])
	}
	rep.CRC32CMBps, rep.CRC32CStdlibMBps = crcSpeed()
	rep.CRC32CImpl, rep.SHA256MBps = string(crc32c.Chosen()), shaSpeed()
	logf("CPU: CRC-32C %.0f MB/s (%s; hash/crc32 %.0f MB/s), SHA-256 %.0f MB/s in memory", rep.CRC32CMBps, rep.CRC32CImpl, rep.CRC32CStdlibMBps, rep.SHA256MBps)

	// The store: ext4 on a loop device over a sparse file on a private
	// tmpfs; discard returns deleted files' space to the tmpfs.
	if err := os.MkdirAll(benchRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", benchRoot, "tmpfs", 0, "size=8g"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", benchRoot, err)
	}
	defer unix.Unmount(benchRoot, 0)
	storeImg := filepath.Join(benchRoot, "store.img")
	if err := sparse(storeImg, 6<<30); err != nil {
		return err
	}
	storeLoop, err := dm.AttachLoop(storeImg, dm.LoopOptions{AutoClear: true})
	if err != nil {
		return err
	}
	if err := run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", storeLoop.Path); err != nil {
		return err
	}
	if err := os.MkdirAll(storeMount, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(storeLoop.Path, storeMount, "ext4", 0, "discard"); err != nil {
		return fmt.Errorf("mount %s: %w", storeLoop.Path, err)
	}
	storeLoop.Close()
	defer unix.Unmount(storeMount, 0)
	logf("store: ext4 on %s at %s", storeLoop.Path, storeMount)

	// 1. Conversion against cp of the same cow.img.
	for i, size := range []int64{1 << 20, 64 << 20, 1 << 30} {
		if !parts["convert"] {
			break
		}
		size /= *scale
		size = max(size, 1<<20)
		chunks := uint64(size / chunkSize)
		store := filepath.Join(storeMount, fmt.Sprintf("conv%d", i))
		start := time.Now()
		dir, err := makeSession(store, "conv", time.Unix(1700000000, 0), size, 0, chunks, uint64(i+1))
		if err != nil {
			return err
		}
		row := ConvRow{PreImageBytes: size, Records: int64(chunks), GenSeconds: time.Since(start).Seconds()}
		cow := filepath.Join(dir, "cow.img")
		if row.Read, _, err = measure("dd", "if="+cow, "of=/dev/null", "bs=1M"); err != nil {
			return err
		}
		cp := filepath.Join(store, "copy.img")
		if row.Cp, _, err = measure("sh", "-c", fmt.Sprintf("cp %s %s && sync", cow, cp)); err != nil {
			return err
		}
		if err := os.Remove(cp); err != nil {
			return err
		}
		convArgs := []string{"convert", dir}
		if i == 1 {
			// The middle size is profiled (pprof, 100 samples a second);
			// run.sh files the profile as out/convert.prof.
			convArgs = []string{"convert", "-cpuprofile", profPath, dir}
		}
		if row.Convert, _, err = measure(self, convArgs...); err != nil {
			return err
		}
		if _, err := os.Stat(filepath.Join(dir, "meta.json")); err != nil {
			return fmt.Errorf("conversion left no meta.json: %w", err)
		}
		row.Ratio = row.Convert.Seconds / row.Cp.Seconds
		logf("convert %d MiB: convert %.3fs (peak %d KiB, ru_maxrss %d KiB), cp %.3fs, ratio %.3f, read %.3fs", size>>20, row.Convert.Seconds, row.Convert.PeakKB, row.Convert.MaxRSSKB, row.Cp.Seconds, row.Ratio, row.Read.Seconds)
		rep.Conversion = append(rep.Conversion, row)
	}
	if parts["restore"] {
		if err := benchRestore(&rep, self, *scale); err != nil {
			return err
		}
	}
	if parts["write"] {
		if err := benchWrite(&rep, *scale); err != nil {
			return err
		}
	}
	if parts["disks"] {
		if err := benchDisks(&rep, *scale); err != nil {
			return err
		}
	}
	if parts["sweep"] {
		if err := benchSweep(&rep, *scale); err != nil {
			return err
		}
	}
	// gap: the tmpfs rounds, and the virtio disks' too with disks;
	// diskgap: the virtio disks' rounds alone.
	if parts["gap"] || parts["diskgap"] {
		if err := benchGap(&rep, *scale, parts["gap"], parts["disks"] || parts["diskgap"]); err != nil {
			return err
		}
	}
	rep.TotalSeconds = time.Since(rep.Started).Seconds()

	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	fmt.Println("@@BENCH-MD-BEGIN@@")
	writeMarkdown(os.Stdout, rep)
	fmt.Println("@@BENCH-MD-END@@")
	fmt.Println("@@BENCH-JSON-BEGIN@@")
	fmt.Println(string(js))
	fmt.Println("@@BENCH-JSON-END@@")
	for _, p := range []struct{ name, path string }{{"", profPath}, {"RESTORE-", restoreProfPath}} {
		if prof, err := os.ReadFile(p.path); err == nil {
			fmt.Printf("@@BENCH-PROF-%sBEGIN@@\n", p.name)
			fmt.Println(base64.StdEncoding.EncodeToString(prof))
			fmt.Printf("@@BENCH-PROF-%sEND@@\n", p.name)
		}
	}
	return nil
}

// profPath is where the profiled conversion writes its CPU profile,
// restoreProfPath the profiled restore (the one with a verify pass).
const (
	profPath        = benchRoot + "/convert.prof"
	restoreProfPath = benchRoot + "/restore.prof"
)

// benchRestore times restore.Plan.Apply of a 3-session plan, with and
// without its verify pass, against dd of as many bytes from a file of the
// same store to the same target.
func benchRestore(rep *Report, self string, scale int64) error {

	devSize := max(int64(1<<30)/scale, 16<<20)
	n := uint64(devSize / chunkSize)
	ranges := [][2]uint64{{0, n * 34 / 100}, {n * 33 / 100, n * 67 / 100}, {n * 66 / 100, n}}
	var dirs []string
	for i, r := range ranges {
		dir, err := makeSession(filepath.Join(storeMount, "restore"), "vdx", time.Unix(1700000000+int64(i)*3600, 0), devSize, r[0], r[1], uint64(100+i))
		if err != nil {
			return err
		}
		if _, _, err := measure(self, "convert", dir); err != nil {
			return err
		}
		dirs = append(dirs, dir)
		rep.RestorePre += int64(r[1]-r[0]) * chunkSize
	}
	rep.RestoreDev, rep.RestoreSess = devSize, len(dirs)
	targetImg := filepath.Join(benchRoot, "target.img")
	if err := sparse(targetImg, devSize); err != nil {
		return err
	}
	target, err := dm.AttachLoop(targetImg, dm.LoopOptions{})
	if err != nil {
		return err
	}
	defer dm.DetachLoop(target.Path)
	defer target.Close()
	logf("restore: %d sessions, %d MiB of pre-images, target %s (%d MiB)", len(dirs), rep.RestorePre>>20, target.Path, devSize>>20)

	// dd's source: a file of devSize bytes of pre-image-like data on the
	// same store, written and synced before (the cache is dropped before
	// every timed step).
	ddSource := filepath.Join(storeMount, "dd-source.img")
	if err := writeDDSource(ddSource, devSize); err != nil {
		return err
	}
	// Every run starts from an empty target (blkdiscard punches the backing
	// file), so each allocates the same tmpfs pages.
	ddCount := devSize >> 20
	if err := run("blkdiscard", target.Path); err != nil {
		return err
	}
	if rep.DD, _, err = measure("dd", "if="+ddSource, "of="+target.Path, "bs=1M", fmt.Sprintf("count=%d", ddCount), "conv=fsync"); err != nil {
		return err
	}
	rep.DDBytes = uint64(ddCount) << 20
	rep.DDMBps = float64(rep.DDBytes) / 1e6 / rep.DD.Seconds
	logf("dd: %d MiB in %.3fs (%.1f MB/s)", ddCount, rep.DD.Seconds, rep.DDMBps)

	for _, skip := range []bool{false, true} {
		if err := run("blkdiscard", target.Path); err != nil {
			return err
		}
		args := []string{"restore", "-target", target.Path}
		name := "restore (verify pass, then write pass)"
		if !skip {
			// run.sh files this one's CPU profile as out/restore.prof.
			args = append(args, "-cpuprofile", restoreProfPath)
		}
		if skip {
			args = append(args, "-skip-verify")
			name = "restore without the verify pass (records checked as written)"
		}
		m, out, err := measure(self, append(args, dirs...)...)
		if err != nil {
			return err
		}
		var ro restoreOut
		if err := json.Unmarshal(out, &ro); err != nil {
			return fmt.Errorf("restore output %q: %w", out, err)
		}
		rr := RestoreRun{Name: name, Measure: m, Bytes: ro.Bytes, Writes: ro.Writes, Direct: ro.Direct, MBps: float64(ro.Bytes) / 1e6 / m.Seconds, Phases: ro.Phases}
		rr.RatioVsDD = rr.MBps / rep.DDMBps
		if err := checkRestored(target.Path, devSize, ranges); err != nil {
			return err
		}
		rr.DeviceOKed = true
		logf("%s: %d MiB in %.3fs (%.1f MB/s, %.2f× dd), O_DIRECT writes %v, peak %d KiB, ru_maxrss %d KiB, phases %v", name, ro.Bytes>>20, m.Seconds, rr.MBps, rr.RatioVsDD, ro.Direct, m.PeakKB, m.MaxRSSKB, ro.Phases)
		rep.Restores = append(rep.Restores, rr)
	}
	return os.Remove(ddSource)
}

// writeDDSource writes size bytes of the benchmark's chunk data to path and
// syncs it.
func writeDDSource(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tmpl := template()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		for i := 0; i < len(buf); i += chunkSize {
			chunkData(buf[i:i+chunkSize], tmpl, uint64(off+int64(i))/chunkSize, 7)
		}
		if _, err := f.Write(buf[:min(int64(len(buf)), size-off)]); err != nil {
			return err
		}
	}
	return f.Sync()
}

func sparse(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// checkRestored reads the whole device back: every chunk must hold the
// pre-image of the oldest session that saved it.
func checkRestored(dev string, size int64, ranges [][2]uint64) error {
	f, err := os.Open(dev)
	if err != nil {
		return err
	}
	defer f.Close()
	tmpl := template()
	buf := make([]byte, 1<<20)
	want := make([]byte, chunkSize)
	for off := int64(0); off < size; off += int64(len(buf)) {
		b := buf[:min(int64(len(buf)), size-off)]
		if _, err := io.ReadFull(io.NewSectionReader(f, off, int64(len(b))), b); err != nil {
			return fmt.Errorf("read %s at %d: %w", dev, off, err)
		}
		for i := 0; i < len(b); i += chunkSize {
			c := uint64(off+int64(i)) / chunkSize
			s := -1
			for k, r := range ranges {
				if c >= r[0] && c < r[1] {
					s = k
					break
				}
			}
			if s < 0 {
				clear(want)
			} else {
				chunkData(want, tmpl, c, uint64(100+s))
			}
			if !bytes.Equal(b[i:i+chunkSize], want) {
				return fmt.Errorf("restored %s: chunk %d does not hold the pre-image of session %d", dev, c, s)
			}
		}
	}
	return nil
}

func writeMarkdown(w io.Writer, r Report) {
	fmt.Fprintf(w, "# dmsnap bench (%s, kernel %s)\n\n", r.Started.Format(time.RFC3339), r.Kernel)
	fmt.Fprintf(w, "Store: %s; chunks of %d bytes. Page cache dropped before every timed step; each step is a child process. Time = wall clock. Peak RSS = the child's VmHWM as it exits; in parentheses wait4's ru_maxrss, which Go's vfork-style start floors at the parent's RSS.\n\n", r.Store, r.ChunkSize)
	if len(r.Conversion) > 0 {
		writeConvMarkdown(w, r)
	}
	if len(r.Restores) > 0 {
		writeRestoreMarkdown(w, r)
	}
	writeMoreMarkdown(w, r)
	writeGapMarkdown(w, r.Gap)
	fmt.Fprintf(w, "\nTotal %.0f s.\n", r.TotalSeconds)
}

func writeRestoreMarkdown(w io.Writer, r Report) {
	fmt.Fprintf(w, "\n## Restore (restore.Plan.Apply, %d sessions, %s of pre-images, %s device) vs dd of the same bytes\n\n", r.RestoreSess, mib(r.RestorePre), mib(r.RestoreDev))
	fmt.Fprintf(w, "Baseline: `dd if=FILE of=TARGET bs=1M conv=fsync` where FILE is a %s file on the same store and TARGET the same loop device (over a tmpfs file) the restores write; page cache dropped before each run, target discarded before each run.\n\n", mib(int64(r.DDBytes)))
	fmt.Fprintf(w, "| run | bytes written | time | MB/s | throughput / dd | peak RSS (ru_maxrss) | peak RssAnon |\n|---|---:|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(w, "| dd (baseline) | %s | %.3f s | %.1f | 1.00 | (%.1f MiB) | |\n", mib(int64(r.DDBytes)), r.DD.Seconds, r.DDMBps, float64(r.DD.MaxRSSKB)/1024)
	for _, x := range r.Restores {
		fmt.Fprintf(w, "| %s | %s | %.3f s | %.1f | **%.2f** | %.1f MiB (%.1f) | %.1f MiB |\n", x.Name, mib(int64(x.Bytes)), x.Measure.Seconds, x.MBps, x.RatioVsDD, x.Measure.peak(), float64(x.Measure.MaxRSSKB)/1024, float64(x.Measure.AnonPeakKB)/1024)
	}
	fmt.Fprintf(w, "\nPeak RSS counts the pages of blocks.dat the write pass maps (page cache the verify pass read, shared and clean: the kernel can drop them); peak RssAnon, sampled every 20 ms, is the restore's own memory.\n")
	for _, x := range r.Restores {
		var parts []string
		for _, st := range x.Phases {
			parts = append(parts, fmt.Sprintf("%s %.3f s", st.Step, st.Seconds))
		}
		fmt.Fprintf(w, "\n%s: %s.\n", x.Name, strings.Join(parts, ", "))
	}
	fmt.Fprintf(w, "\nEvery cow.img holds its chunks in a random order (the order of first writes), so blocks.dat (layout cow: the COW file renamed) is in that order too: the worst case for a restore, which writes in device order. The verify pass reads each session's blocks.dat in file order (sequential reads of up to 1 MiB with O_DIRECT where the store allows it, records sorted by offset one segment of 65536 chunks at a time, CRC-32C on two goroutines). The write pass maps each blocks.dat and copies the records out in device order in one goroutine, while another reads the mappings into memory in file order (MADV_POPULATE_READ, 4 MiB at a time) and a third writes 1 MiB runs, with O_DIRECT where the target allows it (internal/directio; the log says whether it did). Without the verify pass the write pass checks each record as it copies it. The run with the verify pass is CPU-profiled (pprof, 100 samples a second; run.sh files it as out/restore.prof).\n")
	fmt.Fprintf(w, "\nRestored device checked chunk by chunk after each restore.\n")
}

func writeConvMarkdown(w io.Writer, r Report) {
	fmt.Fprintf(w, "## Conversion (snapstore.Convert) vs `cp cow.img copy.img && sync`\n\n")
	fmt.Fprintf(w, "| pre-images | records | convert | cp | convert/cp | convert peak RSS (ru_maxrss) | read cow.img once (dd to /dev/null) | convert/read | cow.img written by CowWriter |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, c := range r.Conversion {
		fmt.Fprintf(w, "| %s | %d | %.3f s | %.3f s | **%.3f** | %.1f MiB (%.1f) | %.3f s | %.2f | %.3f s |\n", mib(c.PreImageBytes), c.Records, c.Convert.Seconds, c.Cp.Seconds, c.Ratio,
			c.Convert.peak(), float64(c.Convert.MaxRSSKB)/1024, c.Read.Seconds, c.Convert.Seconds/c.Read.Seconds, c.GenSeconds)
	}
	fmt.Fprintf(w, "\nCRC-32C runs at %.0f MB/s in memory on this machine with the implementation internal/crc32c chose (%s; hash/crc32, which uses the CPU's CRC32 instruction, %.0f MB/s here, ~20 GB/s on hardware; SHA-256 %.0f MB/s): the conversion's map-files step reads every pre-image once (with O_DIRECT where the store allows it: internal/directio) and checksums it, so where this is slower than the store's reads the conversion is CPU-bound.\n", r.CRC32CMBps, r.CRC32CImpl, r.CRC32CStdlibMBps, r.SHA256MBps)
	for _, c := range r.Conversion {
		var parts []string
		for _, st := range c.Convert.Steps {
			parts = append(parts, fmt.Sprintf("%s %.3f s", st.Step, st.Seconds))
		}
		fmt.Fprintf(w, "\nConversion steps at %s: %s.\n", mib(c.PreImageBytes), strings.Join(parts, ", "))
	}
}

func mib(b int64) string {
	if b >= 1<<30 && b%(1<<30) == 0 {
		return fmt.Sprintf("%d GiB", b>>30)
	}
	return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20))
}
