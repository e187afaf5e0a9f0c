package restore

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/dmsnap/dmsnap/internal/mmapio"
	"github.com/dmsnap/dmsnap/snapstore"
)

// cowSession makes a converted session (layout cow) of a devSize-byte
// device in store whose pre-images are chunks[old] for each old in olds,
// copied in the order given: blocks.dat holds them in that order, as the
// kernel's COW file would. It returns the session directory.
func cowSession(t *testing.T, store string, armed time.Time, devSize int64, olds []uint64, chunks map[uint64][]byte) string {
	t.Helper()
	st := snapstore.State{Name: "vdx", ChunkSize: 4096, Times: snapstore.Times{Armed: armed},
		Device: snapstore.Device{Path: "/dev/vdx", Size: devSize, DevNum: snapstore.DevNum{Major: 7, Minor: 0}}}
	dir, err := snapstore.CreateSession(store, st)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, snapstore.CowFile), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	w, err := snapstore.NewCowWriter(f, 4096, snapstore.CowWriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, old := range olds {
		if err := w.Add(old, chunks[old]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if dir, err = snapstore.MarkMounted(dir, armed.Add(time.Second), "ext4"); err != nil {
		t.Fatal(err)
	}
	if err := snapstore.MarkUnmounted(dir, armed.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := snapstore.Convert(context.Background(), dir, snapstore.ConvertOptions{}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// shuffledChain makes two cow-layout sessions of a 4 MiB device: the older
// saved chunks [0, 700), the newer [500, 1024), each in a random order. It
// returns the sessions' directories and the device the plan must produce.
func shuffledChain(t *testing.T, rng *rand.Rand) (dirs []string, want []byte) {
	t.Helper()
	const devSize = 4 << 20
	store := t.TempDir()
	want = make([]byte, devSize)
	for i, r := range [][2]uint64{{0, 700}, {500, 1024}} {
		chunks := map[uint64][]byte{}
		var olds []uint64
		for _, k := range rng.Perm(int(r[1] - r[0])) {
			old := r[0] + uint64(k)
			chunks[old] = randomBytes(rng, 4096)
			olds = append(olds, old)
		}
		for old, b := range chunks {
			if i == 0 || old >= 700 {
				copy(want[old*4096:], b)
			}
		}
		dirs = append(dirs, cowSession(t, store, time.Unix(1700000000+int64(i)*3600, 0), devSize, olds, chunks))
	}
	return dirs, want
}

func openChain(t *testing.T, dirs []string) *Plan {
	t.Helper()
	var ss []Session
	for _, d := range dirs {
		ss = append(ss, openStore(t, d))
	}
	p, err := NewPlan(ss)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// damage flips a byte of the pre-image of origin chunk old in the session
// at dir and returns the record's index.
func damage(t *testing.T, dir string, old uint64) int64 {
	t.Helper()
	s, err := snapstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	es, err := s.AllEntries()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if e.Sector == old*8 {
			f, err := os.OpenFile(filepath.Join(dir, snapstore.DataFile), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			b := make([]byte, 1)
			if _, err := f.ReadAt(b, int64(e.Offset)+100); err != nil {
				t.Fatal(err)
			}
			b[0] ^= 0x40
			if _, err := f.WriteAt(b, int64(e.Offset)+100); err != nil {
				t.Fatal(err)
			}
			return e.Index
		}
	}
	t.Fatalf("no record of chunk %d in %s", old, dir)
	return -1
}

// TestApplyStoreSessionsInStorageOrder: a plan over cow-layout sessions
// whose blocks.dat is in random order restores the right bytes, with the
// storage-order check, with and without verify (snapstore's tests cut the
// check into many segments).
func TestApplyStoreSessionsInStorageOrder(t *testing.T) {
	dirs, want := shuffledChain(t, rand.New(rand.NewPCG(21, 22)))
	for _, skip := range []bool{false, true} {
		tgt := &memTarget{b: make([]byte, len(want))}
		prog := &countProgress{}
		res, err := openChain(t, dirs).Apply(context.Background(), tgt, ApplyOptions{SkipVerify: skip, Progress: prog})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(tgt.b, want) {
			t.Fatalf("skip verify %v: target differs from the plan at byte %d", skip, firstDiff(tgt.b, want))
		}
		if res.Bytes != uint64(len(want)) || res.Writes != int64(len(want)/DefaultBufferSize) {
			t.Errorf("skip verify %v: %d bytes in %d writes, want %d in %d", skip, res.Bytes, res.Writes, len(want), len(want)/DefaultBufferSize)
		}
		// Verify reads both sessions whole: 700 + 524 chunks.
		if v := prog.done["verify"]; !skip && v != 1224*4096 {
			t.Errorf("verify pass checked %d bytes, want %d", v, 1224*4096)
		}
	}
}

// TestVerifyStorageOrderFindsDamage: a flipped byte in a used record stops
// the restore before any write, naming the session and record; one in a
// record the plan does not use (shadowed by the older session) does not.
func TestVerifyStorageOrderFindsDamage(t *testing.T) {
	dirs, want := shuffledChain(t, rand.New(rand.NewPCG(23, 24)))

	damage(t, dirs[1], 600) // shadowed by the older session's chunk 600
	tgt := &memTarget{b: make([]byte, len(want))}
	if _, err := openChain(t, dirs).Apply(context.Background(), tgt, ApplyOptions{}); err != nil {
		t.Fatalf("damage in a shadowed record stopped the restore: %v", err)
	}
	if !bytes.Equal(tgt.b, want) {
		t.Fatalf("target differs from the plan at byte %d", firstDiff(tgt.b, want))
	}

	idx := damage(t, dirs[1], 900) // used
	tgt = &memTarget{b: make([]byte, len(want))}
	_, err := openChain(t, dirs).Apply(context.Background(), tgt, ApplyOptions{})
	var re *RecordError
	if !errors.As(err, &re) || !errors.Is(err, snapstore.ErrChecksum) {
		t.Fatalf("got %v, want a RecordError for a checksum mismatch", err)
	}
	if re.Session != filepath.Base(dirs[1]) || re.Index != idx || re.Record.Sector != 900*8 {
		t.Errorf("error names session %s record %d (sector %d), want %s record %d (sector %d)",
			re.Session, re.Index, re.Record.Sector, filepath.Base(dirs[1]), idx, 900*8)
	}
	if len(tgt.writes) != 0 || tgt.syncs != 0 {
		t.Errorf("%d writes and %d syncs after a failed verify", len(tgt.writes), tgt.syncs)
	}

	// Without the verify pass the write pass checks each record and stops
	// at the damaged one.
	_, err = openChain(t, dirs).Apply(context.Background(), tgt, ApplyOptions{SkipVerify: true})
	var pw *PartialWriteError
	if !errors.As(err, &pw) || !errors.Is(err, snapstore.ErrChecksum) || !errors.As(err, &re) || re.Index != idx {
		t.Fatalf("skip verify: got %v, want a partial write stopped by record %d's checksum", err, idx)
	}
}

// countProgress sums Add per phase.
type countProgress struct {
	phase string
	done  map[string]uint64
}

func (p *countProgress) Begin(phase string, _ uint64) {
	p.phase = phase
	if p.done == nil {
		p.done = map[string]uint64{}
	}
}
func (p *countProgress) Add(n uint64) { p.done[p.phase] += n }
func (p *countProgress) End()         {}

// TestApplyBlocksDatShrinks: blocks.dat cut short while the write pass reads
// it through its mapping stops the restore with an error naming the record
// (a fault on the mapping, turned into mmapio.ErrFault), not with a crash.
func TestApplyBlocksDatShrinks(t *testing.T) {
	dirs, want := shuffledChain(t, rand.New(rand.NewPCG(25, 26)))
	dat := filepath.Join(dirs[1], snapstore.DataFile)
	tgt := &memTarget{b: make([]byte, len(want))}
	tgt.onWrite = func() {
		if len(tgt.writes) == 0 {
			if err := os.Truncate(dat, 4096); err != nil {
				t.Error(err)
			}
		}
	}
	// Small writes, so the reader is still reading when the file shrinks.
	_, err := openChain(t, dirs).Apply(context.Background(), tgt, ApplyOptions{BufferSize: 64 << 10})
	var pw *PartialWriteError
	var re *RecordError
	if !errors.As(err, &pw) || !errors.As(err, &re) || !errors.Is(err, mmapio.ErrFault) {
		t.Fatalf("got %v, want a partial write stopped by a record's fault", err)
	}
	if re.Session != filepath.Base(dirs[1]) {
		t.Errorf("error names session %s, want %s", re.Session, filepath.Base(dirs[1]))
	}
}

// TestPrefetchStops: prefetch's stop returns, mid-way or at the end, over
// store readers and others, over a blocks.dat cut short after it was mapped
// (its faults are left to the write pass), and the readers close after it.
func TestPrefetchStops(t *testing.T) {
	dirs, _ := shuffledChain(t, rand.New(rand.NewPCG(27, 28)))
	for _, wait := range []bool{false, true} {
		var rs []recordReader
		for _, d := range dirs {
			r, err := openRecordReader(openStore(t, d), false)
			if err != nil {
				t.Fatal(err)
			}
			if sr, ok := r.(*storeReader); !ok || sr.mapped == nil {
				t.Fatalf("%s: reader %T, not a mapped store reader", d, r)
			}
			rs = append(rs, r)
		}
		rs = append(rs, sessionReader{})
		sum := Summary{Sessions: make([]SessionSummary, len(rs))}
		for i := range sum.Sessions {
			sum.Sessions[i] = SessionSummary{RecordBytes: 4096, UsedRecordBytes: 4096}
		}
		if err := os.Truncate(filepath.Join(dirs[1], snapstore.DataFile), 4096); err != nil {
			t.Fatal(err)
		}
		stop := prefetch(rs, sum)
		if wait {
			time.Sleep(50 * time.Millisecond)
		}
		stop()
		for _, r := range rs {
			if err := r.close(); err != nil {
				t.Error(err)
			}
		}
	}
}

// TestToPrefetch: only mapped store readers of sessions the plan uses a
// quarter or more of are prefetched; a session barely used, or not at all,
// is read record by record.
func TestToPrefetch(t *testing.T) {
	dirs, _ := shuffledChain(t, rand.New(rand.NewPCG(29, 30)))
	var rs []recordReader
	for _, d := range dirs {
		r, err := openRecordReader(openStore(t, d), false)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.close() })
		rs = append(rs, r)
	}
	rs = append(rs, sessionReader{}, &storeReader{})
	for _, c := range []struct {
		used []uint64 // of 1000 record bytes, per reader
		want []int
	}{
		{[]uint64{1000, 1000, 1000, 1000}, []int{0, 1}},
		{[]uint64{250, 249, 1000, 1000}, []int{0}},
		{[]uint64{0, 1000, 1000, 1000}, []int{1}},
	} {
		sum := Summary{}
		for _, u := range c.used {
			sum.Sessions = append(sum.Sessions, SessionSummary{RecordBytes: 1000, UsedRecordBytes: u})
		}
		got := toPrefetch(rs, sum)
		var idx []int
		for _, sr := range got {
			idx = append(idx, slices.Index(rs, recordReader(sr)))
		}
		if !slices.Equal(idx, c.want) {
			t.Errorf("used %v: prefetches readers %v, want %v", c.used, idx, c.want)
		}
	}
}
