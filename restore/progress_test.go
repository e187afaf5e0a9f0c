package restore

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"
)

func TestFormatETA(t *testing.T) {
	cases := map[time.Duration]string{
		0:                       "0:00",
		1400 * time.Millisecond: "0:01",
		59 * time.Second:        "0:59",
		61 * time.Second:        "1:01",
		time.Hour + 2*time.Minute + 3*time.Second: "1:02:03",
		-time.Second: "0:00",
	}
	for d, want := range cases {
		if got := formatETA(d); got != want {
			t.Errorf("formatETA(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestFormatBar(t *testing.T) {
	cases := []struct {
		phase       string
		done, total uint64
		elapsed     time.Duration
		want        string
	}{
		{"write", 0, 64 << 20, 0,
			"write   [--------------------]   0%  0 B / 64.0 MiB  --  ETA --"},
		{"write", 32 << 20, 64 << 20, 2 * time.Second,
			"write   [##########----------]  50%  32.0 MiB / 64.0 MiB  16.0 MiB/s  ETA 0:02"},
		{"verify", 48 << 20, 64 << 20, 3 * time.Second,
			"verify  [###############-----]  75%  48.0 MiB / 64.0 MiB  16.0 MiB/s  ETA 0:01"},
		{"write", 64 << 20, 64 << 20, 4 * time.Second,
			"write   [####################] 100%  64.0 MiB / 64.0 MiB  16.0 MiB/s  ETA 0:00"},
		{"copy", 0, 0, time.Second,
			"copy    [####################] 100%  0 B / 0 B  --  ETA 0:00"},
		{"write", 10, 5, time.Second, // more done than announced: never past 100%
			"write   [####################] 100%  10 B / 10 B  10 B/s  ETA 0:00"},
		{"write", 1 << 20, 1 << 30, time.Second,
			"write   [--------------------]   0%  1.0 MiB / 1.0 GiB  1.0 MiB/s  ETA 17:03"},
	}
	for _, tc := range cases {
		if got := FormatBar(tc.phase, tc.done, tc.total, tc.elapsed, 20); got != tc.want {
			t.Errorf("FormatBar(%q, %d, %d, %v)\n got %q\nwant %q", tc.phase, tc.done, tc.total, tc.elapsed, got, tc.want)
		}
	}
}

func TestTerminalThrottlesAndEndsLine(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(1700000000, 0)
	term := &Terminal{W: &buf, Width: 10, Now: func() time.Time { return now }}
	term.Begin("write", 1000)
	// 100 updates over one second, 10 ms apart: at most one redraw per
	// 200 ms, so 5 more draws after the first.
	for range 100 {
		now = now.Add(10 * time.Millisecond)
		term.Add(10)
	}
	term.End()
	out := buf.String()
	draws := strings.Count(out, "\r")
	if draws != 1+5+1 {
		t.Errorf("%d draws, want 7 (begin, 5 throttled, end):\n%q", draws, out)
	}
	if !strings.HasSuffix(out, "\n") || strings.Count(out, "\n") != 1 {
		t.Errorf("output does not end with exactly one newline: %q", out)
	}
	last := out[strings.LastIndex(out, "\r")+1:]
	if !strings.HasPrefix(last, "write   [##########] 100%  1000 B / 1000 B  1000 B/s  ETA 0:00") {
		t.Errorf("final line %q", last)
	}
}

func TestTerminalWipesLongerLine(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(0, 0)
	term := &Terminal{W: &buf, Width: 4, Now: func() time.Time { return now }}
	term.Begin("write", 1<<30) // long line: "1.0 GiB"
	now = now.Add(time.Second)
	term.Begin("verify", 1) // shorter line must blank the rest
	lines := strings.Split(buf.String(), "\r")
	if len(lines) != 3 || len(lines[2]) < len(lines[1]) {
		t.Errorf("second line %q does not cover the first %q", lines[2], lines[1])
	}
}

func TestForFile(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "notatty")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, ok := ForFile(f).(Quiet); !ok {
		t.Errorf("ForFile(regular file) = %T, want Quiet", ForFile(f))
	}
	// The master side of a pseudo-terminal is a terminal.
	pt, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("opening /dev/ptmx: %v", err)
	}
	defer pt.Close()
	if _, ok := ForFile(pt).(*Terminal); !ok {
		t.Errorf("ForFile(/dev/ptmx) = %T, want *Terminal", ForFile(pt))
	}
}
