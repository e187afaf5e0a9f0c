//go:build !vm

package snapstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// seedRestore is the seed's restore tool in miniature, written from the
// 20-byte layout alone (no package code): for each record of blocks.map,
// in file order, read size bytes at offset in blocks.dat and write them at
// sector*512 of the device. It proves dmsnap's sessions stay readable by
// the seed's tools.
func seedRestore(t testing.TB, dir string, device []byte) {
	t.Helper()
	m, err := os.ReadFile(filepath.Join(dir, "blocks.map"))
	if err != nil {
		t.Fatal(err)
	}
	dat, err := os.Open(filepath.Join(dir, "blocks.dat"))
	if err != nil {
		t.Fatal(err)
	}
	defer dat.Close()
	if len(m)%20 != 0 {
		t.Fatalf("blocks.map is %d bytes, not a multiple of 20", len(m))
	}
	for i := 0; i < len(m); i += 20 {
		sector := binary.LittleEndian.Uint64(m[i:])
		size := binary.LittleEndian.Uint32(m[i+8:])
		offset := binary.LittleEndian.Uint64(m[i+12:])
		buf := make([]byte, size)
		if _, err := dat.ReadAt(buf, int64(offset)); err != nil {
			t.Fatalf("record %d: read %d bytes at %d: %v", i/20, size, offset, err)
		}
		copy(device[sector*512:], buf)
	}
}

func TestSeedReaderRestoresDmsnapSession(t *testing.T) {
	for _, layout := range []string{LayoutCOW, LayoutPacked} {
		t.Run(layout, func(t *testing.T) {
			fx := makeClosedSession(t, t.TempDir(), fixtureOpts{chunkSectors: 8, devSize: 1<<20 + 2048, writes: 80, seed: 77, shuffle: true})
			convertFixture(t, fx, ConvertOptions{Copy: layout == LayoutPacked})
			dev := bytes.Clone(fx.sim.dev)
			seedRestore(t, fx.dir, dev)
			if !bytes.Equal(dev, fx.sim.pre) {
				t.Fatal("the seed's way of restoring does not give back the device before the session")
			}
			// And the seed's meta keys are all there with the seed's types.
			b, _ := os.ReadFile(filepath.Join(fx.dir, MetaFile))
			for _, k := range []string{`"device": "/dev/loop7"`, `"timestamp": 1709294402000000000`, `"block_size": 4096`, `"fs_type": "ext4"`, `"total_blocks_saved": `, `"snapshot_type": "COW"`} {
				if !bytes.Contains(b, []byte(k)) {
					t.Errorf("meta.json lacks %s", k)
				}
			}
		})
	}
}

