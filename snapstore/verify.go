package snapstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// maxProblems bounds the problems one Verify collects.
const maxProblems = 100

// VerifyResult is what Verify found.
type VerifyResult struct {
	ID         string
	Records    int64 // records checked
	Bytes      int64 // pre-image bytes of the well-formed records (all checked when there is no problem)
	Unverified bool  // a seed session: structure checked, no checksums to check
	Invalid    bool  // dmsnap flagged the session invalid
	Problems   []*FormatError
}

// VerifyError lists the problems Verify found: the session is damaged.
type VerifyError struct {
	Dir      string
	Problems []*FormatError
	// Stopped, when not nil, is why Verify stopped before it checked
	// everything: a file the OS would not read (it wraps ErrCannotVerify).
	// The problems found before are damage all the same.
	Stopped error
}

func (e *VerifyError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "session %s is damaged (%d problem(s)):", e.Dir, len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.Error())
	}
	if e.Stopped != nil {
		fmt.Fprintf(&b, "\n  and verification stopped there: %v", e.Stopped)
	}
	return b.String()
}

// Unwrap lets errors.Is find the kinds (ErrChecksum, ErrCorrupt, ...).
// Stopped is left out: a damaged session is damaged, whatever else could
// not be read.
func (e *VerifyError) Unwrap() []error {
	out := make([]error, len(e.Problems))
	for i, p := range e.Problems {
		out[i] = p
	}
	return out
}

// Verify checks a whole finished session: meta.json (self-checksum,
// version, keys), the SHA-256 of blocks.map and blocks.crc, file sizes,
// records sorted and not overlapping, at most MaxRecordSize, inside
// blocks.dat and inside the device, one per chunk, and every record's
// CRC-32C against its bytes. Every problem found (up to 100) names its file
// and, in blocks.dat or blocks.map, the record and sector. A seed session
// gets the structural checks and is reported Unverified.
//
// The error is a *VerifyError when the session is damaged (a missing file
// included). When the OS would not read a file (permission, too many open
// files, an I/O error: see ClassifyReadError) and no damage was found
// before, the error wraps ErrCannotVerify: that is not damage. A directory
// without meta.json is ErrIncomplete.
func Verify(ctx context.Context, dir string) (VerifyResult, error) {
	return verify(ctx, dir, true, Quiet{})
}

// VerifyProgress is Verify telling p how far it has read the data: one
// "verify" phase of the bytes the map's records hold.
func VerifyProgress(ctx context.Context, dir string, p Progress) (VerifyResult, error) {
	return verify(ctx, dir, true, p)
}

// VerifyStructure makes every check of Verify except reading blocks.dat
// for the records' CRC-32C: for a caller that checks the data itself in a
// better order (restore reads blocks.dat sequentially).
func VerifyStructure(ctx context.Context, dir string) (VerifyResult, error) {
	return verify(ctx, dir, false, Quiet{})
}

func verify(ctx context.Context, dir string, data bool, p Progress) (VerifyResult, error) {
	v := &verifyRun{dir: dir, res: VerifyResult{ID: filepath.Base(dir)}}
	s, err := Open(dir)
	if errors.Is(err, ErrIncomplete) {
		return v.res, err
	}
	if err != nil {
		v.add(err)
		return v.outcome()
	}
	defer s.Close()
	v.s = s
	v.res.Unverified = !s.Verified()
	v.res.Invalid = s.Invalid()
	if d := s.Meta.Dmsnap; d != nil {
		v.chunk, v.devSize = int64(d.ChunkSize), d.Device.Size
		if !v.checkSums(d) {
			return v.outcome()
		}
	}
	dataEnd, walked, err := v.walkMap(ctx)
	if err != nil {
		return v.res, err
	}
	if !walked || v.stopped != nil {
		return v.outcome()
	}
	if s.Meta.Dmsnap != nil && len(v.res.Problems) == 0 && s.datSize != dataEnd {
		v.add(formatErr(filepath.Join(dir, DataFile), -1, -1, ErrCorrupt,
			"is %d bytes, its last record ends at %d", s.datSize, dataEnd))
	}
	if data {
		if err := v.checkData(ctx, p); err != nil {
			return v.res, err
		}
	}
	return v.outcome()
}

// verifyRun is one verification: what it found so far.
type verifyRun struct {
	dir            string
	s              *Session
	res            VerifyResult
	chunk, devSize int64 // dmsnap sessions: each record must be one chunk inside the device
	crcSuspect     bool  // blocks.crc failed its SHA-256: a CRC mismatch may be the sidecar's fault
	// stopped is the first error of the OS that is not damage: it ends
	// the verification, whose outcome is then unknown.
	stopped error
}

