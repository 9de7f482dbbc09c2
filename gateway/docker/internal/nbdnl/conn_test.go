package nbdnl

import (
	"context"
	"errors"
	"os"
	"strconv"
	"testing"
	"time"
)

// Against this host's kernel: without the nbd module the family is
// missing and Dial says so with ErrNoFamily; with it (root in a guest),
// STATUS of every device answers and decodes, and a watcher joins the
// multicast group and stops with its context.
func TestDialKernel(t *testing.T) {
	c, err := Dial()
	if _, serr := os.Stat("/sys/module/nbd"); serr != nil {
		if !errors.Is(err, ErrNoFamily) {
			t.Fatalf("no nbd module: Dial returned %v, want ErrNoFamily", err)
		}
		return
	}
	if err != nil {
		t.Fatalf("nbd module loaded: %v", err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ds, err := c.Status(ctx, -1)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if _, err := os.Stat("/sys/block/nbd" + strconv.Itoa(d.Index)); err != nil {
			t.Errorf("STATUS lists nbd%d, which sysfs does not have: %v", d.Index, err)
		}
	}
	w, err := c.WatchLinkDead()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	wctx, wcancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer wcancel()
	if _, err := w.Next(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next with no link dying: %v, want the context's deadline", err)
	}
}
