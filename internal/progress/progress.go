package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// Interval is the shortest time between two redraws.
const Interval = 200 * time.Millisecond

// Printer draws the progress of one operation. The zero value is not
// usable; create one with New or ForTerminal.
type Printer struct {
	mu       sync.Mutex
	w        io.Writer // nil when silent
	label    string
	total    int64
	done     int64
	start    time.Time
	drawn    time.Time // last redraw; start before the first
	width    int       // of the last line drawn, to blank its tail
	finished bool
	now      func() time.Time
}

// New returns a Printer that draws on w when enabled, and is silent
// otherwise. label names the operation ("export vm1"); total is the number
// of bytes expected, 0 if not known yet (see SetTotal). New does not look
// at whether w is a terminal: ForTerminal does.
func New(w io.Writer, label string, total int64, enabled bool) *Printer {
	return newAt(w, label, total, enabled, time.Now)
}

func newAt(w io.Writer, label string, total int64, enabled bool, now func() time.Time) *Printer {
	p := &Printer{label: label, total: total, now: now}
	if enabled {
		p.w = w
	}
	p.start = now()
	p.drawn = p.start
	return p
}

// ForTerminal returns a Printer that draws on f only when enabled and f is
// a terminal, so output redirected to a file or a pipe stays clean.
func ForTerminal(f *os.File, label string, total int64, enabled bool) *Printer {
	return New(f, label, total, enabled && IsTerminal(f))
}

// Enabled reports whether the Printer draws anything.
func (p *Printer) Enabled() bool { return p.w != nil }

// SetTotal changes the number of bytes expected (0: unknown).
func (p *Printer) SetTotal(total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total = total
	p.maybeDraw()
}

// Set reports that done bytes are complete in all.
func (p *Printer) Set(done int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = done
	p.maybeDraw()
}

// Add reports n more bytes complete.
func (p *Printer) Add(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	p.maybeDraw()
}

// Done draws the final line, with the bytes done and the average rate,
// and ends it with a newline. Call it after a failure too: the line then
// shows how far the operation got, and the error printed next starts on a
// line of its own. Calls after the first do nothing, and Set and Add after
// Done draw nothing.
func (p *Printer) Done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.finished {
		return
	}
	p.finished = true
	if p.w == nil {
		return
	}
	p.draw(p.now(), true)
}

// maybeDraw redraws when the last redraw is at least Interval ago.
func (p *Printer) maybeDraw() {
	if p.w == nil || p.finished {
		return
	}
	now := p.now()
	if now.Sub(p.drawn) < Interval {
		return
	}
	p.draw(now, false)
}

func (p *Printer) draw(now time.Time, final bool) {
	p.drawn = now
	line := p.line(now.Sub(p.start), final)
	pad := ""
	if n := len(line); n < p.width {
		pad = strings.Repeat(" ", p.width-n)
	}
	p.width = len(line)
	end := ""
	if final {
		end = "\n"
	}
	// A failed write to a terminal is not worth failing the operation.
	fmt.Fprint(p.w, "\r"+line+pad+end)
}

// line is the text of one redraw, e.g.
//
//	export vm1: 1.5 GiB / 4.0 GiB  37%  212.4 MiB/s  ETA 0:12
//	export vm1: 4.0 GiB / 4.0 GiB  100%  209.8 MiB/s  in 0:19
func (p *Printer) line(elapsed time.Duration, final bool) string {
	var b strings.Builder
	if p.label != "" {
		b.WriteString(p.label + ": ")
	}
	b.WriteString(Bytes(p.done))
	if p.total > 0 {
		fmt.Fprintf(&b, " / %s  %d%%", Bytes(p.total), percent(p.done, p.total))
	}
	rate := 0.0
	if s := elapsed.Seconds(); s > 0 {
		rate = float64(p.done) / s
	}
	fmt.Fprintf(&b, "  %s/s", Bytes(int64(rate)))
	switch {
	case final:
		fmt.Fprintf(&b, "  in %s", clock(elapsed))
	case p.total > 0 && rate > 0 && p.done < p.total:
		fmt.Fprintf(&b, "  ETA %s", clock(time.Duration(float64(p.total-p.done)/rate*float64(time.Second))))
	}
	return b.String()
}

// percent is done/total in whole percent, 100 only when done reaches total.
func percent(done, total int64) int64 {
	if done >= total {
		return 100
	}
	if done <= 0 {
		return 0
	}
	return min(int64(float64(done)/float64(total)*100), 99)
}

// clock formats a duration as M:SS, or H:MM:SS from an hour on.
func clock(d time.Duration) string {
	s := int64(d.Round(time.Second) / time.Second)
	if s < 0 {
		s = 0
	}
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}

// Bytes formats a byte count with a binary unit and one decimal
// ("512 B", "1.5 GiB").
func Bytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	f := float64(n) / 1024
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}
