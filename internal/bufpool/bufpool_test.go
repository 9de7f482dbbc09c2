package bufpool

import "testing"

func TestGetPut(t *testing.T) {
	for _, n := range []int{0, 1, 512, 513, 4096, 1 << 20, 3<<20 + 5, 64 << 20} {
		b := Get(n)
		if len(b) != n {
			t.Fatalf("Get(%d): length %d", n, len(b))
		}
		if n > 0 && cap(b)&(cap(b)-1) != 0 {
			t.Fatalf("Get(%d): capacity %d not a power of two", n, cap(b))
		}
		Put(b)
	}
	if b := Get(64<<20 + 1); len(b) != 64<<20+1 {
		t.Fatal("a buffer over the largest class")
	}
	Put(make([]byte, 1000)) // not from Get: ignored
}
