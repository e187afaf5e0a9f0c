//go:build !vm

package snapstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"time"

	"golang.org/x/sys/unix"
)

func TestConvertRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		sectors uint32
		devSize int64
		writes  int
	}{
		{1, 256 << 10, 200},              // 512-byte chunks, many metadata areas
		{8, 1 << 20, 150},                // 4 KiB, the default
		{8, 1<<20 + 3*SectorSize, 150},   // device not a multiple of the chunk
		{128, 4<<20 + 5*SectorSize, 60},  // 64 KiB, clamped last chunk
		{1024, 8<<20 + 1*SectorSize, 20}, // 512 KiB
	} {
		for _, layout := range []string{LayoutCOW, LayoutPacked} {
			t.Run(fmt.Sprintf("%dB/%d/%s", tc.sectors*SectorSize, tc.devSize, layout), func(t *testing.T) {
				fx := makeClosedSession(t, t.TempDir(), fixtureOpts{
					chunkSectors: tc.sectors, devSize: tc.devSize, writes: tc.writes, seed: uint64(tc.devSize), shuffle: true,
				})
				// Make sure the last, partial chunk is in the session.
				var p phaseRecorder
				res := convertFixture(t, fx, ConvertOptions{Copy: layout == LayoutPacked, Progress: &p})
				if !slices.Equal(res.Steps, ConvertSteps) {
					t.Fatalf("steps %v, want %v", res.Steps, ConvertSteps)
				}
				m := res.Meta
				if m.Dmsnap == nil || m.Dmsnap.State != StateComplete || m.Dmsnap.Layout != layout {
					t.Fatalf("meta %+v", m.Dmsnap)
				}
				if m.TotalBlocksSaved != int64(len(fx.sim.copied)) || m.BlockSize != tc.sectors*SectorSize || m.Timestamp != fixtureTime.Add(2e9).UnixNano() {
					t.Fatalf("meta: %d blocks, block size %d, timestamp %d", m.TotalBlocksSaved, m.BlockSize, m.Timestamp)
				}
				for _, name := range []string{CowFile, StateFile} {
					if _, err := os.Stat(filepath.Join(fx.dir, name)); !errors.Is(err, fs.ErrNotExist) {
						t.Errorf("%s still there after conversion (%v)", name, err)
					}
				}
				// One "convert" phase: every chunk read (the COW layout
				// reads whole chunks) or every record's bytes copied.
				want := uint64(len(fx.sim.copied)) * uint64(tc.sectors*SectorSize)
				if layout == LayoutPacked {
					want = 0
					for c := range fx.sim.copied {
						want += uint64(min(int64(tc.sectors*SectorSize), tc.devSize-int64(c)*int64(tc.sectors*SectorSize)))
					}
				}
				if p.String() != fmt.Sprintf("convert %d/%d;", want, want) {
					t.Errorf("progress %q, want one convert phase of %d bytes", p.String(), want)
				}
				var vp phaseRecorder
				vr, err := VerifyProgress(context.Background(), fx.dir, &vp)
				if err != nil {
					t.Fatal(err)
				}
				if vp.String() != fmt.Sprintf("verify %d/%d;", vr.Bytes, vr.Bytes) || vr.Bytes == 0 {
					t.Errorf("verify's progress %q, want one verify phase of %d bytes", vp.String(), vr.Bytes)
				}
				checkPreImages(t, fx.dir, fx.sim)
				if layout == LayoutCOW {
					checkNoStaleMetadata(t, fx)
				}
			})
		}
	}
}

// checkNoStaleMetadata: blocks.dat keeps the COW's data where it was (a
// record's offset is new_chunk × chunk size) and holds no header or
// exception list any more.
func checkNoStaleMetadata(t *testing.T, fx *sessionFixture) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fx.dir, DataFile))
	if err != nil {
		t.Fatal(err)
	}
	g := fx.sim.g
	cb := g.ChunkBytes()
	for c := int64(0); c*cb < int64(len(b)); c++ {
		if g.IsMetadataChunk(uint64(c)) {
			if chunk := b[c*cb : min(int64(len(b)), (c+1)*cb)]; bytes.Count(chunk, []byte{0}) != len(chunk) {
				t.Fatalf("chunk %d of blocks.dat (header or metadata) is not zero", c)
			}
		}
	}
	// Holes, not zeros written: the data pass read the file and the punch
	// freed the metadata chunks.
	f, err := os.Open(filepath.Join(fx.dir, DataFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if len(b) > 0 && cb >= 4096 { // a punch smaller than a filesystem block only zeroes
		if off, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_HOLE); err != nil || off != 0 {
			t.Fatalf("SEEK_HOLE from 0 = %d, %v; want a hole at 0 (the header chunk)", off, err)
		}
	}
}

