// Package progress draws a one-line progress display for a long operation
// on a terminal: bytes done of the total, percent, rate and time left,
// redrawn in place with "\r" at most five times a second, and one final
// line when the operation ends.
//
// A Printer is silent when its output is not a terminal or when the user
// turned it off, so commands create one unconditionally and report to it:
//
//	p := progress.New(os.Stderr, "export vm1", total, c.Bool("progress"))
//	defer p.Done()
//	... p.Add(n) as bytes are written, or p.Set(done) as a gateway reports them ...
//
// The counters are safe for concurrent use, so a copy loop (Add) and a
// poller of the gateway's API (Set, SetTotal) can both feed one Printer.
package progress
