package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-yamux/v5"
	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/wire"
)

// TCPConfig configures one side of a TCP connection. Zero values take the
// defaults named.
type TCPConfig struct {
	// KeepAlive is how often this side pings a connection that carried
	// nothing for that long; zero sends no pings (the proxy, whose agents
	// ping it).
	KeepAlive time.Duration
	// IdleTimeout closes the connection when nothing arrived from the peer
	// for this long. Default 30s.
	IdleTimeout time.Duration
	// MaxIncomingStreams is how many streams the peer may have open at
	// once; past it yamux resets new ones. Default 4.
	MaxIncomingStreams uint32
	// StreamWindow is a stream's receive window: how much a stream
	// buffers for a reader that does not keep up, and so, over one round
	// trip, its throughput (2 MiB per 50 ms is 40 MiB/s). Default 2 MiB.
	StreamWindow uint32
}

// ControlClose names the control message that closes a TCP connection
// with an application error code and reason.
const ControlClose = "close"

const (
	// classifyTimeout bounds the wait for a new stream's first byte.
	classifyTimeout = 10 * time.Second
	// closeGrace is how long a closing side waits for the peer to read
	// "close" and hang up first, so the peer has read everything sent.
	closeGrace = time.Second
	// controlBacklog bounds the control messages not yet accepted.
	controlBacklog = 4
)

// NewTCP runs the TCP variant on conn, whose TLS handshake completed:
// client is the agent's side. The Conn closes conn when it is closed.
func NewTCP(conn *tls.Conn, client bool, cfg TCPConfig) (Conn, error) {
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 30 * time.Second
	}
	if cfg.MaxIncomingStreams == 0 {
		cfg.MaxIncomingStreams = 4
	}
	if cfg.StreamWindow == 0 {
		cfg.StreamWindow = 2 << 20
	}
	yc := yamux.DefaultConfig()
	yc.LogOutput = io.Discard
	yc.EnableKeepAlive = cfg.KeepAlive > 0
	if yc.EnableKeepAlive {
		yc.KeepAliveInterval = cfg.KeepAlive
	}
	yc.ConnectionWriteTimeout = max(cfg.IdleTimeout, 10*time.Second)
	yc.MaxIncomingStreams = cfg.MaxIncomingStreams
	// A fixed window: go-yamux v5.1.0's auto-tuning, when it grows a
	// window, sends only the growth and drops the update it had computed
	// before (sendWindowUpdate overwrites delta), so the two sides' views
	// of the window drift apart until a busy stream stalls. With the
	// initial window at the maximum it never grows, and that path never
	// runs. e2e TestAgentOverTCP stalled within 6-25 MiB without this on a
	// loaded machine.
	yc.InitialStreamWindowSize = max(cfg.StreamWindow, yc.InitialStreamWindowSize)
	yc.MaxStreamWindowSize = yc.InitialStreamWindowSize

	c := &tcpConn{
		client:   client,
		tls:      conn,
		counted:  &countingConn{Conn: conn, start: time.Now()},
		idle:     cfg.IdleTimeout,
		streams:  make(chan Stream),
		controls: make(chan string, controlBacklog),
	}
	var err error
	if client {
		c.sess, err = yamux.Client(c.counted, yc, nil)
	} else {
		c.sess, err = yamux.Server(c.counted, yc, nil)
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	c.ctx, c.cancel = context.WithCancelCause(context.Background())
	c.acceptDone = make(chan struct{})
	// Armed once assigned: checkIdle re-arms it.
	c.idleTimer = time.AfterFunc(time.Duration(math.MaxInt64), c.checkIdle)
	c.idleTimer.Reset(c.idle / 4)
	c.wg.Add(2)
	go c.acceptLoop()
	go c.monitor()
	return c, nil
}

