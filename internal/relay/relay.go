// Package relay copies bytes both ways between two connections, propagating
// half-closes, with pooled buffers and byte counts.
package relay

import (
	"bufio"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Conn is one side of a relay.
type Conn interface {
	io.Reader
	io.Writer
	// CloseWrite signals the end of the bytes written (a TCP FIN, a QUIC
	// stream FIN); reading stays possible.
	CloseWrite() error
	// Close releases the connection.
	Close() error
	// Abort releases the connection after an error: the peer sees a reset,
	// not a clean end.
	Abort()
}

// BufSize is the size of one copy buffer.
const BufSize = 128 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, BufSize); return &b }}

// Result says what a relay moved.
type Result struct {
	AToB, BToA int64 // bytes copied from a to b and from b to a
	Err        error // the first error other than a clean end of stream
}

// Join copies a→b and b→a until both directions have ended. A clean end of
// one direction half-closes the other side's write half; an error in either
// direction closes both connections so the other direction stops too. Join
// closes a and b before it returns.
func Join(a, b Conn) Result {
	done := make(chan Result, 1)
	Start(a, b, func(res Result) { done <- res })
	return <-done
}

// Start is Join without the wait: it returns at once, each direction runs
// in a goroutine of its own, and done is called (from one of them) with the
// Result once both directions have ended and a and b are closed. The
// Tunnel it returns reports the bytes moved so far and can end it.
//
// An open tunnel costs those two goroutines, and an idle one only two
// minimal stacks: a direction that has copied bytes and is about to wait for
// more (see Copy) continues on a fresh goroutine, at most once per
// handoffEvery, so the stack that grew deep in the write path is freed
// instead of being held for as long as the tunnel stays idle.
func Start(a, b Conn, done func(Result)) *Tunnel {
	t := &Tunnel{a: a, b: b, done: done}
	t.left.Store(2)
	now := time.Now()
	go (&pump{t: t, src: a, dst: b, n: &t.res.AToB, live: &t.aToB, handoff: true, since: now}).run()
	go (&pump{t: t, src: b, dst: a, n: &t.res.BToA, live: &t.bToA, handoff: true, since: now}).run()
	return t
}

// handoffEvery bounds how often one direction moves to a fresh goroutine:
// a busy tunnel moves a few times a second at most, an idle one after each
// burst of bytes.
const handoffEvery = 100 * time.Millisecond

// Tunnel is the state the two directions of a Start share.
type Tunnel struct {
	a, b       Conn
	done       func(Result)
	left       atomic.Int32 // directions still running
	aToB, bToA atomic.Int64 // bytes so far
	mu         sync.Mutex
	failed     bool
	res        Result

	// With StartIdle: bytes moved either way bump moved, which idle
	// watches.
	moved atomic.Int64
	idle  *IdleCloser
	watch *watch
}

// Bytes returns the bytes copied so far from a to b and from b to a.
func (t *Tunnel) Bytes() (aToB, bToA int64) { return t.aToB.Load(), t.bToA.Load() }

// Abort ends the tunnel with err as if a side had failed: both sides are
// aborted and done gets err (unless the tunnel had failed already).
func (t *Tunnel) Abort(err error) { t.fail(err) }

// fail records the tunnel's first error and aborts both sides, so the other
// direction stops too.
func (t *Tunnel) fail(err error) {
	t.mu.Lock()
	first := !t.failed
	if first {
		t.failed = true
		t.res.Err = err
	}
	t.mu.Unlock()
	if first {
		t.a.Abort()
		t.b.Abort()
	}
}

// ended is called by each direction once it has stopped; the last one
// closes both sides and reports.
func (t *Tunnel) ended() {
	if t.left.Add(-1) != 0 {
		return
	}
	if t.idle != nil {
		t.idle.unwatch(t.watch)
	}
	t.mu.Lock()
	failed := t.failed
	t.mu.Unlock()
	if !failed {
		t.a.Close()
		t.b.Close()
	}
	t.done(t.res)
}

// pump copies src to dst: one direction of a tunnel, or a Copy.
type pump struct {
	t       *Tunnel // nil for a Copy, which never calls run
	src     io.Reader
	dst     io.Writer
	written int64
	n       *int64        // where run stores written at the end
	live    *atomic.Int64 // if not nil, gets each write's bytes
	moved   *atomic.Int64 // if not nil, bumped after each write of bytes
	bp      *[]byte
	err     error
	handoff bool      // may continue on a fresh goroutine before waiting
	since   time.Time // when this goroutine took over
}

// run copies until src ends or fails, then, in a tunnel, half-closes dst
// (or aborts both sides on an error) and reports the end.
func (p *pump) run() {
	if !p.copy() {
		go p.run() // the rest of the copy, on a fresh stack
		return
	}
	*p.n = p.written
	if p.err == nil {
		if err := p.dst.(Conn).CloseWrite(); err != nil {
			p.err = err
		}
	}
	if p.err != nil {
		p.t.fail(p.err)
	}
	p.t.ended()
}