// add records a problem, or the OS error that stops the verification;
// it reports whether to go on looking (at most maxProblems problems).
func (v *verifyRun) add(err error) bool {
	if v.stopped != nil {
		return false
	}
	err = ClassifyReadError(err)
	if errors.Is(err, ErrCannotVerify) {
		v.stopped = err
		return false
	}
	var fe *FormatError
	if !errors.As(err, &fe) {
		fe = &FormatError{File: v.dir, Offset: -1, Record: -1, Kind: ErrCorrupt, Msg: err.Error()}
	}
	v.res.Problems = append(v.res.Problems, fe)
	return len(v.res.Problems) < maxProblems
}

// outcome is the verification's result: damage (*VerifyError), an OS
// error that stopped it (ErrCannotVerify), or nil.
func (v *verifyRun) outcome() (VerifyResult, error) {
	switch {
	case len(v.res.Problems) > 0:
		return v.res, &VerifyError{Dir: v.dir, Problems: v.res.Problems, Stopped: v.stopped}
	case v.stopped != nil:
		return v.res, v.stopped
	}
	return v.res, nil
}

// checkSums checks the whole-file SHA-256 of blocks.map and blocks.crc
// and their sizes: they catch any flipped bit in the map and the sidecar,
// even one no structural check would see. It reports false when an OS
// error stopped the verification.
func (v *verifyRun) checkSums(d *DmsnapMeta) bool {
	for _, f := range []struct{ name, want string }{{MapFile, d.Checksums.BlocksMap}, {CRCFile, d.Checksums.BlocksCRC}} {
		got, size, err := fileSHA256(filepath.Join(v.dir, f.name))
		if err != nil {
			v.add(err)
			if v.stopped != nil {
				return false
			}
			continue // a missing file: the walk stops at it
		}
		if got != f.want {
			v.crcSuspect = v.crcSuspect || f.name == CRCFile
			v.add(formatErr(filepath.Join(v.dir, f.name), -1, -1, ErrChecksum,
				"SHA-256 is %s, meta.json says %s: the file was modified or damaged", got, f.want))
		}
		unit := map[string]int64{MapFile: RecordSize, CRCFile: CRCSize}[f.name]
		if want := v.s.Meta.TotalBlocksSaved * unit; size != want {
			v.add(formatErr(filepath.Join(v.dir, f.name), -1, -1, ErrCorrupt,
				"is %d bytes; %d records (total_blocks_saved) need %d", size, v.s.Meta.TotalBlocksSaved, want))
		}
	}
	return true
}

// badRecord names what is wrong with a dmsnap record's shape ("" when
// nothing is, or for a seed session).
func (v *verifyRun) badRecord(e Entry) string {
	if v.s.Meta.Dmsnap == nil {
		return ""
	}
	return checkChunkRecord(e.Record, v.chunk, v.devSize)
}

// annotate adds to a CRC mismatch that blocks.crc itself is suspect.
func (v *verifyRun) annotate(err error) error {
	var fe *FormatError
	if v.crcSuspect && errors.As(err, &fe) && errors.Is(err, ErrChecksum) {
		fe.Msg += "; blocks.crc is itself damaged, so the CRC may be what is wrong"
	}
	return err
}

// walkMap checks the structure: every record of blocks.map. It returns
// where the last record's data ends, and walked false when the map could
// not be read at all (the verification ends there); err is the context's.
func (v *verifyRun) walkMap(ctx context.Context) (dataEnd int64, walked bool, err error) {
	it, err := v.s.Records()
	if err != nil {
		if len(v.res.Problems) == 0 || errors.Is(ClassifyReadError(err), ErrCannotVerify) {
			v.add(err) // else: a missing file the checksums reported
		}
		return 0, false, nil
	}
	defer it.Close()
	mapPath := filepath.Join(v.dir, MapFile)
	for {
		if err := ctx.Err(); err != nil {
			return dataEnd, true, err
		}
		e, err := it.Next()
		if err == io.EOF {
			return dataEnd, true, nil
		}
		if err != nil {
			// blocks.map damage the checksums already reported stops
			// the walk; a seed map is sorted in memory beforehand.
			if !errors.Is(err, ErrChecksum) || len(v.res.Problems) == 0 {
				v.add(err)
			}
			return dataEnd, true, nil
		}
		v.res.Records++
		dataEnd = max(dataEnd, int64(e.Offset)+int64(e.Size))
		if msg := v.badRecord(e); msg != "" {
			if !v.add(formatErr(mapPath, e.Index*RecordSize, e.Index, ErrCorrupt, "sector %d: %s", e.Sector, msg)) {
				return dataEnd, true, nil
			}
			continue
		}
		v.res.Bytes += int64(e.Size)
	}
}