type tcpConn struct {
	client  bool
	tls     *tls.Conn
	counted *countingConn
	sess    *yamux.Session
	idle    time.Duration

	ctx    context.Context
	cancel context.CancelCauseFunc

	streams  chan Stream // accepted streams, classified as not control
	controls chan string // control messages other than close

	acceptDone  chan struct{}  // acceptLoop returned
	classifiers sync.WaitGroup // streams being classified
	wg          sync.WaitGroup // acceptLoop, monitor, closer
	idleTimer   *time.Timer

	closeOnce sync.Once
	local     atomic.Pointer[quic.ApplicationError] // our CloseWithError
	peer      atomic.Pointer[quic.ApplicationError] // the peer's "close"
	timedOut  atomic.Bool                           // closed for idleness
	sessErr   error                                 // why AcceptStream stopped; set before acceptDone closes
}

// countingConn counts the reads from the connection and when the last
// one was, for Received and the idle timeout.
type countingConn struct {
	net.Conn
	start    time.Time
	reads    atomic.Uint64
	lastRead atomic.Int64 // nanoseconds since start
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.reads.Add(1)
		c.lastRead.Store(int64(time.Since(c.start)))
	}
	return n, err
}

func (c *tcpConn) checkIdle() {
	silent := time.Since(c.counted.start) - time.Duration(c.counted.lastRead.Load())
	if silent >= c.idle {
		c.timedOut.Store(true)
		c.sess.Close()
		return
	}
	select {
	case <-c.sess.CloseChan():
	default:
		c.idleTimer.Reset(max(c.idle-silent, c.idle/4))
	}
}

func (c *tcpConn) acceptLoop() {
	defer c.wg.Done()
	defer close(c.acceptDone)
	for n := 0; ; n++ {
		st, err := c.sess.AcceptStream()
		if err != nil {
			c.sessErr = err
			return
		}
		c.classifiers.Add(1)
		go c.classify(st, !c.client && n == 0)
	}
}

// classify tells a new stream's kind. The agent's first stream is its
// authentication (auth), any later one a control message. Of the streams
// the proxy opens, one whose first byte is 0x00 carries a control message,
// any other is a tunnel.
func (c *tcpConn) classify(st *yamux.Stream, auth bool) {
	defer c.classifiers.Done()
	s := &tcpStream{s: st, conn: c}
	st.SetReadDeadline(time.Now().Add(classifyTimeout))
	first, err := s.readFirst()
	if err != nil {
		st.Reset()
		return
	}
	if auth || (c.client && first != 0) {
		st.SetReadDeadline(time.Time{})
		select {
		case c.streams <- s:
		case <-c.sess.CloseChan():
			st.Reset()
		}
		return
	}
	msg, err := wire.ReadMessage(io.LimitReader(s, 4+wire.MaxControlLen))
	st.Close()
	if err != nil {
		return
	}
	if name, rest, _ := strings.Cut(msg, "\n"); name == ControlClose {
		code, reason, err := parseClose(rest)
		if err != nil {
			code, reason = wire.CodeProtocol, "malformed close message: "+err.Error()
		}
		c.peer.CompareAndSwap(nil, &quic.ApplicationError{Remote: true, ErrorCode: code, ErrorMessage: reason})
		// The peer waits for us to hang up, having read all it sent.
		c.sess.Close()
		return
	}
	select {
	case c.controls <- msg:
	default: // the agent reads them at once; a flood is dropped
	}
}

// parseClose parses the body of a close message: the code in decimal, a
// newline and the reason.
func parseClose(body string) (quic.ApplicationErrorCode, string, error) {
	num, reason, _ := strings.Cut(body, "\n")
	code, err := strconv.ParseUint(num, 10, 62)
	if err != nil {
		return 0, "", fmt.Errorf("code %q: not a decimal number below 2^62", clip(num, 32))
	}
	return quic.ApplicationErrorCode(code), reason, nil
}

