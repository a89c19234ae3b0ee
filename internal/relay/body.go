package relay

import "io"

// bodySmall is the buffer a BodyReader keeps for itself: what an idle
// HTTP/2 tunnel costs instead of a pooled BufSize buffer.
const bodySmall = 8 << 10

// BodyReader reads a source that cannot wait for data without a buffer,
// such as an HTTP/2 request body (a pipe the server fills). A Read on it
// blocks holding the buffer it was given, so a tunnel whose source it is
// would hold a pooled BufSize buffer for as long as it stays idle. Embedded
// in a Conn, it lets Start and Copy read into a small buffer of its own
// while the source is quiet, and take a pooled buffer only once a read
// filled the small one (bytes are flowing); a short read goes back to the
// small buffer.
//
// A BodyReader is used by one goroutine at a time.
type BodyReader struct {
	r     io.Reader
	small []byte
	busy  bool // the last read filled its buffer: more is likely queued
}

// NewBodyReader reads r.
func NewBodyReader(r io.Reader) *BodyReader { return &BodyReader{r: r} }

// Read reads r into p.
func (b *BodyReader) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *BodyReader) readsPooled() bool { return true }

func (b *BodyReader) readPooled() (*[]byte, int, error) {
	if b.busy {
		bp := bufPool.Get().(*[]byte)
		n, err := b.r.Read(*bp)
		b.busy = n == len(*bp)
		if n == 0 {
			bufPool.Put(bp)
			return nil, 0, err
		}
		return bp, n, err
	}
	if b.small == nil {
		b.small = make([]byte, bodySmall)
	}
	n, err := b.r.Read(b.small)
	if n == 0 {
		return nil, 0, err
	}
	b.busy = n == len(b.small)
	bp := bufPool.Get().(*[]byte)
	copy(*bp, b.small[:n])
	return bp, n, err
}