// copy is the loop behind Copy and the directions of Start. It returns
// false when the rest of the copy should continue on a fresh goroutine
// (only if p.handoff), true when src ended (p.err nil) or failed (p.err
// set).
func (p *pump) copy() bool {
	pr, _ := p.src.(pooledReader)
	if pr != nil && !pr.readsPooled() {
		pr = nil
	}
	w, _ := p.src.(readWaiter)
	defer func() {
		if p.bp != nil {
			bufPool.Put(p.bp)
			p.bp = nil
		}
	}()
	for {
		var (
			nr   int
			rerr error
		)
		if p.bp == nil {
			if p.handoff && (pr != nil || w != nil) {
				if now := time.Now(); now.Sub(p.since) >= handoffEvery {
					p.since = now
					return false
				}
			}
			if pr != nil {
				p.bp, nr, rerr = pr.readPooled()
			} else {
				if w != nil {
					w.waitRead()
				}
				p.bp = bufPool.Get().(*[]byte)
			}
		}
		var buf []byte
		if p.bp != nil { // nil after a pooled read of nothing
			buf = *p.bp
		}
		if pr == nil {
			nr, rerr = p.src.Read(buf)
		}
		if nr > 0 {
			nw, werr := p.dst.Write(buf[:nr])
			p.written += int64(nw)
			if p.live != nil {
				p.live.Add(int64(nw))
			}
			if p.moved != nil {
				p.moved.Add(1)
			}
			if werr != nil {
				p.err = werr
				return true
			}
			if nw != nr {
				p.err = io.ErrShortWrite
				return true
			}
		}
		if rerr != nil {
			if rerr != io.EOF {
				p.err = rerr
			}
			return true
		}
		if p.bp != nil && (pr != nil || (w != nil && nr < len(buf))) {
			bufPool.Put(p.bp)
			p.bp = nil
		}
	}
}

// Copy copies src to dst until src ends, with a pooled buffer. Unlike
// io.Copy it never lets dst's ReadFrom (as *net.TCPConn has) pick its own
// buffer, which would allocate one per call when src is not a file or socket.
// A clean end of src (io.EOF) returns a nil error.
//
// An idle connection holds no buffer: when src can wait for data without
// one (a *Stream, a *TCP over a socket) and the last read drained it, the
// buffer goes back to the pool until the next bytes arrive. Ten thousand
// idle tunnels then cost goroutines, not 128 KiB buffers.
func Copy(dst io.Writer, src io.Reader) (int64, error) {
	p := pump{src: src, dst: dst}
	p.copy()
	return p.written, p.err
}

// readWaiter is a source that can block until a Read would not block (data,
// end of stream or an error is ready) without a buffer.
type readWaiter interface {
	waitRead()
}

// pooledReader is a source that takes a buffer from the pool only once it
// has bytes for it, if readsPooled says it can.
type pooledReader interface {
	readsPooled() bool
	// readPooled returns the bytes read in a buffer from the pool, or
	// none (bp nil, n 0) at the end or on an error.
	readPooled() (bp *[]byte, n int, err error)
}

// TCP adapts a net.Conn with CloseWrite (*net.TCPConn, *tls.Conn) to Conn.
// Bytes a bufio.Reader read ahead from it are returned first.
type TCP struct {
	net.Conn
	br     *bufio.Reader
	socket socketReader
}

// NewTCP wraps c; br, if not nil, holds bytes read ahead from c.
func NewTCP(c net.Conn, br *bufio.Reader) *TCP {
	if br != nil && br.Buffered() == 0 {
		br = nil
	}
	t := &TCP{Conn: c, br: br}
	t.socket.init(c)
	return t
}

func (c *TCP) readsPooled() bool { return c.socket.ok() }

func (c *TCP) readPooled() (*[]byte, int, error) {
	if c.br != nil && c.br.Buffered() > 0 {
		bp := bufPool.Get().(*[]byte)
		n, err := c.br.Read(*bp)
		return bp, n, err
	}
	c.br = nil
	return c.socket.read()
}

func (c *TCP) Read(p []byte) (int, error) {
	if c.br != nil {
		if c.br.Buffered() > 0 {
			return c.br.Read(p)
		}
		c.br = nil
	}
	return c.Conn.Read(p)
}

// Abort closes the connection with a reset (SO_LINGER 0) where it can.
func (c *TCP) Abort() {
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Conn.Close()
}

// CloseWrite half-closes the connection when it can.
func (c *TCP) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		err := cw.CloseWrite()
		if errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ENOTCONN) {
			return nil // the peer is gone already: nothing left to end
		}
		return err
	}
	return nil
}

// AsConn returns c as a Conn: itself if it is one, else wrapped in a TCP.
func AsConn(c net.Conn) Conn {
	if rc, ok := c.(Conn); ok {
		return rc
	}
	return NewTCP(c, nil)
}