// closeMessage is the control message for code and reason, the reason
// cut to fit wire.MaxControlLen.
func closeMessage(code quic.ApplicationErrorCode, reason string) string {
	head := ControlClose + "\n" + strconv.FormatUint(uint64(code), 10) + "\n"
	return head + clip(reason, wire.MaxControlLen-len(head))
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// monitor waits for the session to end and ends the Conn's context with
// the cause: our close, the peer's close message, its go-away code, an
// idle timeout or the connection's error.
func (c *tcpConn) monitor() {
	defer c.wg.Done()
	<-c.sess.CloseChan()
	<-c.acceptDone
	// A close message that arrived before the end is read by now: its
	// stream ended cleanly, and yamux keeps such streams' data.
	c.classifiers.Wait()
	c.idleTimer.Stop()
	var cause error
	var ga *yamux.GoAwayError
	switch {
	case c.local.Load() != nil:
		cause = c.local.Load()
	case c.peer.Load() != nil:
		cause = c.peer.Load()
	case c.timedOut.Load():
		cause = &quic.IdleTimeoutError{}
	case errors.As(c.sessErr, &ga) && ga.Remote:
		cause = &quic.ApplicationError{Remote: true, ErrorCode: quic.ApplicationErrorCode(ga.ErrorCode)}
	case errors.Is(c.sessErr, yamux.ErrKeepAliveTimeout):
		cause = &quic.IdleTimeoutError{}
	default:
		cause = fmt.Errorf("tcp connection closed: %w", c.sessErr)
	}
	c.tls.Close()
	c.cancel(cause)
}

func (c *tcpConn) OpenStream(ctx context.Context) (Stream, error) {
	st, err := c.sess.OpenStream(ctx)
	if err != nil {
		return nil, c.sessionErr(err)
	}
	return &tcpStream{s: st, conn: c}, nil
}

func (c *tcpConn) AcceptStream(ctx context.Context) (Stream, error) {
	select {
	case st := <-c.streams:
		return st, nil
	case <-ctx.Done():
		if c.ctx.Err() != nil {
			return nil, context.Cause(c.ctx)
		}
		return nil, ctx.Err()
	case <-c.ctx.Done():
		return nil, context.Cause(c.ctx)
	}
}

// SendControl sends msg on a new stream, within a second.
func (c *tcpConn) SendControl(msg string) error {
	ctx, cancel := context.WithTimeout(c.ctx, time.Second)
	defer cancel()
	st, err := c.sess.OpenStream(ctx)
	if err != nil {
		return c.sessionErr(err)
	}
	st.SetWriteDeadline(time.Now().Add(time.Second))
	if len(msg) > wire.MaxControlLen {
		st.Reset()
		return fmt.Errorf("control message of %d bytes: the limit is %d", len(msg), wire.MaxControlLen)
	}
	if err := wire.WriteMessage(st, msg); err != nil {
		st.Reset()
		return c.sessionErr(err)
	}
	return st.CloseWrite()
}

func (c *tcpConn) AcceptControl(ctx context.Context) (string, error) {
	select {
	case msg := <-c.controls:
		return msg, nil
	case <-ctx.Done():
		return "", ctx.Err()
	case <-c.ctx.Done():
		return "", context.Cause(c.ctx)
	}
}

// CloseWithError sends the close message and, once the peer hung up or
// closeGrace passed, a go-away with code, and closes the connection. The
// Context ends when all of that is done.
func (c *tcpConn) CloseWithError(code quic.ApplicationErrorCode, reason string) error {
	c.closeOnce.Do(func() {
		c.local.CompareAndSwap(nil, &quic.ApplicationError{ErrorCode: code, ErrorMessage: reason})
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			select {
			case <-c.sess.CloseChan():
				return // already closed: by the peer, or for idleness
			default:
			}
			if c.SendControl(closeMessage(code, reason)) == nil {
				t := time.NewTimer(closeGrace)
				select {
				case <-c.sess.CloseChan():
				case <-t.C:
				}
				t.Stop()
			}
			c.sess.CloseWithError(uint32(code))
		}()
	})
	return nil
}

