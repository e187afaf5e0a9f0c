package dm

// SnapshotMerge replaces the origin's table to copy a snapshot's pre-images
// back onto Origin inside the kernel: from the moment it is resumed the
// mapped device reads as the snapshot did, while the kernel merges chunk by
// chunk in the background. Its status has the snapshot form
// "<allocated>/<total> <metadata>"; the merge is done when allocated equals
// metadata (see SnapshotStatus.MergeDone).
//
//	<start> <length> snapshot-merge <origin> <cow> P <chunk sectors>
//
// It takes exactly a Snapshot's fields: the same origin (NAME-real) and COW.
type SnapshotMerge Snapshot

// Spec renders the table line.
func (m SnapshotMerge) Spec() (TargetSpec, error) {
	return Snapshot(m).spec("snapshot-merge")
}
