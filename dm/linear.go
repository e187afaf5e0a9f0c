package dm

import (
	"fmt"
	"strconv"
)

// Linear maps Length sectors of the mapped device onto Device starting at
// Offset. dmsnap uses it for NAME-real, which holds the raw device so that
// nothing can mount it behind the snapshot's back.
//
//	<start> <length> linear <device> <offset>
type Linear struct {
	Start  uint64 // sectors
	Length uint64 // sectors
	Device Dev
	Offset uint64 // sectors into Device
}

// Spec renders the table line.
func (l Linear) Spec() (TargetSpec, error) {
	if l.Device.IsZero() {
		return TargetSpec{}, fmt.Errorf("linear target: no device")
	}
	return TargetSpec{
		Start:  l.Start,
		Length: l.Length,
		Type:   "linear",
		Params: l.Device.String() + " " + strconv.FormatUint(l.Offset, 10),
	}, nil
}
