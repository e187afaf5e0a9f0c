package dm

import (
	"fmt"
	"strconv"
	"strings"
)

// SnapshotState is the condition a snapshot or snapshot-merge target reports.
type SnapshotState int

const (
	// SnapshotActive: valid, with usage figures.
	SnapshotActive SnapshotState = iota
	// SnapshotInvalid: the kernel dropped the snapshot (COW full, I/O error).
	// It cannot be revived; origin writes go on without copies.
	SnapshotInvalid
	// SnapshotOverflow: the COW is full but the snapshot is kept (only with
	// the overflow-aware "PO" store, which dmsnap does not load).
	SnapshotOverflow
	// SnapshotMergeFailed: a snapshot-merge hit an error and stopped.
	SnapshotMergeFailed
	// SnapshotUnknown: the store cannot report usage.
	SnapshotUnknown
)

func (s SnapshotState) String() string {
	switch s {
	case SnapshotActive:
		return "active"
	case SnapshotInvalid:
		return "invalid"
	case SnapshotOverflow:
		return "overflow"
	case SnapshotMergeFailed:
		return "merge failed"
	case SnapshotUnknown:
		return "unknown"
	}
	return fmt.Sprintf("SnapshotState(%d)", int(s))
}

// SnapshotStatus is the info status of a snapshot or snapshot-merge target:
//
//	<allocated>/<total> <metadata>     all in sectors
//	Invalid | Overflow | Merge failed | Unknown
//
// Allocated counts every COW chunk in use, header and metadata areas
// included; Total is the COW device's size, read live (it grows when the
// loop device does); Metadata is the header plus the metadata areas written
// so far. A fresh snapshot with chunk size c shows "2c/T 2c" (header and
// first area). During a merge Allocated shrinks as chunks are copied back.
type SnapshotStatus struct {
	State     SnapshotState
	Allocated uint64 // sectors
	Total     uint64 // sectors
	Metadata  uint64 // sectors
}

// Valid reports whether the snapshot is still usable.
func (s SnapshotStatus) Valid() bool { return s.State == SnapshotActive }

// DataSectors is the sectors holding pre-images (allocated minus metadata).
func (s SnapshotStatus) DataSectors() uint64 {
	if s.Allocated < s.Metadata {
		return 0
	}
	return s.Allocated - s.Metadata
}

// Free is the COW space not yet allocated, in sectors.
func (s SnapshotStatus) Free() uint64 {
	if s.Total < s.Allocated {
		return 0
	}
	return s.Total - s.Allocated
}

// MergeDone reports, for a snapshot-merge target, that every chunk has been
// merged back: only metadata is left allocated.
func (s SnapshotStatus) MergeDone() bool {
	return s.State == SnapshotActive && s.Allocated == s.Metadata
}

func (s SnapshotStatus) String() string {
	switch s.State {
	case SnapshotActive:
		return fmt.Sprintf("%d/%d %d", s.Allocated, s.Total, s.Metadata)
	case SnapshotInvalid:
		return "Invalid"
	case SnapshotOverflow:
		return "Overflow"
	case SnapshotMergeFailed:
		return "Merge failed"
	}
	return "Unknown"
}

// ParseSnapshotStatus parses the info status string of a snapshot or
// snapshot-merge target (dm-snap.c snapshot_status, STATUSTYPE_INFO).
func ParseSnapshotStatus(s string) (SnapshotStatus, error) {
	t := strings.TrimSpace(s)
	switch t {
	case "Invalid":
		return SnapshotStatus{State: SnapshotInvalid}, nil
	case "Overflow":
		return SnapshotStatus{State: SnapshotOverflow}, nil
	case "Merge failed":
		return SnapshotStatus{State: SnapshotMergeFailed}, nil
	case "Unknown":
		return SnapshotStatus{State: SnapshotUnknown}, nil
	}
	bad := func(why string) (SnapshotStatus, error) {
		return SnapshotStatus{}, fmt.Errorf("snapshot status %q: %s", s, why)
	}
	usage, meta, ok := strings.Cut(t, " ")
	if !ok {
		return bad("want <allocated>/<total> <metadata>")
	}
	alloc, total, ok := strings.Cut(usage, "/")
	if !ok {
		return bad("want <allocated>/<total> <metadata>")
	}
	var st SnapshotStatus
	var err error
	if st.Allocated, err = strconv.ParseUint(alloc, 10, 64); err != nil {
		return bad("bad allocated sectors")
	}
	if st.Total, err = strconv.ParseUint(total, 10, 64); err != nil {
		return bad("bad total sectors")
	}
	if st.Metadata, err = strconv.ParseUint(meta, 10, 64); err != nil {
		return bad("bad metadata sectors")
	}
	if st.Metadata > st.Allocated {
		return bad("more metadata than allocated sectors")
	}
	return st, nil
}
