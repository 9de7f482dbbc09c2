package progress

import (
	"bytes"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// clockAt is a settable time source.
type clockAt struct{ t time.Time }

func (c *clockAt) now() time.Time          { return c.t }
func (c *clockAt) advance(d time.Duration) { c.t = c.t.Add(d) }
func newTest(total int64, enabled bool) (*Printer, *bytes.Buffer, *clockAt) {
	var buf bytes.Buffer
	c := &clockAt{t: time.Unix(1000, 0)}
	return newAt(&buf, "export vm1", total, enabled, c.now), &buf, c
}

func TestRedrawsAtMostEveryInterval(t *testing.T) {
	p, buf, c := newTest(100<<20, true)
	p.Add(1 << 20)
	if buf.Len() != 0 {
		t.Fatalf("drew %q before the first interval passed", buf.String())
	}
	c.advance(Interval)
	p.Add(9 << 20) // 10 MiB in 200ms: 50 MiB/s, 90 MiB left: 2 s
	want := "\rexport vm1: 10.0 MiB / 100.0 MiB  10%  50.0 MiB/s  ETA 0:02"
	if got := buf.String(); got != want {
		t.Fatalf("first redraw\n got %q\nwant %q", got, want)
	}
	buf.Reset()
	for range 10 {
		c.advance(Interval / 10)
		p.Add(1 << 20)
	}
	if n := strings.Count(buf.String(), "\r"); n != 1 {
		t.Errorf("%d redraws in one interval, want 1: %q", n, buf.String())
	}
	if strings.Contains(buf.String(), "\n") {
		t.Errorf("a redraw ended the line: %q", buf.String())
	}
}

func TestDoneDrawsFinalLineOnce(t *testing.T) {
	p, buf, c := newTest(4<<20, true)
	c.advance(2 * time.Second)
	p.Set(4 << 20)
	buf.Reset()
	c.advance(2 * time.Second)
	p.Done()
	want := "\rexport vm1: 4.0 MiB / 4.0 MiB  100%  1.0 MiB/s  in 0:04\n"
	if got := buf.String(); got != want {
		t.Fatalf("final line\n got %q\nwant %q", got, want)
	}
	p.Done()
	c.advance(time.Second)
	p.Add(1)
	if got := buf.String(); got != want {
		t.Errorf("output after Done: %q", strings.TrimPrefix(got, want))
	}
}

// A fast operation that never redrew still gets its final line.
func TestDoneWithoutRedraw(t *testing.T) {
	p, buf, c := newTest(1<<20, true)
	p.Add(1 << 20)
	c.advance(50 * time.Millisecond)
	p.Done()
	if got := buf.String(); !strings.HasPrefix(got, "\rexport vm1: 1.0 MiB / 1.0 MiB  100%  20.0 MiB/s") || !strings.HasSuffix(got, "\n") {
		t.Errorf("final line %q", got)
	}
}

func TestShorterLineBlanksTheLongerOne(t *testing.T) {
	p, buf, c := newTest(0, true)
	c.advance(time.Second)
	p.Set(5 << 30)
	long := len(buf.String())
	buf.Reset()
	c.advance(time.Second)
	p.Set(0) // "0 B" is shorter than "5.0 GiB"
	if got := buf.String(); len(got) != long || !strings.HasSuffix(got, " ") {
		t.Errorf("shorter redraw %q (%d bytes) does not cover the previous %d", got, len(got), long)
	}
}

func TestUnknownTotal(t *testing.T) {
	p, buf, c := newTest(0, true)
	c.advance(time.Second)
	p.Add(3 << 20)
	if got := buf.String(); got != "\rexport vm1: 3.0 MiB  3.0 MiB/s" {
		t.Errorf("without a total: %q", got)
	}
	buf.Reset()
	p.SetTotal(6 << 20)
	c.advance(time.Second)
	p.Add(0)
	if got := buf.String(); !strings.Contains(got, "3.0 MiB / 6.0 MiB  50%") || !strings.Contains(got, "ETA 0:02") {
		t.Errorf("after SetTotal: %q", got)
	}
}

func TestDisabledIsSilent(t *testing.T) {
	p, buf, c := newTest(10, false)
	for range 5 {
		c.advance(time.Second)
		p.Add(2)
	}
	p.Done()
	if buf.Len() != 0 || p.Enabled() {
		t.Errorf("disabled printer wrote %q", buf.String())
	}
}

func TestConcurrentAdd(t *testing.T) {
	var buf bytes.Buffer
	p := New(&buf, "", 0, true)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				p.Add(1)
			}
		}()
	}
	wg.Wait()
	p.Done()
	if !strings.Contains(buf.String(), "7.8 KiB") {
		t.Errorf("after 8000 bytes: %q", buf.String())
	}
}

func TestPercentAndClock(t *testing.T) {
	for _, c := range []struct{ done, total, want int64 }{
		{0, 10, 0}, {-1, 10, 0}, {999, 1000, 99}, {1000, 1000, 100}, {2000, 1000, 100}, {1, 3, 33},
	} {
		if got := percent(c.done, c.total); got != c.want {
			t.Errorf("percent(%d, %d) = %d, want %d", c.done, c.total, got, c.want)
		}
	}
	for d, want := range map[time.Duration]string{
		0: "0:00", 1499 * time.Millisecond: "0:01", 61 * time.Second: "1:01", 3723 * time.Second: "1:02:03", -time.Second: "0:00",
	} {
		if got := clock(d); got != want {
			t.Errorf("clock(%v) = %q, want %q", d, got, want)
		}
	}
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 1 << 40: "1.0 TiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestForTerminal(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if IsTerminal(f) {
		t.Error("a regular file is a terminal")
	}
	p := ForTerminal(f, "x", 1, true)
	p.Add(1)
	p.Done()
	if fi, _ := f.Stat(); fi.Size() != 0 || p.Enabled() {
		t.Errorf("printer on a file wrote %d bytes", fi.Size())
	}
	pty, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal to test with: %v", err)
	}
	defer pty.Close()
	if !IsTerminal(pty) {
		t.Error("a pseudo-terminal is not a terminal")
	}
	if !ForTerminal(pty, "x", 1, true).Enabled() || ForTerminal(pty, "x", 1, false).Enabled() {
		t.Error("ForTerminal on a terminal does not follow enabled")
	}
}