// checkData checks every record's CRC-32C against its bytes: a session
// dmsnap wrote whose map passed in storage order (blocks.dat read in file
// order); a seed session, or a damaged map, record by record where the
// map puts it. err is the context's.
func (v *verifyRun) checkData(ctx context.Context, p Progress) error {
	p.Begin("verify", uint64(v.res.Bytes))
	defer p.End()
	bad := func(err error) bool { return v.add(v.annotate(err)) }
	done := false
	if v.s.Meta.Dmsnap != nil && len(v.res.Problems) == 0 {
		var err error
		if done, err = v.s.CheckInStorageOrder(ctx, p.Add, func(_ int64, _ Record, err error) bool { return bad(err) }); err != nil {
			if ctx.Err() != nil {
				return err
			}
			v.add(err)
			return nil
		}
	}
	if !done && v.stopped == nil {
		return v.s.readEach(ctx, v.badRecord, p.Add, bad)
	}
	return nil
}

// readEach reads the data of every record of blocks.map that skip does
// not name a problem of, where the map puts it, calls done with the bytes
// of each record read and bad with each failure until bad returns false.
// A map that cannot be read ends it quietly: the structural walk has
// reported that.
func (s *Session) readEach(ctx context.Context, skip func(Entry) string, done func(uint64), bad func(error) bool) error {
	it, err := s.Records()
	if err != nil {
		return nil
	}
	defer it.Close()
	var buf []byte
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		e, err := it.Next()
		if err != nil {
			return nil
		}
		if skip(e) != "" {
			continue
		}
		if buf, err = s.ReadData(e, buf); err != nil && !bad(err) {
			return nil
		}
		done(uint64(e.Size))
	}
}

// checkChunkRecord checks that a dmsnap record covers exactly one chunk
// (clamped at the end of the device).
func checkChunkRecord(r Record, chunk, devSize int64) string {
	switch {
	case r.Start()%chunk != 0:
		return fmt.Sprintf("does not start on a chunk boundary (chunk size %d)", chunk)
	case r.End() > devSize:
		return fmt.Sprintf("ends at byte %d, past the end of the device (%d bytes)", r.End(), devSize)
	case int64(r.Size) != min(chunk, devSize-r.Start()):
		return fmt.Sprintf("is %d bytes, a chunk here is %d", r.Size, min(chunk, devSize-r.Start()))
	}
	return ""
}

func fileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", n, fmt.Errorf("%s: %w", path, err)
	}
	return hexSum(h), n, nil
}

// The outcomes of VerifySession, as `sessions verify --json` gives them.
const (
	VerifyOK          = "ok"
	VerifyDamaged     = "damaged"
	VerifyNotFinished = "not_finished" // live, or not converted yet
	VerifyFailed      = "failed"       // verification itself failed
	VerifyUnreadable  = "unreadable"   // the OS would not read a file: nothing is known
)

// Verified is one session's verification, as `sessions verify` reports it.
type Verified struct {
	ID         string   `json:"id"`
	Dir        string   `json:"dir"`
	Outcome    string   `json:"outcome"`
	Records    int64    `json:"records"`
	Bytes      int64    `json:"bytes"`
	Unverified bool     `json:"unverified,omitempty"` // a seed session: no checksums
	Invalid    bool     `json:"invalid,omitempty"`    // flagged invalid by the kernel
	Problems   []string `json:"problems,omitempty"`
	Error      string   `json:"error,omitempty"`
}

// VerifySession verifies the session in dir (VerifyProgress) and sorts
// the result into an outcome.
func VerifySession(ctx context.Context, dir string, p Progress) Verified {
	v := Verified{ID: filepath.Base(dir), Dir: dir}
	if _, err := os.Stat(filepath.Join(dir, MetaFile)); errors.Is(err, os.ErrNotExist) {
		v.Outcome = VerifyNotFinished
		return v
	}
	res, err := VerifyProgress(ctx, dir, p)
	var ve *VerifyError
	switch {
	case errors.As(err, &ve):
		v.Outcome = VerifyDamaged
		for _, pr := range res.Problems {
			v.Problems = append(v.Problems, fmt.Sprint(pr))
		}
		if ve.Stopped != nil {
			v.Error = "verification stopped there: " + ve.Stopped.Error()
		}
		return v
	case errors.Is(err, ErrCannotVerify):
		v.Outcome, v.Error = VerifyUnreadable, err.Error() // "cannot verify: <what the OS said>"
		return v
	case err != nil:
		v.Outcome, v.Error = VerifyFailed, err.Error()
		return v
	}
	v.Outcome, v.Records, v.Bytes, v.Unverified, v.Invalid = VerifyOK, res.Records, res.Bytes, res.Unverified, res.Invalid
	return v
}