func TestConvertEmptySession(t *testing.T) {
	fx := makeClosedSession(t, t.TempDir(), fixtureOpts{chunkSectors: 8, devSize: 1 << 20, writes: 0, seed: 1})
	res := convertFixture(t, fx, ConvertOptions{})
	if res.Meta.TotalBlocksSaved != 0 || res.Meta.Dmsnap.State != StateComplete {
		t.Fatalf("meta %+v", res.Meta)
	}
	for name, want := range map[string]int64{DataFile: 0, MapFile: 0, CRCFile: 0} {
		if fi, err := os.Stat(filepath.Join(fx.dir, name)); err != nil || fi.Size() != want {
			t.Fatalf("%s: %v, size %d", name, err, fi.Size())
		}
	}
	if _, err := Verify(context.Background(), fx.dir); err != nil {
		t.Fatal(err)
	}
}

// TestConvertCrashAtEveryStep stops Convert after each step, as a crash
// would, then runs it again: the result must be byte-identical to an
// uninterrupted conversion and verify.
func TestConvertCrashAtEveryStep(t *testing.T) {
	for _, layout := range []string{LayoutCOW, LayoutPacked} {
		o := fixtureOpts{chunkSectors: 8, devSize: 1<<20 + SectorSize, writes: 120, seed: 42, shuffle: true}
		ref := makeClosedSession(t, t.TempDir(), o)
		convertFixture(t, ref, ConvertOptions{Copy: layout == LayoutPacked})
		want := readSessionFiles(t, ref.dir)

		for _, crashAt := range ConvertSteps {
			t.Run(layout+"/"+crashAt, func(t *testing.T) {
				fx := makeClosedSession(t, t.TempDir(), o)
				crash := errors.New("simulated crash")
				_, err := Convert(context.Background(), fx.dir, ConvertOptions{
					Copy: layout == LayoutPacked,
					Now:  fixedNow,
					AfterStep: func(step string) error {
						if step == crashAt {
							// A crash also leaves renameio's temporary
							// files behind.
							os.WriteFile(filepath.Join(fx.dir, ".blocks.map4242"), []byte("junk"), 0o600)
							return crash
						}
						return nil
					},
				})
				if !errors.Is(err, crash) {
					t.Fatalf("first run: %v, want the simulated crash", err)
				}
				if crashAt != StepMeta && crashAt != StepCleanup {
					if info := Inspect(fx.dir); info.Status != StatusIncomplete {
						t.Fatalf("after a crash at %s the session lists as %s, want incomplete", crashAt, info.Status)
					}
					if _, err := Open(fx.dir); !errors.Is(err, ErrIncomplete) {
						t.Fatalf("Open after a crash at %s: %v, want ErrIncomplete", crashAt, err)
					}
				}
				// The restart runs at a later time: nothing may depend on it.
				res, err := Convert(context.Background(), fx.dir, ConvertOptions{Now: func() time.Time { return fixedNow().Add(time.Hour) }})
				if err != nil {
					t.Fatalf("restart after a crash at %s: %v", crashAt, err)
				}
				if crashAt == StepCleanup && len(res.Steps) != 0 {
					t.Fatalf("restart after the last step ran %v", res.Steps)
				}
				got := readSessionFiles(t, fx.dir)
				for name := range want {
					if !bytes.Equal(got[name], want[name]) {
						t.Errorf("%s differs from an uninterrupted conversion", name)
					}
				}
				if !slices.Equal(sortedKeys(got), sortedKeys(want)) {
					t.Errorf("files %v, want %v", sortedKeys(got), sortedKeys(want))
				}
				if _, err := Verify(context.Background(), fx.dir); err != nil {
					t.Fatal(err)
				}
				checkPreImages(t, fx.dir, fx.sim)
			})
		}
	}
}

func sortedKeys(m map[string][]byte) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	slices.Sort(k)
	return k
}

// readSessionFiles reads every file of a session directory.
func readSessionFiles(t testing.TB, dir string) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	return out
}

func TestConvertInvalidStore(t *testing.T) {
	fx := makeClosedSession(t, t.TempDir(), fixtureOpts{chunkSectors: 8, devSize: 512 << 10, writes: 30, seed: 5, invalid: true})
	res := convertFixture(t, fx, ConvertOptions{})
	d := res.Meta.Dmsnap
	if d.State != StateInvalid || d.InvalidReason != "snapshot Invalid: COW store full" {
		t.Fatalf("state %q, reason %q", d.State, d.InvalidReason)
	}
	if len(d.Notes) == 0 || !strings.Contains(d.Notes[0], "marked the snapshot invalid") {
		t.Fatalf("notes %q", d.Notes)
	}
	if info := Inspect(fx.dir); info.Status != StatusInvalid {
		t.Fatalf("listed as %s, want invalid", info.Status)
	}
	// What the kernel committed before giving up is still a good pre-image.
	checkPreImages(t, fx.dir, fx.sim)
}

