package restore

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
)

func summaryFixture() []*memSession {
	rng := rand.New(rand.NewPCG(31, 32))
	return []*memSession{
		// [4096, 8192): wins whole.
		newMemSession(rng, "sdb1_1700000000", []Record{{Sector: 8, Size: 4096}}),
		// [0, 16384) split around it into two extents; [65536, 69632)
		// separate run; a zero-size record counts as a record but is unused.
		newMemSession(rng, "sdb1_1700000100", []Record{{Sector: 0, Size: 16384}, {Sector: 128, Size: 4096}, {Sector: 200, Size: 0}}),
		// Entirely shadowed.
		newMemSession(rng, "sdb1_1700000200", []Record{{Sector: 8, Size: 512}}),
	}
}

func TestSummarize(t *testing.T) {
	ms := summaryFixture()
	sum, err := mustPlan(t, ms).Summarize(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := Summary{
		Sessions: []SessionSummary{
			{ID: "sdb1_1700000000", Records: 1, RecordBytes: 4096, RecordsUsed: 1, Extents: 1, Bytes: 4096, UsedRecordBytes: 4096},
			{ID: "sdb1_1700000100", Records: 3, RecordBytes: 20480, RecordsUsed: 2, Extents: 3, Bytes: 16384, UsedRecordBytes: 20480},
			{ID: "sdb1_1700000200", Records: 1, RecordBytes: 512},
		},
		Extents: 4, Runs: 2, Bytes: 20480, Start: 0, End: 69632,
	}
	gotJ, _ := json.Marshal(sum)
	wantJ, _ := json.Marshal(want)
	if !bytes.Equal(gotJ, wantJ) {
		t.Errorf("summary\n got %s\nwant %s", gotJ, wantJ)
	}
	if sum.UsedRecordBytes() != 24576 {
		t.Errorf("UsedRecordBytes %d", sum.UsedRecordBytes())
	}
	for _, m := range ms {
		if m.reads != 0 {
			t.Errorf("Summarize read pre-images of %s", m.id)
		}
	}
	// The JSON keys are part of the --dry-run --json output.
	for _, key := range []string{`"sessions":`, `"extents":4`, `"runs":2`, `"bytes":20480`, `"start":0`, `"end":69632`,
		`"id":"sdb1_1700000100"`, `"records":3`, `"record_bytes":20480`, `"records_used":2`, `"used_record_bytes":20480`} {
		if !strings.Contains(string(gotJ), key) {
			t.Errorf("JSON %s lacks %s", gotJ, key)
		}
	}
}

func TestSummaryText(t *testing.T) {
	sum, err := mustPlan(t, summaryFixture()).Summarize(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := sum.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	want := `restore plan: 3 sessions, 20.0 KiB (20480 bytes) in 4 extents, 2 contiguous runs
device range: bytes 0 to 69631 (sectors 0 to 135), inclusive
session          records  used  shadowed  extents  bytes
sdb1_1700000000  1        1     0         1        4.0 KiB
sdb1_1700000100  3        2     1         3        16.0 KiB
sdb1_1700000200  1        0     1         0        0 B
`
	if b.String() != want {
		t.Errorf("text\n%s\nwant\n%s", b.String(), want)
	}

	empty, err := mustPlan(t, []*memSession{{id: "a"}}).Summarize(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b.Reset()
	if err := empty.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "nothing to write") || !strings.HasPrefix(b.String(), "restore plan: 1 session, 0 B (0 bytes) in 0 extents, 0 contiguous runs\n") {
		t.Errorf("empty plan text %q", b.String())
	}
}

func TestSummarizeCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := mustPlan(t, summaryFixture()).Summarize(ctx); err != context.Canceled {
		t.Fatalf("error %v", err)
	}
}
