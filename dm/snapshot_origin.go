package dm

import "fmt"

// SnapshotOrigin passes I/O to Origin and, before a write reaches a chunk for
// the first time, has every snapshot of Origin copy that chunk's old content
// into its COW store.
//
//	<start> <length> snapshot-origin <origin>
//
// Snapshots find their origin by the underlying device: Origin here and the
// Origin of every Snapshot must be the same device (dmsnap's NAME-real).
type SnapshotOrigin struct {
	Start  uint64 // sectors
	Length uint64 // sectors
	Origin Dev
}

// Spec renders the table line.
func (o SnapshotOrigin) Spec() (TargetSpec, error) {
	if o.Origin.IsZero() {
		return TargetSpec{}, fmt.Errorf("snapshot-origin target: no origin device")
	}
	return TargetSpec{Start: o.Start, Length: o.Length, Type: "snapshot-origin", Params: o.Origin.String()}, nil
}
