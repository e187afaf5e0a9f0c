package restore

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/dmsnap/dmsnap/internal/units"
)

// Summary describes a plan without touching any pre-image: what --dry-run
// prints. It marshals to JSON as is.
type Summary struct {
	Sessions []SessionSummary `json:"sessions"` // oldest (the target) first
	Extents  int64            `json:"extents"`  // plan extents: runs of bytes from one record
	Runs     int64            `json:"runs"`     // contiguous device ranges written
	Bytes    uint64           `json:"bytes"`    // device bytes written
	Start    uint64           `json:"start"`    // first device byte written (0 when Bytes is 0)
	End      uint64           `json:"end"`      // one past the last device byte written
}

// SessionSummary is one session's share of a plan.
type SessionSummary struct {
	ID          string `json:"id"`
	Records     int64  `json:"records"`      // records in the session's map
	RecordBytes uint64 `json:"record_bytes"` // their total size
	RecordsUsed int64  `json:"records_used"` // records that give at least one byte
	Extents     int64  `json:"extents"`      // plan extents taken from the session
	Bytes       uint64 `json:"bytes"`        // device bytes taken from the session
	// UsedRecordBytes is the size of the records used, in full: what the
	// verify pass reads.
	UsedRecordBytes uint64 `json:"used_record_bytes"`
}

// Summarize streams the plan once and counts it. It reads the maps only.
func (p *Plan) Summarize(ctx context.Context) (Summary, error) {
	it, err := p.Extents()
	if err != nil {
		return Summary{}, err
	}
	defer it.Close()
	s := Summary{Sessions: make([]SessionSummary, len(p.sessions))}
	last := make([]int64, len(p.sessions))
	for i := range last {
		last[i] = -1
		s.Sessions[i].ID = it.streams[i].id
	}
	for n := 0; ; n++ {
		if n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return Summary{}, err
			}
		}
		e, err := it.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return Summary{}, err
		}
		ss := &s.Sessions[e.Session]
		if e.Index != last[e.Session] {
			last[e.Session] = e.Index
			ss.RecordsUsed++
			ss.UsedRecordBytes += uint64(e.Record.Size)
		}
		ss.Extents++
		ss.Bytes += e.Length
		if s.Extents == 0 {
			s.Start = e.Start
		}
		if s.Extents == 0 || e.Start != s.End {
			s.Runs++
		}
		s.Extents++
		s.Bytes += e.Length
		s.End = e.End()
	}
	for i := range s.Sessions {
		s.Sessions[i].Records = it.streams[i].n
		s.Sessions[i].RecordBytes = it.streams[i].bytes
	}
	return s, nil
}

// readWhole reports whether the plan uses enough of the session's records
// (a quarter of their bytes) that reading all of them in storage order beats
// reading the used ones at random offsets.
func (ss SessionSummary) readWhole() bool {
	return ss.UsedRecordBytes > 0 && ss.UsedRecordBytes >= ss.RecordBytes/4
}

// UsedRecordBytes is the total size of the records the plan uses: the bytes
// the verify pass reads.
func (s Summary) UsedRecordBytes() uint64 {
	var n uint64
	for _, ss := range s.Sessions {
		n += ss.UsedRecordBytes
	}
	return n
}

// WriteText writes the summary as the human-readable --dry-run output.
func (s Summary) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	fmt.Fprintf(ew, "restore plan: %d session%s, %s (%d bytes) in %d extent%s, %d contiguous run%s\n",
		len(s.Sessions), plural(len(s.Sessions)), units.FormatBytes(s.Bytes), s.Bytes,
		s.Extents, plural(int(s.Extents)), s.Runs, plural(int(s.Runs)))
	if s.Bytes > 0 {
		fmt.Fprintf(ew, "device range: bytes %d to %d (sectors %d to %d), inclusive\n",
			s.Start, s.End-1, s.Start/SectorSize, (s.End-1)/SectorSize)
	} else {
		fmt.Fprintf(ew, "nothing to write: the sessions saved no pre-images\n")
	}
	tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "session\trecords\tused\tshadowed\textents\tbytes\n")
	for _, ss := range s.Sessions {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\n",
			ss.ID, ss.Records, ss.RecordsUsed, ss.Records-ss.RecordsUsed, ss.Extents, units.FormatBytes(ss.Bytes))
	}
	tw.Flush()
	return ew.err
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// errWriter keeps the first write error so formatting code can ignore them.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}
