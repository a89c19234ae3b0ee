package relay

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ErrIdle ends a tunnel or connection that moved no byte in either
// direction for an IdleCloser's timeout.
var ErrIdle = errors.New("idle timeout")

// IdleCloser ends the tunnels (StartIdle) and connections (Conn) it watches
// once they moved no byte in either direction for its timeout.
//
// It costs no timer and no clock read per read or write: each one that
// moved bytes adds one to a counter, and a single goroutine compares the
// counters every tick (a tenth of the timeout, between 10ms and 1s), so
// an idle tunnel is ended between timeout and timeout+tick after its last
// byte. That goroutine runs only while something is watched: it ends
// within a tick of the last watched tunnel.
type IdleCloser struct {
	timeout time.Duration
	tick    time.Duration

	mu      sync.Mutex
	watched map[*watch]struct{} // one per tunnel or connection open now
	running bool
}

// watch is one watched tunnel or connection.
type watch struct {
	moved  *atomic.Int64 // bumped by every read or write that moved bytes
	seen   int64         // moved at the last sweep that saw it change
	since  time.Time     // when moved last changed, or watching began
	expire func()        // ends the tunnel; called once, without ic.mu
}

// NewIdleCloser returns an IdleCloser with the given timeout, or nil
// (watching nothing, ending nothing) if timeout is not positive.
func NewIdleCloser(timeout time.Duration) *IdleCloser {
	if timeout <= 0 {
		return nil
	}
	return &IdleCloser{
		timeout: timeout,
		tick:    min(max(timeout/10, 10*time.Millisecond), time.Second),
		watched: make(map[*watch]struct{}),
	}
}

// Timeout is the idle timeout; zero for a nil IdleCloser.
func (ic *IdleCloser) Timeout() time.Duration {
	if ic == nil {
		return 0
	}
	return ic.timeout
}

func (ic *IdleCloser) watch(moved *atomic.Int64, expire func()) *watch {
	w := &watch{moved: moved, seen: moved.Load(), since: time.Now(), expire: expire}
	ic.mu.Lock()
	defer ic.mu.Unlock()
	ic.watched[w] = struct{}{}
	if !ic.running {
		ic.running = true
		go ic.sweep()
	}
	return w
}

func (ic *IdleCloser) unwatch(w *watch) {
	ic.mu.Lock()
	delete(ic.watched, w)
	ic.mu.Unlock()
}

// sweep ends what has been idle for the timeout, every tick, until
// nothing is watched.
func (ic *IdleCloser) sweep() {
	t := time.NewTicker(ic.tick)
	defer t.Stop()
	var expired []*watch
	for now := range t.C {
		ic.mu.Lock()
		if len(ic.watched) == 0 {
			ic.running = false
			ic.mu.Unlock()
			return
		}
		for w := range ic.watched {
			if m := w.moved.Load(); m != w.seen {
				w.seen, w.since = m, now
				continue
			}
			if now.Sub(w.since) >= ic.timeout {
				expired = append(expired, w)
				delete(ic.watched, w)
			}
		}
		ic.mu.Unlock()
		for i, w := range expired {
			w.expire()
			expired[i] = nil
		}
		expired = expired[:0]
	}
}

// StartIdle is Start, and ends the tunnel with ErrIdle (aborting both
// sides) once it moved no byte either way for ic's timeout. A nil ic is
// Start.
func StartIdle(a, b Conn, ic *IdleCloser, done func(Result)) *Tunnel {
	if ic == nil {
		return Start(a, b, done)
	}
	t := &Tunnel{a: a, b: b, done: done}
	t.left.Store(2)
	t.idle = ic
	t.watch = ic.watch(&t.moved, func() { t.fail(ErrIdle) })
	now := time.Now()
	go (&pump{t: t, src: a, dst: b, n: &t.res.AToB, live: &t.aToB, moved: &t.moved, handoff: true, since: now}).run()
	go (&pump{t: t, src: b, dst: a, n: &t.res.BToA, live: &t.bToA, moved: &t.moved, handoff: true, since: now}).run()
	return t
}

// Conn returns c watched by ic: once no byte moved through it either way
// for ic's timeout, it is aborted (closed, for a c that is not a Conn), and
// its reads and writes fail with an error that wraps ErrIdle. Closing it
// stops the watch. A nil ic returns c.
func (ic *IdleCloser) Conn(c net.Conn) net.Conn {
	if ic == nil {
		return c
	}
	ctc := &idleConn{Conn: c, ic: ic}
	ctc.w = ic.watch(&ctc.moved, ctc.expire)
	return ctc
}

// idleConn is a net.Conn watched by an IdleCloser.
type idleConn struct {
	net.Conn
	ic    *IdleCloser
	w     *watch
	moved atomic.Int64
	idled atomic.Bool
}

func (c *idleConn) expire() {
	c.idled.Store(true)
	if rc, ok := c.Conn.(Conn); ok {
		rc.Abort()
		return
	}
	c.Conn.Close()
}

func (c *idleConn) err(err error) error {
	if err != nil && c.idled.Load() {
		return fmt.Errorf("%w: %w", ErrIdle, err)
	}
	return err
}

func (c *idleConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.moved.Add(1)
	}
	return n, c.err(err)
}

func (c *idleConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.moved.Add(1)
	}
	return n, c.err(err)
}

// CloseWrite half-closes the connection when it can.
func (c *idleConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *idleConn) Close() error {
	c.ic.unwatch(c.w)
	return c.Conn.Close()
}
