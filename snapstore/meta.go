package snapstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dmsnap/dmsnap/internal/devnum"
)

// meta.json (FORMAT.md, "meta.json").
const (
	// MetaFormatVersion is the version of the "dmsnap" object this code
	// writes and the newest it reads. Version 2 added "sequence"; version 1
	// sessions are read as before, ordered by their time.
	MetaFormatVersion = 2
	// SnapshotTypeCOW is the only value of the seed's "snapshot_type".
	SnapshotTypeCOW = "COW"
	// CRCAlgorithm names the per-record checksum of blocks.crc.
	CRCAlgorithm = "crc32c"

	// StateComplete and StateInvalid are the values of dmsnap.state.
	StateComplete = "complete"
	StateInvalid  = "invalid"

	// LayoutCOW: blocks.dat is the renamed COW file, a record's offset is
	// new_chunk × chunk size, the header and metadata chunks are holes.
	LayoutCOW = "cow"
	// LayoutPacked: blocks.dat holds the records' bytes back to back in
	// blocks.map order (the copying fallback, where punching holes is not
	// supported).
	LayoutPacked = "packed"

	metaSumKey = `"meta_sha256"`
)

// zeroSum is what the meta_sha256 field holds while the file is hashed.
var zeroSum = strings.Repeat("0", sha256.Size*2)

// seedKeys are the top-level keys the seed wrote, all required; dmsnapKey is
// the only other top-level key allowed.
var seedKeys = []string{"device", "timestamp", "block_size", "fs_type", "total_blocks_saved", "snapshot_type"}

const dmsnapKey = "dmsnap"

// Meta is meta.json: the seed's six keys, then dmsnap's object. A session
// written by the seed has no Dmsnap object.
type Meta struct {
	Device           string      `json:"device"`             // device path as given when activated
	Timestamp        int64       `json:"timestamp"`          // session start (mount), Unix nanoseconds
	BlockSize        uint32      `json:"block_size"`         // bytes; dmsnap: the chunk size
	FsType           string      `json:"fs_type"`            // filesystem type at mount, "" when unknown
	TotalBlocksSaved int64       `json:"total_blocks_saved"` // number of blocks.map records
	SnapshotType     string      `json:"snapshot_type"`      // always "COW"
	Dmsnap           *DmsnapMeta `json:"dmsnap,omitempty"`
}

// DmsnapMeta is what dmsnap adds to the seed's meta.json.
type DmsnapMeta struct {
	FormatVersion int    `json:"format_version"`
	Name          string `json:"name"`
	// Sequence orders the sessions of one device (format 2 on; 0 in format
	// 1): restore chains and prune follow it, not the clock.
	Sequence      int      `json:"sequence,omitempty"`
	Device        Device   `json:"device"`
	ChunkSize     uint32   `json:"chunk_size"` // bytes
	Layout        string   `json:"layout"`     // LayoutCOW or LayoutPacked
	Times         Times    `json:"times"`
	State         string   `json:"state"` // StateComplete or StateInvalid
	InvalidReason string   `json:"invalid_reason,omitempty"`
	Notes         []string `json:"notes,omitempty"` // anything odd met during conversion
	// Label is a person's note on the session; Pinned keeps it (and every
	// later session) from being pruned (SetMark).
	Label     string    `json:"label,omitempty"`
	Pinned    bool      `json:"pinned,omitempty"`
	Checksums Checksums `json:"checksums"`
}

// Device identifies the origin device, so a session is never restored onto
// another one.
type Device struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"` // bytes
	DevNum DevNum `json:"major_minor"`
	FSUUID string `json:"fs_uuid,omitempty"`
}

// DevNum is a device number, written "major:minor" as device-mapper does
// (internal/devnum, dmsnap's one device-number type).
type DevNum = devnum.Dev

