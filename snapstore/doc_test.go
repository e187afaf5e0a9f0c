//go:build !vm

package snapstore

import (
	_ "embed"
	"encoding/hex"
	"regexp"
	"strings"
	"testing"
)

// The examples in FORMAT.md are checked against the code, so the
// specification cannot drift from what is written. (Embedded, so the test
// binary carries it into the VM guest too.)

//go:embed FORMAT.md
var formatDoc []byte

func TestFormatDocMapExample(t *testing.T) {
	doc := formatDoc
	row := regexp.MustCompile("(?m)^\\| (\\d) \\| +\\d+ +\\| +\\d+ +\\| +\\d+ +\\| `([0-9a-f ]+)` +\\|$")
	rows := row.FindAllStringSubmatch(string(doc), -1)
	want := EncodeMap(goldenMap)
	if len(rows) != len(goldenMap) {
		t.Fatalf("FORMAT.md has %d example records, want %d", len(rows), len(goldenMap))
	}
	for i, r := range rows {
		b, err := hex.DecodeString(strings.ReplaceAll(r[2], " ", ""))
		if err != nil {
			t.Fatal(err)
		}
		if got := want[i*RecordSize : (i+1)*RecordSize]; string(b) != string(got) {
			t.Errorf("FORMAT.md record %s: % x, code writes % x", r[1], b, got)
		}
	}
}

func TestFormatDocMetaExample(t *testing.T) {
	doc := formatDoc
	i := strings.Index(string(doc), "Example:\n\n```json\n")
	if i < 0 {
		t.Fatal("no meta.json example in FORMAT.md")
	}
	rest := string(doc[i+len("Example:\n\n```json\n"):])
	example := rest[:strings.Index(rest, "```\n")]
	m, err := ParseMeta([]byte(example), "FORMAT.md example")
	if err != nil {
		t.Fatalf("the meta.json example does not verify: %v", err)
	}
	if m.Dmsnap == nil || m.TotalBlocksSaved != 11 {
		t.Fatalf("example parsed as %+v", m)
	}
}
