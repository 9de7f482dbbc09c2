// Package bufpool recycles byte buffers in power-of-two size classes, so
// that a steady stream of requests allocates nothing for its data.
//
// The pools hold a pointer to a buffer's first byte, which (unlike a
// *[]byte made on each Put) costs no allocation; the class gives the
// length back. A buffer from Get holds whatever its last user left in it.
package bufpool

import (
	"math/bits"
	"sync"
	"unsafe"
)

const (
	minClass = 9  // 512 B
	maxClass = 26 // 64 MiB
)

var pools [maxClass + 1]sync.Pool

func class(n int) int {
	if n <= 1<<minClass {
		return minClass
	}
	return bits.Len(uint(n - 1))
}

// Get returns a buffer of length n (its capacity a power of two). Buffers
// above 64 MiB are allocated and never recycled.
func Get(n int) []byte {
	if n == 0 {
		return []byte{}
	}
	cl := class(n)
	if cl > maxClass {
		return make([]byte, n)
	}
	if p, ok := pools[cl].Get().(*byte); ok {
		return unsafe.Slice(p, 1<<cl)[:n]
	}
	return make([]byte, n, 1<<cl)
}

// Put recycles a buffer from Get; nobody may use it afterwards. Buffers
// not from Get (capacity not a power of two in range) are left to the
// garbage collector.
func Put(b []byte) {
	c := cap(b)
	if c < 1<<minClass || c&(c-1) != 0 {
		return
	}
	cl := bits.Len(uint(c)) - 1
	if cl > maxClass {
		return
	}
	pools[cl].Put(unsafe.SliceData(b))
}
