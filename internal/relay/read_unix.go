//go:build unix

package relay

import (
	"io"
	"net"
	"os"
	"syscall"
)

// socketReader reads a TCP socket through the runtime's poller into a
// pooled buffer that it takes only once the socket is readable: an idle
// connection holds no buffer, and a read costs one system call, the same
// as net.Conn's Read.
type socketReader struct {
	raw  syscall.RawConn
	conn net.Conn // for the addresses in errors
	fn   func(fd uintptr) bool
	// The last read, set by fn.
	bp  *[]byte
	n   int
	err error
}

func (r *socketReader) init(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return
	}
	r.raw, r.conn = raw, c
	r.fn = r.readFD // one method value, not one closure per read
}

// ok reports whether r reads the socket itself.
func (r *socketReader) ok() bool { return r.raw != nil }

func (r *socketReader) readFD(fd uintptr) bool {
	if r.bp == nil {
		r.bp = bufPool.Get().(*[]byte)
	}
	for {
		r.n, r.err = syscall.Read(int(fd), *r.bp)
		if r.err != syscall.EINTR {
			break
		}
	}
	if r.err == syscall.EAGAIN {
		bufPool.Put(r.bp)
		r.bp = nil
		return false // nothing yet: wait for the poller, without a buffer
	}
	return true
}

// read waits until the socket has bytes, an end or an error, and reads
// them into a buffer from the pool. bp is nil when n is 0.
func (r *socketReader) read() (bp *[]byte, n int, err error) {
	rerr := r.raw.Read(r.fn)
	bp, n, err = r.bp, r.n, r.err
	r.bp, r.err = nil, nil
	switch {
	case rerr != nil: // closed, or a deadline: already a *net.OpError
		err = rerr
	case err != nil:
		err = &net.OpError{Op: "read", Net: "tcp", Source: r.conn.LocalAddr(), Addr: r.conn.RemoteAddr(), Err: os.NewSyscallError("read", err)}
	case n == 0:
		err = io.EOF
	}
	if n <= 0 || err != nil {
		n = 0
		if bp != nil {
			bufPool.Put(bp)
			bp = nil
		}
	}
	return bp, n, err
}
