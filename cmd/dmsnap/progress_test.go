//go:build !vm

package main

import (
	"bytes"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// screen is a small terminal: what a progress writer leaves on a screen
// of width columns, with the escapes mpb's console writer sends (cursor
// up, to column 1, erase line and below). A line longer than the width
// wraps, as a terminal wraps it.
type screen struct {
	width    int
	lines    [][]rune
	row, col int
	wrapped  int // lines that wrapped
}

func (s *screen) put(r rune) {
	for len(s.lines) <= s.row {
		s.lines = append(s.lines, nil)
	}
	if s.col >= s.width {
		s.wrapped++
		s.row, s.col = s.row+1, 0
		s.put(r)
		return
	}
	line := s.lines[s.row]
	for len(line) <= s.col {
		line = append(line, ' ')
	}
	line[s.col] = r
	s.lines[s.row] = line
	s.col++
}

func (s *screen) write(b []byte) {
	for len(b) > 0 {
		switch b[0] {
		case '\r':
			s.col, b = 0, b[1:]
			continue
		case '\n':
			s.row, s.col, b = s.row+1, 0, b[1:]
			continue
		case 0x1b:
			if len(b) > 1 && b[1] == '[' {
				i := 2
				for i < len(b) && (b[i] >= '0' && b[i] <= '9' || b[i] == ';' || b[i] == '?') {
					i++
				}
				if i < len(b) {
					n, _ := strconv.Atoi(string(b[2:i]))
					s.escape(b[i], max(n, 1), string(b[2:i]))
					b = b[i+1:]
					continue
				}
			}
		}
		r, size := utf8.DecodeRune(b)
		s.put(r)
		b = b[size:]
	}
}

func (s *screen) escape(cmd byte, n int, arg string) {
	switch cmd {
	case 'A': // cursor up
		s.row = max(s.row-n, 0)
	case 'G': // to column n
		s.col = n - 1
	case 'K': // erase in line
		if s.row < len(s.lines) && arg != "1" {
			s.lines[s.row] = s.lines[s.row][:min(s.col, len(s.lines[s.row]))]
		}
	case 'J': // erase below
		if s.row < len(s.lines) {
			s.lines[s.row] = s.lines[s.row][:min(s.col, len(s.lines[s.row]))]
			s.lines = s.lines[:s.row+1]
		}
	}
}

func (s *screen) text() []string {
	var out []string
	for _, l := range s.lines {
		if t := strings.TrimRight(string(l), " "); t != "" {
			out = append(out, t)
		}
	}
	return out
}

// On a terminal 80 or 60 columns wide, each phase of a restore leaves one
// line, none wraps, and each says its phase, that it is done, and the
// sizes; off a terminal, one log line per phase with its rate.
func TestProgressFitsTheTerminal(t *testing.T) {
	for _, cols := range []uint16{80, 60} {
		master, slave := openPTY(t)
		if err := unix.IoctlSetWinsize(int(slave.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 24, Col: cols}); err != nil {
			t.Fatal(err)
		}
		var raw bytes.Buffer
		done := make(chan struct{})
		go func() { io.Copy(&raw, master); close(done) }()
		p := newProgress(slave, true) // a terminal shows the bar even with --json
		if _, ok := p.(*barProgress); !ok {
			t.Fatalf("a terminal gets %T, want bars", p)
		}
		for _, phase := range []string{"verify", "write"} {
			p.Begin(phase, 64<<20)
			for i := 0; i < 16; i++ {
				p.Add(4 << 20)
				time.Sleep(25 * time.Millisecond)
			}
			p.End()
		}
		slave.Close()
		<-done
		sc := &screen{width: int(cols)}
		sc.write(raw.Bytes())
		lines := sc.text()
		if sc.wrapped > 0 || len(lines) != 2 {
			t.Errorf("%d columns: %d lines wrapped; the screen shows %d lines, want 2:\n%s", cols, sc.wrapped, len(lines), strings.Join(lines, "\n"))
			continue
		}
		for i, phase := range []string{"verify", "write"} {
			if l := lines[i]; !strings.HasPrefix(l, phase) || !strings.Contains(l, "100 %") || !strings.Contains(l, "64.0 MiB / 64.0 MiB") || !strings.HasSuffix(l, "done") {
				t.Errorf("%d columns, phase %s: %q", cols, phase, l)
			}
		}
		t.Logf("%d columns:\n%s", cols, strings.Join(lines, "\n"))
	}

	var log bytes.Buffer
	p := newProgress(&log, false)
	p.Begin("write", 8<<20)
	p.Add(8 << 20)
	p.End()
	p.End() // once
	if got := log.String(); !strings.HasPrefix(got, "dmsnap: write: 8.0 MiB of 8.0 MiB in ") || !strings.HasSuffix(got, "/s)\n") || strings.Count(got, "\n") != 1 {
		t.Errorf("off a terminal: %q", got)
	}
	log.Reset()
	p = newProgress(&log, true)
	p.Begin("write", 8<<20)
	p.Add(8 << 20)
	p.End()
	if log.Len() != 0 {
		t.Errorf("off a terminal with --json: %q, want nothing", log.String())
	}
}

func TestWrapText(t *testing.T) {
	in := "Restored tp to its state before session tp_1796526972: 48.6 MiB written in 59 write(s) through /dev/mapper/dmsnap-tp, from 2 session(s)."
	got := wrapText(in, 80)
	for _, l := range strings.Split(got, "\n") {
		if len(l) > 80 {
			t.Errorf("line of %d: %q", len(l), l)
		}
	}
	if strings.Join(strings.Fields(got), " ") != in || !strings.Contains(got, "\n") {
		t.Fatalf("wrapped: %q", got)
	}
	long := strings.Repeat("x", 90)
	if got := wrapText("a "+long+" b", 80); got != "a\n"+long+"\nb" {
		t.Fatalf("a word longer than the line: %q", got)
	}
}

// A phase with nothing to do draws nothing.
func TestEmptyPhaseSilent(t *testing.T) {
	var b strings.Builder
	p := &lineProgress{w: &b}
	p.Begin("verify", 0)
	p.End()
	p.Begin("write", 10)
	p.Add(10)
	p.End()
	if strings.Contains(b.String(), "verify") || !strings.Contains(b.String(), "dmsnap: write: 10 B of 10 B") {
		t.Fatalf("%q", b.String())
	}
}
