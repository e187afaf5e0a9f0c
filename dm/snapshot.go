package dm

import (
	"fmt"
	"math/bits"
	"strconv"
)

// Snapshot presents Origin as it was when the snapshot was resumed, keeping
// the pre-images of overwritten chunks in a persistent ("P") exception store
// on COW.
//
//	<start> <length> snapshot <origin> <cow> P <chunk sectors>
//
// Origin must be the device under the snapshot-origin target (NAME-real),
// never the snapshot-origin device itself: the kernel finds the origin by
// device, and a snapshot naming the snapshot-origin device gets no copies at
// all, silently. For an existing store the chunk size in its header wins over
// ChunkSectors; a new store (first 4 KiB zero) takes ChunkSectors.
type Snapshot struct {
	Start        uint64 // sectors
	Length       uint64 // sectors; the origin's size
	Origin       Dev
	COW          Dev
	ChunkSectors uint32 // power of two; 8 = 4 KiB
}

// Spec renders the table line.
func (s Snapshot) Spec() (TargetSpec, error) {
	return s.spec("snapshot")
}

func (s Snapshot) spec(typ string) (TargetSpec, error) {
	switch {
	case s.Origin.IsZero():
		return TargetSpec{}, fmt.Errorf("%s target: no origin device", typ)
	case s.COW.IsZero():
		return TargetSpec{}, fmt.Errorf("%s target: no COW device", typ)
	case s.Origin == s.COW:
		return TargetSpec{}, fmt.Errorf("%s target: origin and COW are the same device %s", typ, s.Origin)
	}
	if err := ValidateChunkSectors(s.ChunkSectors); err != nil {
		return TargetSpec{}, fmt.Errorf("%s target: %w", typ, err)
	}
	return TargetSpec{
		Start:  s.Start,
		Length: s.Length,
		Type:   typ,
		Params: s.Origin.String() + " " + s.COW.String() + " P " + strconv.FormatUint(uint64(s.ChunkSectors), 10),
	}, nil
}

// ValidateChunkSectors checks a snapshot chunk size: a power of two, at
// least one sector. The kernel also wants it to be a multiple of both
// devices' logical block sizes; it checks that itself at table load.
func ValidateChunkSectors(c uint32) error {
	if c == 0 || bits.OnesCount32(c) != 1 {
		return fmt.Errorf("chunk size %d sectors is not a power of two", c)
	}
	return nil
}
