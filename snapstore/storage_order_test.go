//go:build !vm

package snapstore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestCheckInStorageOrder: on a session whose blocks.dat is in shuffled
// order, the storage-order check cut into many small segments checks every
// record once; a flipped byte is reported once, naming its blocks.map
// index; Verify finds the same damage through it.
func TestCheckInStorageOrder(t *testing.T) {
	old := segRecords
	segRecords = 7
	t.Cleanup(func() { segRecords = old })

	fx := makeClosedSession(t, t.TempDir(), fixtureOpts{chunkSectors: 8, devSize: 512 << 10, writes: 60, seed: 31, shuffle: true})
	convertFixture(t, fx, ConvertOptions{})
	s, err := Open(fx.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	it, err := s.Records()
	if err != nil {
		t.Fatal(err)
	}
	var entries []Entry
	var total uint64
	for {
		e, err := it.Next()
		if err != nil {
			break
		}
		entries = append(entries, e)
		total += uint64(e.Size)
	}
	it.Close()
	if len(entries) < 3*segRecords {
		t.Fatalf("fixture has %d records, want several segments of %d", len(entries), segRecords)
	}

	check := func() (done bool, checked uint64, bad map[int64]error) {
		bad = map[int64]error{}
		done, err := s.CheckInStorageOrder(context.Background(), func(n uint64) { checked += n }, func(idx int64, r Record, err error) bool {
			if r != entries[idx].Record {
				t.Errorf("bad record %d is %+v, blocks.map has %+v", idx, r, entries[idx].Record)
			}
			if _, dup := bad[idx]; dup {
				t.Errorf("record %d reported twice", idx)
			}
			bad[idx] = err
			return true
		})
		if err != nil {
			t.Fatal(err)
		}
		return done, checked, bad
	}
	done, checked, bad := check()
	if !done || checked != total || len(bad) != 0 {
		t.Fatalf("clean session: done %v, checked %d of %d bytes, bad %v", done, checked, total, bad)
	}

	// Flip a byte of one record.
	victim := entries[len(entries)/2]
	dat, err := os.OpenFile(filepath.Join(fx.dir, DataFile), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := []byte{0}
	dat.ReadAt(b, int64(victim.Offset)+5)
	b[0] ^= 0x10
	if _, err := dat.WriteAt(b, int64(victim.Offset)+5); err != nil {
		t.Fatal(err)
	}
	dat.Close()
	done, _, bad = check()
	var fe *FormatError
	if !done || len(bad) != 1 || bad[victim.Index] == nil || !errors.As(bad[victim.Index], &fe) || !errors.Is(fe, ErrChecksum) || fe.Record != victim.Index {
		t.Fatalf("after flipping record %d: done %v, bad %v", victim.Index, done, bad)
	}
	problems := verifyProblems(t, fx.dir)
	if len(problems) != 1 || problems[0].Record != victim.Index || !errors.Is(problems[0], ErrChecksum) {
		t.Fatalf("Verify found %v, want record %d's checksum", problems, victim.Index)
	}

}
