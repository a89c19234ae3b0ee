package relay

import (
	"net"
	"syscall"
)

// socketWaiter waits until a TCP socket is readable, using the runtime's
// poller and a non-blocking MSG_PEEK of one byte: no buffer is held while
// the connection is idle.
type socketWaiter struct {
	raw  syscall.RawConn
	peek func(fd uintptr) bool
	b    [1]byte
	// err is a socket error the peek consumed (Linux hands a pending
	// error such as ECONNRESET to one receive only, then reads return 0):
	// the next Read must return it.
	err error
}

func (w *socketWaiter) init(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return
	}
	w.raw = raw
	w.peek = func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), w.b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch err {
		case syscall.EAGAIN:
			return false // nothing yet: wait for the poller
		case nil, syscall.EINTR:
			return true // data or end of stream (or a signal: let Read sort it out)
		default:
			w.err = &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
			return true
		}
	}
}

// pending returns, once, the error a peek consumed.
func (w *socketWaiter) pending() error {
	err := w.err
	w.err = nil
	return err
}

func (w *socketWaiter) wait() {
	if w.raw != nil {
		w.raw.Read(w.peek)
	}
}
