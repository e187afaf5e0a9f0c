package restore_test

import (
	"context"
	"fmt"
	"os"

	"github.com/dmsnap/dmsnap/restore"
)

// byteSession is the smallest possible Session: records in memory over a
// blocks.dat held in a byte slice. A snapstore adapter has the same shape.
type byteSession struct {
	id   string
	recs []restore.Record
	dat  []byte
}

func (s *byteSession) ID() string { return s.id }
func (s *byteSession) Records() (restore.RecordIter, error) {
	return &restore.SliceRecords{Recs: s.recs}, nil
}
func (s *byteSession) ReadRecord(r restore.Record, p []byte) error {
	copy(p, s.dat[r.Offset:r.Offset+uint64(r.Size)])
	return nil
}

// memDevice is an io.WriterAt over a byte slice.
type memDevice []byte

func (d memDevice) WriteAt(p []byte, off int64) (int, error) { return copy(d[off:], p), nil }

func Example() {
	// The device now: "ABCDEFGH" in 512-byte sectors of one letter each.
	dev := make(memDevice, 8*restore.SectorSize)
	for i := range dev {
		dev[i] = "ABCDEFGH"[i/restore.SectorSize]
	}
	sector := func(c byte) []byte {
		b := make([]byte, restore.SectorSize)
		for i := range b {
			b[i] = c
		}
		return b
	}
	// The target session saved sector 2 (it was 'c' before the session);
	// the later session saved sectors 1-3 (they were 'b', 'C', 'd' before
	// it, 'C' being the target session's own write).
	older := &byteSession{id: "sdb1_1700000000",
		recs: []restore.Record{{Sector: 2, Size: 512, Offset: 0}},
		dat:  sector('c')}
	newer := &byteSession{id: "sdb1_1700000100",
		recs: []restore.Record{{Sector: 1, Size: 1536, Offset: 0}},
		dat:  append(append(sector('b'), sector('C')...), sector('d')...)}

	plan, err := restore.NewPlan([]restore.Session{older, newer})
	if err != nil {
		fmt.Println(err)
		return
	}
	sum, err := plan.Summarize(context.Background())
	if err != nil {
		fmt.Println(err)
		return
	}
	sum.WriteText(os.Stdout)
	if _, err := plan.Apply(context.Background(), dev, restore.ApplyOptions{TargetSize: uint64(len(dev))}); err != nil {
		fmt.Println(err)
		return
	}
	for i := 0; i < len(dev); i += restore.SectorSize {
		fmt.Printf("%c", dev[i])
	}
	fmt.Println()
	// Output:
	// restore plan: 2 sessions, 1.5 KiB (1536 bytes) in 3 extents, 1 contiguous run
	// device range: bytes 512 to 2047 (sectors 1 to 3), inclusive
	// session          records  used  shadowed  extents  bytes
	// sdb1_1700000000  1        1     0         1        512 B
	// sdb1_1700000100  1        1     0         2        1.0 KiB
	// AbcdEFGH
}