// Times are the moments of a session's life (RFC 3339, UTC, nanoseconds);
// a moment that did not happen is left out.
type Times struct {
	Armed     time.Time `json:"armed,omitzero"`
	Mounted   time.Time `json:"mounted,omitzero"`
	Unmounted time.Time `json:"unmounted,omitzero"`
	Closed    time.Time `json:"closed,omitzero"`
}

// Checksums protect the session's files (FORMAT.md, "Integrity").
type Checksums struct {
	RecordCRC string `json:"record_crc"`        // CRCAlgorithm
	BlocksMap string `json:"blocks_map_sha256"` // hex SHA-256 of blocks.map
	BlocksCRC string `json:"blocks_crc_sha256"` // hex SHA-256 of blocks.crc
	Meta      string `json:"meta_sha256"`       // hex SHA-256 of meta.json with this field all zeros
}

// EncodeMeta returns meta.json's bytes with the self-checksum filled in.
// For a seed-style Meta (no Dmsnap object) it is plain JSON.
func EncodeMeta(m Meta) ([]byte, error) {
	if m.Dmsnap != nil {
		d := *m.Dmsnap
		d.Checksums.Meta = zeroSum
		m.Dmsnap = &d
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	b = append(b, '\n')
	if m.Dmsnap == nil {
		return b, nil
	}
	start, err := metaSumSpan(b)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	hex.Encode(b[start:start+len(zeroSum)], sum[:])
	return b, nil
}

// metaSumSpan finds the 64 hex digits of the meta_sha256 value in raw
// meta.json bytes. The key must occur exactly once.
func metaSumSpan(b []byte) (int, error) {
	if n := bytes.Count(b, []byte(metaSumKey)); n != 1 {
		return 0, fmt.Errorf("%s occurs %d times, want once", metaSumKey, n)
	}
	i := bytes.Index(b, []byte(metaSumKey)) + len(metaSumKey)
	skip := func() {
		for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
			i++
		}
	}
	skip()
	if i >= len(b) || b[i] != ':' {
		return 0, fmt.Errorf("%s is not followed by ':'", metaSumKey)
	}
	i++
	skip()
	if i+len(zeroSum)+2 > len(b) || b[i] != '"' || b[i+1+len(zeroSum)] != '"' {
		return 0, fmt.Errorf("%s is not a %d-digit string", metaSumKey, len(zeroSum))
	}
	return i + 1, nil
}

// ParseMeta decodes and checks meta.json; name is used in error messages.
//
// Any file: all six seed keys present, no top-level key other than those
// and "dmsnap" (a flipped bit in a key name must not turn a dmsnap session
// into an unverified seed one), snapshot_type "COW".
//
// With a dmsnap object: a known format_version (a newer one is
// ErrUnsupportedVersion), the self-checksum matching (ErrChecksum), and
// fields that make sense (state, layout, chunk size, checksum digits).
func ParseMeta(b []byte, name string) (Meta, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return Meta{}, formatErr(name, jsonOffset(err), -1, ErrCorrupt, "not valid JSON: %v", err)
	}
	for k := range top {
		if k != dmsnapKey && !slices.Contains(seedKeys, k) {
			return Meta{}, formatErr(name, -1, -1, ErrCorrupt, "unknown top-level key %q", k)
		}
	}
	for _, k := range seedKeys {
		if _, ok := top[k]; !ok {
			return Meta{}, formatErr(name, -1, -1, ErrCorrupt, "key %q is missing", k)
		}
	}
	// Check the version before decoding the rest, so a newer dmsnap's
	// fields are reported as a version problem, not as garbage.
	if raw, ok := top[dmsnapKey]; ok {
		var v struct {
			FormatVersion *int `json:"format_version"`
		}
		if err := json.Unmarshal(raw, &v); err != nil {
			return Meta{}, formatErr(name, -1, -1, ErrCorrupt, "dmsnap: %v", err)
		}
		switch {
		case v.FormatVersion == nil || *v.FormatVersion < 1:
			return Meta{}, formatErr(name, -1, -1, ErrCorrupt, "dmsnap.format_version is missing or not positive")
		case *v.FormatVersion > MetaFormatVersion:
			return Meta{}, formatErr(name, -1, -1, ErrUnsupportedVersion,
				"written in session format %d; this dmsnap reads format %d and older: upgrade dmsnap to read it",
				*v.FormatVersion, MetaFormatVersion)
		}
	}
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return Meta{}, formatErr(name, jsonOffset(err), -1, ErrCorrupt, "%v", err)
	}
	if m.SnapshotType != SnapshotTypeCOW {
		return m, formatErr(name, -1, -1, ErrCorrupt, "snapshot_type is %q, want %q", m.SnapshotType, SnapshotTypeCOW)
	}
	if m.TotalBlocksSaved < 0 {
		return m, formatErr(name, -1, -1, ErrCorrupt, "total_blocks_saved is negative")
	}
	if m.Dmsnap == nil {
		return m, nil
	}
	if err := checkMetaSum(b, m.Dmsnap.Checksums.Meta, name); err != nil {
		return m, err
	}
	return m, m.Dmsnap.check(name)
}

