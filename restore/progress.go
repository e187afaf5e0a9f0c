package restore

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmsnap/dmsnap/internal/units"
)

// Progress receives the progress of a long pass. Begin starts a phase
// ("verify", "copy", "write") of total bytes, Add reports bytes done, End
// closes the phase. Calls come from one goroutine.
type Progress interface {
	Begin(phase string, total uint64)
	Add(n uint64)
	End()
}

// Quiet is a Progress that shows nothing.
type Quiet struct{}

func (Quiet) Begin(string, uint64) {}
func (Quiet) Add(uint64)           {}
func (Quiet) End()                 {}

// ForFile returns a Terminal drawing on f when f is a terminal, else Quiet.
func ForFile(f *os.File) Progress {
	if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
		return Quiet{}
	}
	return NewTerminal(f)
}

// Terminal draws a one-line progress bar (bytes done of total, rate, ETA),
// redrawn in place with a carriage return at most every Interval.
type Terminal struct {
	W        io.Writer
	Width    int              // bar width in cells; 0 means 24
	Interval time.Duration    // minimum time between redraws; 0 means 200ms
	Now      func() time.Time // clock; nil means time.Now

	mu       sync.Mutex
	phase    string
	total    uint64
	done     uint64
	start    time.Time
	lastDraw time.Time
	drawn    bool
	lastLen  int
}

// NewTerminal returns a Terminal drawing on w.
func NewTerminal(w io.Writer) *Terminal { return &Terminal{W: w} }

func (t *Terminal) now() time.Time {
	if t.Now != nil {
		return t.Now()
	}
	return time.Now()
}

// Begin implements Progress.
func (t *Terminal) Begin(phase string, total uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.phase, t.total, t.done = phase, total, 0
	t.start = t.now()
	t.drawn = false
	t.draw(t.start)
}

// Add implements Progress.
func (t *Terminal) Add(n uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.done += n
	now := t.now()
	iv := t.Interval
	if iv == 0 {
		iv = 200 * time.Millisecond
	}
	if now.Sub(t.lastDraw) >= iv {
		t.draw(now)
	}
}

// End implements Progress: it draws the final state and ends the line.
func (t *Terminal) End() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.draw(t.now())
	fmt.Fprint(t.W, "\n")
	t.lastLen = 0
}

func (t *Terminal) draw(now time.Time) {
	w := t.Width
	if w == 0 {
		w = 24
	}
	line := FormatBar(t.phase, t.done, t.total, now.Sub(t.start), w)
	pad := ""
	if n := t.lastLen - len(line); n > 0 {
		pad = strings.Repeat(" ", n) // wipe the rest of a longer previous line
	}
	fmt.Fprintf(t.W, "\r%s%s", line, pad)
	t.lastLen = len(line)
	t.lastDraw = now
}

// FormatBar renders one progress line, e.g.
//
//	write   [############------------]  50%  32.0 MiB / 64.0 MiB  120.5 MiB/s  ETA 0:01
//
// The rate is the average since the phase began; rate and ETA show "--"
// until some time has passed and some bytes are done.
func FormatBar(phase string, done, total uint64, elapsed time.Duration, width int) string {
	if done > total {
		total = done
	}
	frac := 1.0
	if total > 0 {
		frac = float64(done) / float64(total)
	}
	fill := int(frac * float64(width))
	bar := strings.Repeat("#", fill) + strings.Repeat("-", width-fill)
	rate, eta := "--", "--"
	if secs := elapsed.Seconds(); secs > 0 && done > 0 {
		r := float64(done) / secs
		rate = units.FormatBytes(uint64(r)) + "/s"
		eta = formatETA(time.Duration(float64(total-done) / r * float64(time.Second)))
	}
	if done == total {
		eta = formatETA(0)
	}
	return fmt.Sprintf("%-7s [%s] %3d%%  %s / %s  %s  ETA %s",
		phase, bar, int(frac*100), units.FormatBytes(done), units.FormatBytes(total), rate, eta)
}

// formatETA renders a duration as m:ss, or h:mm:ss past an hour.
func formatETA(d time.Duration) string {
	s := int64((d + time.Second/2) / time.Second)
	if s < 0 {
		s = 0
	}
	h, m, sec := s/3600, s/60%60, s%60
	if h > 0 {
		return fmt.Sprintf("%d:%02d:%02d", h, m, sec)
	}
	return fmt.Sprintf("%d:%02d", m, sec)
}
