package dm

import (
	"fmt"
	"strconv"
	"strings"
)

// SectorSize is the unit of every table position and length: 512 bytes,
// whatever the devices' logical block size.
const SectorSize = 512

// Target is one line of a device-mapper table. Implementations are plain
// values whose Spec method is pure: it validates the fields and renders the
// line, touching no kernel.
type Target interface {
	Spec() (TargetSpec, error)
}

// TargetSpec is a rendered table line as the kernel sees it in a
// DM_TABLE_LOAD or reports it in a DM_TABLE_STATUS reply: the target covers
// sectors [Start, Start+Length) of the mapped device; Params is the target's
// parameter string (for a status reply, its status or table string).
type TargetSpec struct {
	Start  uint64 // first sector of the mapped device covered by this target
	Length uint64 // sectors
	Type   string // target type, at most 15 bytes: "linear", "snapshot", ...
	Params string
}

// String renders the line as dmsetup prints it: "0 2048 linear 7:0 0".
func (s TargetSpec) String() string {
	line := fmt.Sprintf("%d %d %s", s.Start, s.Length, s.Type)
	if s.Params != "" {
		line += " " + s.Params
	}
	return line
}

// maxTypeLen is the room for a target type in struct dm_target_spec
// (DM_MAX_TYPE_NAME, with its terminating NUL).
const maxTypeLen = 16

func (s TargetSpec) validate() error {
	switch {
	case s.Type == "":
		return fmt.Errorf("target at sector %d: empty target type", s.Start)
	case len(s.Type) >= maxTypeLen:
		return fmt.Errorf("target type %q: longer than %d bytes", s.Type, maxTypeLen-1)
	case s.Length == 0:
		return fmt.Errorf("%s target at sector %d: zero length", s.Type, s.Start)
	case strings.ContainsRune(s.Params, 0):
		return fmt.Errorf("%s target: parameters contain a NUL byte", s.Type)
	}
	return nil
}

// Specs renders a table and checks that its targets are contiguous from
// sector 0, as the kernel requires.
func Specs(targets ...Target) ([]TargetSpec, error) {
	if len(targets) == 0 {
		return nil, fmt.Errorf("empty table")
	}
	specs := make([]TargetSpec, 0, len(targets))
	var next uint64
	for i, t := range targets {
		s, err := t.Spec()
		if err != nil {
			return nil, err
		}
		if err := s.validate(); err != nil {
			return nil, err
		}
		if s.Start != next {
			return nil, fmt.Errorf("target %d (%s) starts at sector %d, want %d: the table must be contiguous", i, s.Type, s.Start, next)
		}
		next = s.Start + s.Length
		specs = append(specs, s)
	}
	return specs, nil
}

// ParseTarget turns a table line of one of dmsnap's target types, as read
// back with DM_STATUS_TABLE_FLAG, into its Target value. It is the inverse of
// Spec for Linear, SnapshotOrigin, Snapshot and SnapshotMerge.
func ParseTarget(s TargetSpec) (Target, error) {
	f := strings.Fields(s.Params)
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s table %q: %s", s.Type, s.Params, fmt.Sprintf(format, args...))
	}
	switch s.Type {
	case "linear":
		if len(f) != 2 {
			return nil, bad("want <device> <offset>")
		}
		d, err := ParseDev(f[0])
		if err != nil {
			return nil, bad("%v", err)
		}
		off, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return nil, bad("bad offset: %v", err)
		}
		return Linear{Start: s.Start, Length: s.Length, Device: d, Offset: off}, nil
	case "snapshot-origin":
		if len(f) != 1 {
			return nil, bad("want <origin>")
		}
		d, err := ParseDev(f[0])
		if err != nil {
			return nil, bad("%v", err)
		}
		return SnapshotOrigin{Start: s.Start, Length: s.Length, Origin: d}, nil
	case "snapshot", "snapshot-merge":
		// The kernel reports "P" or "PO" (overflow-aware persistent store).
		if len(f) != 4 || (f[2] != "P" && f[2] != "PO") {
			return nil, bad("want <origin> <cow> P <chunk sectors>")
		}
		o, err := ParseDev(f[0])
		if err != nil {
			return nil, bad("%v", err)
		}
		c, err := ParseDev(f[1])
		if err != nil {
			return nil, bad("%v", err)
		}
		chunk, err := strconv.ParseUint(f[3], 10, 32)
		if err != nil {
			return nil, bad("bad chunk size: %v", err)
		}
		snap := Snapshot{Start: s.Start, Length: s.Length, Origin: o, COW: c, ChunkSectors: uint32(chunk)}
		if s.Type == "snapshot-merge" {
			return SnapshotMerge(snap), nil
		}
		return snap, nil
	}
	return nil, fmt.Errorf("target type %q is not one dmsnap uses", s.Type)
}