// checkMetaSum recomputes meta.json's self-checksum.
func checkMetaSum(b []byte, want, name string) error {
	start, err := metaSumSpan(b)
	if err != nil {
		return formatErr(name, -1, -1, ErrCorrupt, "%v", err)
	}
	c := bytes.Clone(b)
	copy(c[start:], zeroSum)
	sum := sha256.Sum256(c)
	if got := hex.EncodeToString(sum[:]); got != want || string(b[start:start+len(zeroSum)]) != want {
		return formatErr(name, int64(start), -1, ErrChecksum, "SHA-256 of the file is %s, meta_sha256 says %s: meta.json was modified or damaged", got, want)
	}
	return nil
}

func (d *DmsnapMeta) check(name string) error {
	bad := func(format string, args ...any) error {
		return formatErr(name, -1, -1, ErrCorrupt, "dmsnap."+format, args...)
	}
	switch {
	case d.State != StateComplete && d.State != StateInvalid:
		return bad("state is %q, want %q or %q", d.State, StateComplete, StateInvalid)
	case d.Layout != LayoutCOW && d.Layout != LayoutPacked:
		return bad("layout is %q, want %q or %q", d.Layout, LayoutCOW, LayoutPacked)
	case d.ChunkSize%SectorSize != 0 || ValidChunkSectors(d.ChunkSize/SectorSize) != nil:
		return bad("chunk_size %d is not a power of two between %d and %d bytes", d.ChunkSize, MinChunkSectors*SectorSize, MaxChunkSectors*SectorSize)
	case d.Device.Size <= 0:
		return bad("device.size %d is not positive", d.Device.Size)
	case d.FormatVersion >= 2 && d.Sequence < 1:
		return bad("sequence is %d, want 1 or more (format %d)", d.Sequence, d.FormatVersion)
	case d.FormatVersion < 2 && d.Sequence != 0:
		return bad("sequence is set in format %d, which has none", d.FormatVersion)
	case d.Checksums.RecordCRC != CRCAlgorithm:
		return bad("checksums.record_crc is %q, want %q", d.Checksums.RecordCRC, CRCAlgorithm)
	case !isHexSum(d.Checksums.BlocksMap):
		return bad("checksums.blocks_map_sha256 is not 64 hex digits")
	case !isHexSum(d.Checksums.BlocksCRC):
		return bad("checksums.blocks_crc_sha256 is not 64 hex digits")
	}
	return nil
}

func isHexSum(s string) bool {
	if len(s) != sha256.Size*2 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// jsonOffset extracts the byte offset from a JSON syntax error, or -1.
func jsonOffset(err error) int64 {
	if se, ok := err.(*json.SyntaxError); ok {
		return se.Offset
	}
	if te, ok := err.(*json.UnmarshalTypeError); ok {
		return te.Offset
	}
	return -1
}