func TestConvertUninitialisedStore(t *testing.T) {
	fx := makeClosedSession(t, t.TempDir(), fixtureOpts{chunkSectors: 8, devSize: 512 << 10, seed: 6, noCow: true})
	// CreateSession made an all-zero cow.img; leave it so.
	res := convertFixture(t, fx, ConvertOptions{})
	if d := res.Meta.Dmsnap; d.State != StateInvalid || !strings.Contains(d.InvalidReason, "never initialised") {
		t.Fatalf("state %q, reason %q", d.State, d.InvalidReason)
	}
}

func TestConvertDamagedStore(t *testing.T) {
	mk := func(t *testing.T) (*sessionFixture, []byte) {
		fx := makeClosedSession(t, t.TempDir(), fixtureOpts{chunkSectors: 1, devSize: 64 << 10, writes: 40, seed: 9})
		b, err := os.ReadFile(filepath.Join(fx.dir, CowFile))
		if err != nil {
			t.Fatal(err)
		}
		return fx, b
	}
	g := Geometry{ChunkSectors: 1}
	slot := func(i int64) int64 { return g.AreaChunk(i/32)*g.ChunkBytes() + (i%32)*16 }
	write := func(t *testing.T, fx *sessionFixture, b []byte) {
		if err := os.WriteFile(filepath.Join(fx.dir, CowFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("strict", func(t *testing.T) {
		fx, b := mk(t)
		putU64(b[slot(10)+8:], uint64(g.AreaChunk(1))) // exception 10 points at a metadata area
		write(t, fx, b)
		_, err := Convert(context.Background(), fx.dir, ConvertOptions{Now: fixedNow})
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "cow.img: record 10") {
			t.Fatalf("err = %v, want corrupt cow.img record 10", err)
		}
		if info := Inspect(fx.dir); info.Status != StatusIncomplete {
			t.Fatalf("a failed conversion lists as %s", info.Status)
		}
	})
	t.Run("salvage", func(t *testing.T) {
		fx, b := mk(t)
		putU64(b[slot(10)+8:], uint64(g.AreaChunk(1)))
		write(t, fx, b)
		res := convertFixture(t, fx, ConvertOptions{Salvage: true})
		if res.Meta.TotalBlocksSaved != 10 || res.Meta.Dmsnap.State != StateInvalid {
			t.Fatalf("salvaged %d records, state %s", res.Meta.TotalBlocksSaved, res.Meta.Dmsnap.State)
		}
		if _, err := Verify(context.Background(), fx.dir); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("duplicate old chunk", func(t *testing.T) {
		fx, b := mk(t)
		// Exception 12 repeats exception 3's origin chunk with other data:
		// the first one is the pre-image (the kernel's lookup finds it).
		copy(b[slot(12):slot(12)+8], b[slot(3):slot(3)+8])
		write(t, fx, b)
		dupOld := fx.sim.list[12].OldChunk
		delete(fx.sim.copied, dupOld) // chunk dupOld is no longer in the session
		// ... so the device must be rebuilt without it.
		cb := g.ChunkBytes()
		copy(fx.sim.pre[int64(dupOld)*cb:], fx.sim.dev[int64(dupOld)*cb:(int64(dupOld)+1)*cb])
		res := convertFixture(t, fx, ConvertOptions{})
		if res.Meta.Dmsnap.State != StateComplete || len(res.Meta.Dmsnap.Notes) != 1 || !strings.Contains(res.Meta.Dmsnap.Notes[0], "dropped 1 duplicate") {
			t.Fatalf("state %s, notes %q", res.Meta.Dmsnap.State, res.Meta.Dmsnap.Notes)
		}
		checkPreImages(t, fx.dir, fx.sim)
	})
	t.Run("shared COW chunk", func(t *testing.T) {
		fx, b := mk(t)
		copy(b[slot(7)+8:slot(7)+16], b[slot(2)+8:slot(2)+16])
		write(t, fx, b)
		if _, err := Convert(context.Background(), fx.dir, ConvertOptions{Now: fixedNow}); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "both point at COW chunk") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("exception past the device", func(t *testing.T) {
		fx, b := mk(t)
		putU64(b[slot(4):], 1<<20)
		write(t, fx, b)
		if _, err := Convert(context.Background(), fx.dir, ConvertOptions{Now: fixedNow}); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "past the end of the device") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestConvertRefusesOpenSession(t *testing.T) {
	store := t.TempDir()
	dir, err := CreateSession(store, State{Name: "sdb1", Device: Device{Path: "/dev/sdb1", Size: 1 << 20}, ChunkSize: 4096, Times: Times{Armed: fixtureTime}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Convert(context.Background(), dir, ConvertOptions{}); !errors.Is(err, ErrNotClosed) {
		t.Fatalf("converting an armed session: %v, want ErrNotClosed", err)
	}
	if dir, err = MarkMounted(dir, fixtureTime.Add(time.Second), "xfs"); err != nil {
		t.Fatal(err)
	}
	if _, err := Convert(context.Background(), dir, ConvertOptions{}); !errors.Is(err, ErrNotClosed) {
		t.Fatalf("converting an open session: %v, want ErrNotClosed", err)
	}
	if _, err := os.Stat(filepath.Join(dir, CowFile)); err != nil {
		t.Fatalf("cow.img touched: %v", err)
	}
}

func TestConvertLeavesDamagedMetaAlone(t *testing.T) {
	fx := makeClosedSession(t, t.TempDir(), fixtureOpts{chunkSectors: 8, devSize: 256 << 10, writes: 5, seed: 2})
	convertFixture(t, fx, ConvertOptions{})
	p := filepath.Join(fx.dir, MetaFile)
	b, _ := os.ReadFile(p)
	b[10] ^= 1
	os.WriteFile(p, b, 0o644)
	if _, err := Convert(context.Background(), fx.dir, ConvertOptions{}); err == nil || !strings.Contains(err.Error(), "not touching") {
		t.Fatalf("err = %v", err)
	}
	if after, _ := os.ReadFile(p); !bytes.Equal(after, b) {
		t.Fatal("Convert rewrote a damaged meta.json")
	}
}

func TestConvertHeaderChunkSizeWins(t *testing.T) {
	// The table asked for 8 KiB chunks but the store says 4 KiB: the kernel
	// uses the store's, and so does Convert.
	fx := makeClosedSession(t, t.TempDir(), fixtureOpts{chunkSectors: 8, devSize: 256 << 10, writes: 10, seed: 8})
	if err := UpdateState(fx.dir, func(s *State) error { s.ChunkSize = 8192; return nil }); err != nil {
		t.Fatal(err)
	}
	res := convertFixture(t, fx, ConvertOptions{})
	d := res.Meta.Dmsnap
	if d.ChunkSize != 4096 || res.Meta.BlockSize != 4096 || d.State != StateComplete || len(d.Notes) != 1 || !strings.Contains(d.Notes[0], "overrides 8192") {
		t.Fatalf("chunk size %d, block size %d, state %s, notes %q", d.ChunkSize, res.Meta.BlockSize, d.State, d.Notes)
	}
	checkPreImages(t, fx.dir, fx.sim)
}

// A COW whose second half went to the tail file (the kernel ran past the
// mapped part before the watcher mapped more, dm.AttachCOW): conversion
// folds the tail back first, and the session holds every pre-image.
func TestConvertFoldsTheTail(t *testing.T) {
	fx := makeClosedSession(t, t.TempDir(), fixtureOpts{chunkSectors: 8, devSize: 1 << 20, writes: 150, seed: 11, shuffle: true})
	cow, tail := filepath.Join(fx.dir, CowFile), filepath.Join(fx.dir, CowTailFile)
	b, err := os.ReadFile(cow)
	if err != nil {
		t.Fatal(err)
	}
	half := int64(len(b)/2) / 4096 * 4096
	// cow.img keeps its first half; the tail, sparse, holds the rest at
	// the same offsets, cow.img zeros there.
	tf, err := os.Create(tail)
	if err != nil {
		t.Fatal(err)
	}
	tf.Truncate(int64(len(b)))
	if _, err := tf.WriteAt(b[half:], half); err != nil {
		t.Fatal(err)
	}
	tf.Close()
	f, err := os.OpenFile(cow, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, len(b)-int(half)), half); err != nil {
		t.Fatal(err)
	}
	f.Close()
	convertFixture(t, fx, ConvertOptions{})
	if _, err := os.Stat(tail); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("cow.tail still there after conversion (%v)", err)
	}
	if _, err := Verify(context.Background(), fx.dir); err != nil {
		t.Fatal(err)
	}
	checkPreImages(t, fx.dir, fx.sim)
}

// phaseRecorder is a Progress that keeps "phase done/total;" per phase.
type phaseRecorder struct {
	b           strings.Builder
	phase       string
	total, done uint64
	open        bool
}

func (r *phaseRecorder) Begin(phase string, total uint64) {
	r.End()
	r.phase, r.total, r.done, r.open = phase, total, 0, true
}

func (r *phaseRecorder) Add(n uint64) { r.done += n }

func (r *phaseRecorder) End() {
	if r.open {
		fmt.Fprintf(&r.b, "%s %d/%d;", r.phase, r.done, r.total)
		r.open = false
	}
}

func (r *phaseRecorder) String() string { return r.b.String() }
