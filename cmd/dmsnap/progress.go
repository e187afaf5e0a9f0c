package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"github.com/dmsnap/dmsnap/internal/units"
	"github.com/dmsnap/dmsnap/restore"
)

// Progress of long passes (a restore's verify, copy and write phases), on
// stderr. On a terminal: one bar per phase, drawn by mpb to the terminal's
// width whatever it is, with the bytes done, the rate and the time left;
// each phase's bar stays on its own line when it ends. Elsewhere (a log, a
// pipe, a test): no bar, one line per phase when it ends, with its size,
// time and rate. With --json and no terminal, nothing: a script reading the
// envelope, even with 2>&1, reads the envelope alone.

// newProgress returns the progress for w; json is --json.
func newProgress(w io.Writer, json bool) restore.Progress {
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return &barProgress{out: f}
	}
	if json {
		return restore.Quiet{}
	}
	return &lineProgress{w: w}
}

// barProgress draws a bar per phase.
type barProgress struct {
	out *os.File
	p   *mpb.Progress
	bar *mpb.Bar
}

func (b *barProgress) Begin(phase string, total uint64) {
	b.End() // a phase left open
	if total == 0 {
		return // nothing to do: no bar (a plan with nothing to check)
	}
	b.p = mpb.New(mpb.WithOutput(b.out), mpb.WithRefreshRate(200*time.Millisecond))
	b.bar = b.p.New(int64(total),
		mpb.BarStyle().Lbound("[").Filler("#").Tip("#").Padding("-").Rbound("]"),
		mpb.PrependDecorators(decor.Name(phase, decor.WC{W: 7, C: decor.DindentRight})),
		mpb.AppendDecorators(
			decor.Percentage(decor.WC{W: 5}),
			decor.Counters(decor.SizeB1024(0), " % .1f / % .1f"),
			decor.AverageSpeed(decor.SizeB1024(0), " % .1f"),
			decor.OnComplete(decor.AverageETA(decor.ET_STYLE_MMSS, decor.WC{W: 6}), "  done"),
		),
	)
}

func (b *barProgress) Add(n uint64) {
	if b.bar != nil {
		b.bar.IncrInt64(int64(n))
	}
}

func (b *barProgress) End() {
	if b.p == nil {
		return
	}
	b.bar.SetTotal(-1, true) // complete at what was done
	b.p.Wait()
	b.p, b.bar = nil, nil
}

// lineProgress writes a line per phase when it ends.
type lineProgress struct {
	w           io.Writer
	phase       string
	total, done uint64
	start       time.Time
	open        bool
}

func (l *lineProgress) Begin(phase string, total uint64) {
	l.End()
	// A phase with nothing to do gets no line.
	l.phase, l.total, l.done, l.start, l.open = phase, total, 0, time.Now(), total > 0
}

func (l *lineProgress) Add(n uint64) { l.done += n }

func (l *lineProgress) End() {
	if !l.open {
		return
	}
	l.open = false
	d := time.Since(l.start)
	rate := "-"
	if s := d.Seconds(); s > 0 {
		rate = units.FormatBytes(uint64(float64(l.done)/s)) + "/s"
	}
	fmt.Fprintf(l.w, "dmsnap: %s: %s of %s in %s (%s)\n", l.phase, units.FormatBytes(l.done), units.FormatBytes(l.total), d.Round(time.Millisecond), rate)
}