// sessionErr turns an error of a stream or of the session into the
// Conn's cause once the session has ended, and a yamux stream reset into a
// *quic.StreamError.
func (c *tcpConn) sessionErr(err error) error {
	var se *yamux.StreamError
	if errors.As(err, &se) {
		return &quic.StreamError{ErrorCode: quic.StreamErrorCode(se.ErrorCode), Remote: se.Remote}
	}
	if c.sess.IsClosed() {
		<-c.ctx.Done() // monitor is about to set the cause
		return context.Cause(c.ctx)
	}
	return err
}

func (c *tcpConn) Context() context.Context { return c.ctx }
func (c *tcpConn) LocalAddr() net.Addr      { return c.tls.LocalAddr() }
func (c *tcpConn) RemoteAddr() net.Addr     { return c.tls.RemoteAddr() }
func (c *tcpConn) TLS() tls.ConnectionState { return c.tls.ConnectionState() }
func (c *tcpConn) RTT() time.Duration       { return c.sess.RTT() }
func (c *tcpConn) Received() uint64         { return c.counted.reads.Load() }
func (c *tcpConn) Transport() string        { return TCP }

// Wait returns once the Conn is closed and every goroutine of it has
// ended, within a second of the close.
func (c *tcpConn) Wait() {
	<-c.ctx.Done()
	c.wg.Wait()
}

// tcpStream is a yamux stream as a Stream.
type tcpStream struct {
	s    *yamux.Stream
	conn *tcpConn
	// peeked holds the first byte, read to tell a stream's kind; Read
	// returns it first.
	peeked  []byte
	peekBuf [1]byte
}

// readFirst reads the stream's first byte into peeked.
func (s *tcpStream) readFirst() (byte, error) {
	n, err := s.s.Read(s.peekBuf[:])
	if n == 0 {
		if err == nil {
			err = io.ErrNoProgress
		}
		return 0, err
	}
	s.peeked = s.peekBuf[:n]
	return s.peekBuf[0], nil
}

// Peek blocks until the stream has bytes, ended or failed, and returns
// none: yamux has no peek, but a read of nothing waits for data and takes
// none (and grants no window, so a lost window update cannot stall it).
func (s *tcpStream) Peek(p []byte) (int, error) {
	if len(s.peeked) > 0 {
		return copy(p, s.peeked), nil
	}
	_, err := s.s.Read(nil)
	if err != nil && err != io.EOF {
		err = s.conn.sessionErr(err)
	}
	return 0, err
}

func (s *tcpStream) Read(p []byte) (int, error) {
	if len(s.peeked) > 0 {
		n := copy(p, s.peeked)
		s.peeked = s.peeked[n:]
		return n, nil
	}
	n, err := s.s.Read(p)
	if err != nil && err != io.EOF {
		err = s.conn.sessionErr(err)
	}
	return n, err
}

func (s *tcpStream) Write(p []byte) (int, error) {
	n, err := s.s.Write(p)
	if err != nil {
		err = s.conn.sessionErr(err)
	}
	return n, err
}

func (s *tcpStream) Close() error { return s.s.CloseWrite() }

// CancelRead and CancelWrite reset the stream with code. yamux has one
// reset for both halves: a half that ended cleanly (a FIN sent, or one
// received) is left as it is, so the peer still reads all that was written
// before a FIN and sees its own writes fail, as after QUIC's STOP_SENDING.
func (s *tcpStream) CancelRead(code quic.StreamErrorCode)  { s.s.ResetWithError(uint32(code)) }
func (s *tcpStream) CancelWrite(code quic.StreamErrorCode) { s.s.ResetWithError(uint32(code)) }

func (s *tcpStream) SetDeadline(t time.Time) error      { return s.s.SetDeadline(t) }
func (s *tcpStream) SetReadDeadline(t time.Time) error  { return s.s.SetReadDeadline(t) }
func (s *tcpStream) SetWriteDeadline(t time.Time) error { return s.s.SetWriteDeadline(t) }
