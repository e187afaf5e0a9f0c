package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	"github.com/dmsnap/dmsnap/restore"
	"github.com/dmsnap/dmsnap/snapstore"
)

const chunkSize = 4096

// chunkData fills b with the pre-image the benchmark gives origin chunk old
// in session seed: a slice of a random template stamped with both, so every
// chunk of every session differs and the expected device can be checked.
func chunkData(b, tmpl []byte, old uint64, seed uint64) {
	off := (old * 7919 % uint64(len(tmpl)/chunkSize)) * chunkSize
	copy(b, tmpl[off:off+chunkSize])
	binary.LittleEndian.PutUint64(b[0:], old)
	binary.LittleEndian.PutUint64(b[8:], seed)
}

func template() []byte {
	t := make([]byte, 1<<20)
	r := rand.New(rand.NewPCG(42, 42))
	for i := 0; i < len(t); i += 8 {
		binary.LittleEndian.PutUint64(t[i:], r.Uint64())
	}
	return t
}

// makeSession creates a closed session of a device of devSize bytes in
// store whose cow.img holds origin chunks [from, to) in random order, as
// the kernel would have copied them, written by snapstore.CowWriter.
func makeSession(store, name string, armed time.Time, devSize int64, from, to uint64, seed uint64) (string, error) {
	st := snapstore.State{
		Name:      name,
		Device:    snapstore.Device{Path: "/dev/" + name, Size: devSize, DevNum: snapstore.DevNum{Major: 7, Minor: 0}},
		ChunkSize: chunkSize,
		Times:     snapstore.Times{Armed: armed},
	}
	dir, err := snapstore.CreateSession(store, st)
	if err != nil {
		return "", err
	}
	f, err := os.OpenFile(filepath.Join(dir, snapstore.CowFile), os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	w, err := snapstore.NewCowWriter(f, chunkSize, snapstore.CowWriterOptions{})
	if err != nil {
		return "", err
	}
	r := rand.New(rand.NewPCG(seed, 1))
	tmpl := template()
	buf := make([]byte, chunkSize)
	for _, i := range r.Perm(int(to - from)) {
		old := from + uint64(i)
		chunkData(buf, tmpl, old, seed)
		if err := w.Add(old, buf); err != nil {
			return "", err
		}
	}
	if _, err := w.Close(); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	if dir, err = snapstore.MarkMounted(dir, armed.Add(time.Second), "ext4"); err != nil {
		return "", err
	}
	if err := snapstore.MarkUnmounted(dir, armed.Add(time.Minute)); err != nil {
		return "", err
	}
	return dir, nil
}

func runSession(args []string) error {
	fs := flag.NewFlagSet("session", flag.ContinueOnError)
	store := fs.String("store", "", "store directory")
	name := fs.String("name", "bench", "session name")
	armed := fs.Int64("armed", 1700000000, "arming time, Unix seconds")
	devSize := fs.Int64("dev-size", 1<<30, "device size, bytes")
	from := fs.Uint64("from", 0, "first origin chunk copied")
	to := fs.Uint64("to", 0, "origin chunk after the last copied")
	seed := fs.Uint64("seed", 1, "data and order seed")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *store == "" || *to <= *from || int64(*to)*chunkSize > *devSize {
		return errors.New("need -store and 0 <= -from < -to <= dev-size/4096")
	}
	dir, err := makeSession(*store, *name, time.Unix(*armed, 0), *devSize, *from, *to, *seed)
	if err != nil {
		return err
	}
	fmt.Println(dir)
	return nil
}

// startProfile starts a CPU profile (pprof) into path, unless path is
// empty; pprof.StopCPUProfile ends it (and does nothing if none started).
// The file stays open until the process exits.
func startProfile(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	return pprof.StartCPUProfile(f)
}

func runConvert(args []string) error {
	fs := flag.NewFlagSet("convert", flag.ContinueOnError)
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile (pprof) to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	args = fs.Args()
	if len(args) != 1 {
		return errors.New("usage: convert [-cpuprofile FILE] DIR")
	}
	if err := startProfile(*cpuProfile); err != nil {
		return err
	}
	defer pprof.StopCPUProfile()
	// Each step's wall time, for the report: where a conversion spends it.
	var steps []stepTime
	last := time.Now()
	_, err := snapstore.Convert(context.Background(), args[0], snapstore.ConvertOptions{AfterStep: func(step string) error {
		now := time.Now()
		steps = append(steps, stepTime{Step: step, Seconds: now.Sub(last).Seconds()})
		last = now
		return nil
	}})
	if b, jerr := json.Marshal(steps); jerr == nil {
		fmt.Fprintf(os.Stderr, "%s%s\n", stepsPrefix, b)
	}
	return err
}

// stepTime is the wall time of one conversion step (snapstore.ConvertSteps).
type stepTime struct {
	Step    string  `json:"step"`
	Seconds float64 `json:"seconds"`
}

// stepsPrefix starts the line the convert child writes with its steps.
const stepsPrefix = "benchtool-steps "

// restoreOut is what the restore child reports on stdout.
type restoreOut struct {
	Bytes  uint64     `json:"bytes"`
	Writes int64      `json:"writes"`
	Direct bool       `json:"direct"`
	Phases []stepTime `json:"phases"`
}

// phases is a restore.Progress that times each phase (plan and open are
// the time before the first phase).
type phases struct {
	last  time.Time
	steps []stepTime
}

func (p *phases) Begin(phase string, _ uint64) {
	now := time.Now()
	p.steps = append(p.steps, stepTime{Step: "plan", Seconds: now.Sub(p.last).Seconds()})
	p.steps[len(p.steps)-1].Step = "before " + phase
	p.steps = append(p.steps, stepTime{Step: phase})
	p.last = now
}
func (p *phases) Add(uint64) {}
func (p *phases) End() {
	now := time.Now()
	p.steps[len(p.steps)-1].Seconds = now.Sub(p.last).Seconds()
	p.last = now
}

func runRestore(args []string) error {
	fs := flag.NewFlagSet("restore", flag.ContinueOnError)
	target := fs.String("target", "", "block device to write")
	skip := fs.Bool("skip-verify", false, "skip the verify-before-write pass")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile (pprof) to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *target == "" || fs.NArg() == 0 {
		return errors.New("usage: restore -target DEV [-skip-verify] [-cpuprofile FILE] DIR [DIR ...]")
	}
	if err := startProfile(*cpuProfile); err != nil {
		return err
	}
	defer pprof.StopCPUProfile()
	var sessions []restore.Session
	for _, dir := range fs.Args() {
		s, err := snapstore.Open(dir)
		if err != nil {
			return err
		}
		defer s.Close()
		sessions = append(sessions, restore.NewStoreSession(s))
	}
	plan, err := restore.NewPlan(sessions)
	if err != nil {
		return err
	}
	dst, err := os.OpenFile(*target, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer dst.Close()
	ph := &phases{last: time.Now()}
	res, err := plan.Apply(context.Background(), dst, restore.ApplyOptions{SkipVerify: *skip, Progress: ph})
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(restoreOut{Bytes: res.Bytes, Writes: res.Writes, Direct: res.Direct, Phases: ph.steps})
}
