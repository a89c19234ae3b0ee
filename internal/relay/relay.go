// Package relay copies bytes both ways between two connections, propagating
// half-closes, with pooled buffers and byte counts.
package relay

import (
	"bufio"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
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
const BufSize = 32 << 10

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
	var (
		res    Result
		wg     sync.WaitGroup
		mu     sync.Mutex
		failed bool
	)
	fail := func(err error) {
		mu.Lock()
		first := !failed
		if first {
			failed = true
			res.Err = err
		}
		mu.Unlock()
		if first {
			a.Abort()
			b.Abort()
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		n, err := Copy(b, a)
		res.AToB = n
		if err != nil {
			fail(err)
			return
		}
		if err := b.CloseWrite(); err != nil {
			fail(err)
		}
	}()
	n, err := Copy(a, b)
	res.BToA = n
	if err != nil {
		fail(err)
	} else if err := a.CloseWrite(); err != nil {
		fail(err)
	}
	wg.Wait()
	if !failed {
		a.Close()
		b.Close()
	}
	return res
}

// Copy copies src to dst until src ends, with a pooled buffer. Unlike
// io.Copy it never lets dst's ReadFrom (as *net.TCPConn has) pick its own
// buffer, which would allocate one per call when src is not a file or socket.
// A clean end of src (io.EOF) returns a nil error.
//
// An idle connection holds no buffer: when src can wait for data without
// one (a *Stream, a *TCP over a socket) and the last read drained it, the
// buffer goes back to the pool until the next bytes arrive. Ten thousand
// idle tunnels then cost goroutines, not 32 KiB buffers.
func Copy(dst io.Writer, src io.Reader) (int64, error) {
	w, _ := src.(readWaiter)
	var (
		bp      *[]byte
		written int64
	)
	defer func() {
		if bp != nil {
			bufPool.Put(bp)
		}
	}()
	for {
		if bp == nil {
			if w != nil {
				w.waitRead()
			}
			bp = bufPool.Get().(*[]byte)
		}
		buf := *bp
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			written += int64(nw)
			if werr != nil {
				return written, werr
			}
			if nw != nr {
				return written, io.ErrShortWrite
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return written, nil
			}
			return written, rerr
		}
		if w != nil && nr < len(buf) {
			bufPool.Put(bp)
			bp = nil
		}
	}
}

// readWaiter is a source that can block until a Read would not block (data,
// end of stream or an error is ready) without a buffer. waitRead's errors
// are left for the Read that follows.
type readWaiter interface {
	waitRead()
}

// TCP adapts a net.Conn with CloseWrite (*net.TCPConn, *tls.Conn) to Conn.
// Bytes a bufio.Reader read ahead from it are returned first.
type TCP struct {
	net.Conn
	br     *bufio.Reader
	waiter socketWaiter
}

// NewTCP wraps c; br, if not nil, holds bytes read ahead from c.
func NewTCP(c net.Conn, br *bufio.Reader) *TCP {
	if br != nil && br.Buffered() == 0 {
		br = nil
	}
	t := &TCP{Conn: c, br: br}
	t.waiter.init(c)
	return t
}

func (c *TCP) waitRead() {
	if c.br != nil && c.br.Buffered() > 0 {
		return
	}
	c.waiter.wait()
}

func (c *TCP) Read(p []byte) (int, error) {
	if err := c.waiter.pending(); err != nil {
		return 0, err
	}
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