// seedSession hand-builds a session the way the seed's kernel module wrote
// one: blocks.dat appended in write order, blocks.map records in write order
// (4 KiB blocks, sector = block × 8), meta.json with the seed's keys only.
// It returns the device before and after the session.
func seedSession(t testing.TB, store string, id string, writes []int64) (pre, cur []byte) {
	t.Helper()
	const blk = 4096
	r := rand.New(rand.NewPCG(5, 5))
	pre = randomDevice(r, 64*blk)
	cur = bytes.Clone(pre)
	dir := filepath.Join(store, id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var dat, m []byte
	seen := map[int64]bool{}
	for _, b := range writes {
		if !seen[b] {
			seen[b] = true
			rec := Record{Sector: uint64(b * blk / SectorSize), Size: blk, Offset: uint64(len(dat))}
			dat = append(dat, cur[b*blk:(b+1)*blk]...)
			m = rec.Append(m)
		}
		for i := b * blk; i < (b+1)*blk; i++ {
			cur[i] = byte(r.Uint32())
		}
	}
	for name, b := range map[string][]byte{"blocks.dat": dat, "blocks.map": m, "meta.json": seedMeta("/dev/loop0", 1700000000123456789, len(seen))} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return pre, cur
}

func TestSeedSessionListedAndReadable(t *testing.T) {
	store := t.TempDir()
	pre, cur := seedSession(t, store, "loop0_1700000000", []int64{9, 2, 40, 2, 17, 0, 63, 9})

	infos, err := ListSessions(store)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 1 || infos[0].Status != StatusUnverified || infos[0].Name != "loop0" || infos[0].Time.Unix() != 1700000000 {
		t.Fatalf("listed %+v", infos)
	}
	dir := infos[0].Dir
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Verified() || s.Invalid() {
		t.Fatal("seed session reported verified or invalid")
	}
	entries, err := s.AllEntries()
	if err != nil {
		t.Fatal(err)
	}
	var sectors []uint64
	for _, e := range entries {
		sectors = append(sectors, e.Sector)
		if e.HasCRC {
			t.Fatal("seed record with a CRC")
		}
	}
	if want := []uint64{0, 16, 72, 136, 320, 504}; !equalU64(sectors, want) {
		t.Fatalf("records in order %v, want sector order %v", sectors, want)
	}
	// Index keeps the position in the seed's write-ordered map.
	if entries[0].Index != 4 || entries[1].Index != 1 {
		t.Fatalf("indexes %d, %d", entries[0].Index, entries[1].Index)
	}
	for _, e := range entries {
		p := make([]byte, e.Size)
		if err := s.ReadRecord(e.Record, p); err != nil || !bytes.Equal(p, pre[e.Start():e.End()]) {
			t.Fatalf("ReadRecord(sector %d): %v", e.Sector, err)
		}
	}
	rc, err := NewReconstructor(bytes.NewReader(cur), int64(len(cur)), s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(io.NewSectionReader(rc, 0, rc.Size()))
	if err != nil || !bytes.Equal(got, pre) {
		t.Fatalf("reconstructed seed session differs from the device before it (%v)", err)
	}
	// A range that straddles records.
	part := make([]byte, 10000)
	if _, err := rc.ReadAt(part, 4096*8+100); err != nil || !bytes.Equal(part, pre[4096*8+100:4096*8+10100]) {
		t.Fatalf("partial read differs (%v)", err)
	}
	res, err := Verify(context.Background(), dir)
	if err != nil || !res.Unverified || res.Records != 6 {
		t.Fatalf("Verify = %+v, %v", res, err)
	}
}

func TestSeedSessionBroken(t *testing.T) {
	t.Run("overlap", func(t *testing.T) {
		store := t.TempDir()
		seedSession(t, store, "loop0_1700000000", []int64{1, 2})
		dir := filepath.Join(store, "loop0_1700000000")
		p := filepath.Join(dir, MapFile)
		b, _ := os.ReadFile(p)
		b = (Record{Sector: 12, Size: 4096, Offset: 0}).Append(b) // sectors 12-19 overlap block 1 (8-15) and 2 (16-23)
		os.WriteFile(p, b, 0o644)
		probs := verifyProblems(t, dir)
		if len(probs) != 1 || !errors.Is(probs[0], ErrCorrupt) || !strings.Contains(probs[0].Msg, "overlaps record") {
			t.Fatalf("problems %v", probs)
		}
	})
	t.Run("map past EOF", func(t *testing.T) {
		store := t.TempDir()
		seedSession(t, store, "loop0_1700000000", []int64{1, 2})
		dir := filepath.Join(store, "loop0_1700000000")
		p := filepath.Join(dir, MapFile)
		b, _ := os.ReadFile(p)
		b = (Record{Sector: 80, Size: 4096, Offset: 8192}).Append(b) // blocks.dat holds 8192 bytes
		os.WriteFile(p, b, 0o644)
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		_, err = s.AllEntries()
		var fe *FormatError
		if !errors.As(err, &fe) || !errors.Is(err, ErrTruncated) || fe.Record != 2 || !strings.Contains(err.Error(), "sector 80") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("map cut short", func(t *testing.T) {
		store := t.TempDir()
		seedSession(t, store, "loop0_1700000000", []int64{1, 2})
		dir := filepath.Join(store, "loop0_1700000000")
		os.Truncate(filepath.Join(dir, MapFile), 30)
		probs := verifyProblems(t, dir)
		if len(probs) != 1 || !errors.Is(probs[0], ErrTruncated) || probs[0].Offset != 20 {
			t.Fatalf("problems %v", probs)
		}
	})
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
