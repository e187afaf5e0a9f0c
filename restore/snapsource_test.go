package restore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/dmsnap/dmsnap/snapstore"
)

// diskRec is one record of a session written to disk by writeStoreSession,
// with its pre-image.
type diskRec struct {
	sector uint64
	data   []byte
}

// writeStoreSession writes a packed session directory holding recs in the
// given order: a seed session (no dmsnap object, no blocks.crc) when seed,
// else a dmsnap one with checksums, whose records must then be sorted.
func writeStoreSession(t *testing.T, dir string, recs []diskRec, seed bool, devSize int64) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var dat, crc []byte
	var mrecs []snapstore.Record
	for _, r := range recs {
		mrecs = append(mrecs, snapstore.Record{Sector: r.sector, Size: uint32(len(r.data)), Offset: uint64(len(dat))})
		dat = append(dat, r.data...)
		crc = binary.LittleEndian.AppendUint32(crc, snapstore.ChecksumData(r.data))
	}
	mp := snapstore.EncodeMap(mrecs)
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(snapstore.DataFile, dat)
	write(snapstore.MapFile, mp)
	m := snapstore.Meta{Device: "/dev/test", Timestamp: 1700000000e9, BlockSize: 4096, FsType: "ext4",
		TotalBlocksSaved: int64(len(recs)), SnapshotType: snapstore.SnapshotTypeCOW}
	if !seed {
		write(snapstore.CRCFile, crc)
		hm, hc := sha256.Sum256(mp), sha256.Sum256(crc)
		m.Dmsnap = &snapstore.DmsnapMeta{FormatVersion: snapstore.MetaFormatVersion, Name: "test", Sequence: 1,
			Device: snapstore.Device{Path: "/dev/test", Size: devSize, FSUUID: "u-1"}, ChunkSize: 4096,
			Layout: snapstore.LayoutPacked, State: snapstore.StateComplete,
			Checksums: snapstore.Checksums{RecordCRC: snapstore.CRCAlgorithm,
				BlocksMap: hex.EncodeToString(hm[:]), BlocksCRC: hex.EncodeToString(hc[:])}}
	}
	b, err := snapstore.EncodeMeta(m)
	if err != nil {
		t.Fatal(err)
	}
	write(snapstore.MetaFile, b)
}

func openStore(t *testing.T, dir string) *StoreSession {
	t.Helper()
	s, err := snapstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return NewStoreSession(s)
}

func chunk(b byte) []byte { return bytes.Repeat([]byte{b}, 4096) }

func TestStoreSessionSeedOrderSorted(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "loop0_1700000000")
	// The seed wrote records in write order.
	writeStoreSession(t, dir, []diskRec{{16, chunk(3)}, {0, chunk(1)}, {8, chunk(2)}}, true, 0)
	s := openStore(t, dir)
	if info := s.Info(); info.Verified || info.State != snapstore.StatusComplete || info.ID != "loop0_1700000000" {
		t.Fatalf("info %+v", info)
	}
	plan, err := NewPlan([]Session{s})
	if err != nil {
		t.Fatal(err)
	}
	dev := bytes.Repeat([]byte{0xff}, 32<<10)
	w := &memTarget{b: dev}
	res, err := plan.Apply(context.Background(), w, ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Bytes != 3*4096 {
		t.Fatalf("wrote %d bytes", res.Bytes)
	}
	for i, want := range []byte{1, 2, 3, 0xff} {
		if got := dev[i*4096 : (i+1)*4096]; !bytes.Equal(got, bytes.Repeat([]byte{want}, 4096)) {
			t.Fatalf("chunk %d is %x..., want %x", i, got[0], want)
		}
	}
}

func TestStoreSessionSeedOverlapRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "loop0_1700000000")
	writeStoreSession(t, dir, []diskRec{{8, chunk(2)}, {0, append(chunk(1), chunk(1)...)}}, true, 0)
	s := openStore(t, dir)
	if _, err := s.Records(); !errors.Is(err, snapstore.ErrCorrupt) {
		t.Fatalf("Records of overlapping seed map: %v, want ErrCorrupt", err)
	}
	plan, err := NewPlan([]Session{s})
	if err != nil {
		t.Fatal(err)
	}
	w := &memTarget{b: make([]byte, 32<<10)}
	if _, err := plan.Apply(context.Background(), w, ApplyOptions{}); err == nil || len(w.writes) != 0 {
		t.Fatalf("apply of overlapping session: err %v, %d writes", err, w.writes)
	}
}

func TestStoreSessionDamagedMapFailsRecords(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "loop0_1700000000")
	writeStoreSession(t, dir, []diskRec{{0, chunk(1)}, {8, chunk(2)}, {800, chunk(3)}}, false, 1<<20)
	s := openStore(t, dir)
	if info := s.Info(); !info.Verified || info.Identity.Size != 1<<20 || info.Identity.FSUUID != "u-1" {
		t.Fatalf("info %+v", info)
	}
	if it, err := s.Records(); err != nil {
		t.Fatalf("intact session: %v", err)
	} else {
		it.Close()
	}
	// The last record's sector changes but stays sorted: only the whole-map
	// SHA-256 can tell, and Records must fail before yielding anything.
	mp := filepath.Join(dir, snapstore.MapFile)
	b, _ := os.ReadFile(mp)
	b[2*snapstore.RecordSize] ^= 0x10
	os.WriteFile(mp, b, 0o644)
	_, err := s.Records()
	if !errors.Is(err, snapstore.ErrChecksum) {
		t.Fatalf("Records of damaged map: %v, want ErrChecksum", err)
	}
}

func TestStoreSessionCRCErrorNamesChunk(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "loop0_1700000000")
	writeStoreSession(t, dir, []diskRec{{0, chunk(1)}, {8, chunk(2)}}, false, 1<<20)
	dat := filepath.Join(dir, snapstore.DataFile)
	b, _ := os.ReadFile(dat)
	b[4096+100] ^= 0x01 // one bit of the second record
	os.WriteFile(dat, b, 0o644)
	plan, err := NewPlan([]Session{openStore(t, dir)})
	if err != nil {
		t.Fatal(err)
	}
	w := &memTarget{b: make([]byte, 1<<20)}
	_, err = plan.Apply(context.Background(), w, ApplyOptions{})
	var re *RecordError
	if !errors.As(err, &re) || !errors.Is(err, snapstore.ErrChecksum) || re.Session != "loop0_1700000000" || re.Record.Sector != 8 {
		t.Fatalf("apply over a flipped bit: %v", err)
	}
	if len(w.writes) != 0 {
		t.Fatalf("%d writes before the damage was found", len(w.writes))
	}
}
