package tier

import "sync"

// Chunk-sized buffers (fetches, uploads, stream buffers) are recycled: a
// fresh 4 MiB buffer costs a page fault per 4 KiB and its zeroing, on
// every chunk that moves.
var chunkBufs sync.Map // capacity → *sync.Pool of *[]byte

func bufPool(size int64) *sync.Pool {
	if p, ok := chunkBufs.Load(size); ok {
		return p.(*sync.Pool)
	}
	p, _ := chunkBufs.LoadOrStore(size, &sync.Pool{New: func() any {
		b := make([]byte, 0, size)
		return &b
	}})
	return p.(*sync.Pool)
}

// getBuf returns an empty buffer with room for size bytes.
func getBuf(size int64) []byte {
	return (*bufPool(size).Get().(*[]byte))[:0]
}

// putBuf recycles a buffer from getBuf; nobody may use it afterwards.
// Buffers that grew elsewhere are left to the garbage collector.
func putBuf(b []byte, size int64) {
	if int64(cap(b)) != size {
		return
	}
	b = b[:0]
	bufPool(size).Put(&b)
}
