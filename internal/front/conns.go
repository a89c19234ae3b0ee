package front

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reverse-http/reverse-http/internal/audit"
	"github.com/reverse-http/reverse-http/internal/wire"
)

// net/http answers some requests before any handler sees them: a header
// over MaxHeaderBytes gets 431 and a malformed request 400, both written
// straight to the connection, and a client that does not finish its header
// within ReadHeaderTimeout is disconnected without a word. watchConn sits
// between net/http and the client's connection (above TLS, so it sees the
// plain text) to log and count those, like every other refusal.
//
// It watches only while net/http reads a request header: from its
// SetReadDeadline before each header until a handler runs. A handler's
// reads and writes, the response net/http flushes after it returned, the
// rest of a request body it discards, and a hijacked tunnel's bytes are
// never looked at.
// A CONNECT tunnel unwraps it at hijack (see unwatch), so the relay still
// reads the socket itself.
type watchConn struct {
	net.Conn
	h *Handler

	tls       *tls.Conn    // when the listener serves TLS
	inHandler atomic.Int32 // handlers running on this connection
	hijacked  atomic.Bool
	armed     atomic.Bool  // net/http is reading a request header
	served    atomic.Int64 // requests that reached the handler
	// bytes read of the request header being read
	pending atomic.Int64
	logged  atomic.Bool // one refusal line per connection
}

type watchKey struct{}

func (c *watchConn) watching() bool {
	return c.armed.Load() && c.inHandler.Load() == 0 && !c.hijacked.Load()
}

// SetReadDeadline: net/http sets one in the future before it reads each
// request header (the idle timeout, then the header timeout), once the
// previous request is done with. Its other calls outside a handler set
// one in the past or none, to end a pending background read.
func (c *watchConn) SetReadDeadline(t time.Time) error {
	c.rearm(t)
	return c.Conn.SetReadDeadline(t)
}

func (c *watchConn) SetDeadline(t time.Time) error {
	c.rearm(t)
	return c.Conn.SetDeadline(t)
}

func (c *watchConn) rearm(t time.Time) {
	if t.After(time.Now()) && c.inHandler.Load() == 0 && !c.armed.Load() {
		c.pending.Store(0)
		c.armed.Store(true)
	}
}

func (c *watchConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if !c.watching() {
		return n, err
	}
	c.pending.Add(int64(n))
	var ne net.Error
	if err != nil && errors.As(err, &ne) && ne.Timeout() {
		// net/http's only read deadlines outside a handler are the
		// header timeout and, between requests, the idle timeout; an
		// idle keep-alive connection that sent nothing is not refused.
		if c.served.Load() == 0 || c.pending.Load() > 0 {
			c.refused(http.StatusRequestTimeout, c.headerTimeoutReason())
		}
	}
	return n, err
}

// handshakeFailed does what net/http does for a *tls.Conn it handshakes
// itself: a client that spoke plain HTTP to the TLS port is told so, and
// other handshake failures (scanners, wrong CA, no handshake within the
// header timeout) are logged at debug level only.
func (l *watchListener) handshakeFailed(c net.Conn, err error) {
	h := l.h
	var re tls.RecordHeaderError
	if errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader[:]) {
		re.Conn.Write([]byte("HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"))
		h.cfg.Metrics.Request("invalid", http.StatusBadRequest)
		h.log.Info("request refused", "client", c.RemoteAddr().String(), "status", http.StatusBadRequest,
			"reason", "plain HTTP sent to the TLS proxy port")
		h.cfg.Audit.Record(audit.Entry{Client: c.RemoteAddr().String(), Status: http.StatusBadRequest,
			Outcome: wire.Outcome(http.StatusBadRequest), Reason: "plain HTTP sent to the TLS proxy port"})
		return
	}
	h.log.Debug("TLS handshake error", "client", c.RemoteAddr().String(), "error", err)
}

func looksLikeHTTP(hdr []byte) bool {
	switch string(hdr) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO", "CONNE":
		return true
	}
	return false
}

func (c *watchConn) headerTimeoutReason() string {
	d := c.h.readHeaderTimeout()
	if c.pending.Load() == 0 {
		return "no request within " + d.String() + " of connecting (--http-proxy.read-header-timeout): connection closed"
	}
	return "request header not complete within " + d.String() + " (--http-proxy.read-header-timeout): connection closed"
}

func (c *watchConn) Write(p []byte) (int, error) {
	if c.watching() {
		// "HTTP/1.1 431 Request Header Fields Too Large\r\n...\r\n\r\n431 ..."
		if status, reason, ok := netHTTPError(p); ok {
			if status == http.StatusRequestHeaderFieldsTooLarge {
				reason = "request header larger than " + strconv.Itoa(c.h.maxHeaderBytes()) + " bytes (--http-proxy.max-header-bytes)"
			}
			c.refused(status, reason)
		}
	}
	return c.Conn.Write(p)
}

// CloseWrite lets net/http half-close before it hangs up on a refused
// request, so the client reads the answer instead of a reset.
func (c *watchConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// netHTTPError parses the one-write answer net/http gives a request it
// refuses itself.
func netHTTPError(p []byte) (int, string, bool) {
	rest, ok := bytes.CutPrefix(p, []byte("HTTP/1.1 "))
	if !ok {
		if rest, ok = bytes.CutPrefix(p, []byte("HTTP/1.0 ")); !ok {
			return 0, "", false
		}
	}
	if len(rest) < 3 {
		return 0, "", false
	}
	status, err := strconv.Atoi(string(rest[:3]))
	if err != nil || status < 400 || status > 599 {
		return 0, "", false
	}
	reason := http.StatusText(status)
	if _, body, ok := bytes.Cut(rest, []byte("\r\n\r\n")); ok {
		// The body repeats the status line: "400 Bad Request: why".
		body = bytes.TrimPrefix(body, rest[:3])
		body = bytes.TrimPrefix(body, []byte(" "+reason))
		body = bytes.TrimSpace(bytes.TrimPrefix(body, []byte(":")))
		if len(body) > 0 {
			reason += ": " + string(body[:min(len(body), maxLoggedID)])
		}
	}
	return status, reason, true
}

func (c *watchConn) refused(status int, reason string) {
	if c.logged.Swap(true) {
		return
	}
	c.h.cfg.Metrics.Request("invalid", status)
	c.h.log.Info("request refused", "client", c.RemoteAddr().String(), "status", status, "reason", reason,
		"header_bytes", c.pending.Load())
	c.h.cfg.Audit.Record(audit.Entry{Client: c.RemoteAddr().String(), Status: status, Outcome: wire.Outcome(status), Reason: reason})
}

// enter and leave bracket a handler running on the connection.
func (c *watchConn) enter() {
	c.inHandler.Add(1)
	c.served.Add(1)
	c.armed.Store(false)
}

func (c *watchConn) leave() { c.inHandler.Add(-1) }

// unwatch returns the connection a hijacked conn wraps, so the relay reads
// the socket itself; conn is returned as is if it is not watched.
func unwatch(conn net.Conn) net.Conn {
	if c, ok := conn.(*watchConn); ok {
		c.hijacked.Store(true)
		return c.Conn
	}
	return conn
}

// watchListener wraps every accepted connection in a watchConn.
//
// With tlsConf it does the TLS handshake itself first, each in a goroutine
// of its own bounded by the header timeout (as net/http bounds its own), so
// that Accept can hand net/http a connection that negotiated h2 as the
// *tls.Conn net/http serves HTTP/2 on, and one that did not as a watchConn
// over it. An HTTP/2 connection is not watched: net/http refuses nothing
// on it in HTTP/1.1's words, and its streams are the handler's.
type watchListener struct {
	net.Listener
	h       *Handler
	hs      *http.Server
	tlsConf *tls.Config

	// With tlsConf:
	start   sync.Once
	ready   chan net.Conn // handshaken connections, for Accept
	errs    chan error    // the listener's errors, for Accept
	closed  chan struct{} // closed by Close
	stop    sync.Once
	wg      sync.WaitGroup // the accept loop and the handshakes
	mu      sync.Mutex
	pending map[net.Conn]struct{} // in a handshake now; Close closes them
	closing bool
}

func newWatchListener(ln net.Listener, h *Handler, hs *http.Server) *watchListener {
	return &watchListener{Listener: ln, h: h, hs: hs, tlsConf: hs.TLSConfig, ready: make(chan net.Conn), errs: make(chan error),
		closed: make(chan struct{}), pending: make(map[net.Conn]struct{})}
}

func (l *watchListener) Accept() (net.Conn, error) {
	if l.tlsConf == nil {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		wc := &watchConn{Conn: c, h: l.h}
		wc.armed.Store(true)
		return wc, nil
	}
	l.start.Do(func() {
		// hs.Serve has configured HTTP/2 and serves no connection yet.
		wrapH2(l.hs)
		l.wg.Add(1)
		go l.acceptLoop()
	})
	select {
	case c := <-l.ready:
		return c, nil
	case err := <-l.errs:
		return nil, err
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// acceptLoop accepts connections and starts their handshakes until the
// listener fails for good or is closed. Its errors go to Accept, so that
// net/http retries after temporary ones as it does on any listener.
func (l *watchListener) acceptLoop() {
	defer l.wg.Done()
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			select {
			case l.errs <- err:
			case <-l.closed:
				return
			}
			if ne, ok := err.(interface{ Temporary() bool }); ok && ne.Temporary() {
				continue
			}
			return
		}
		l.mu.Lock()
		if l.closing {
			l.mu.Unlock()
			c.Close()
			return
		}
		l.pending[c] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go l.handshake(c)
	}
}

func (l *watchListener) handshake(c net.Conn) {
	defer l.wg.Done()
	tc := tls.Server(c, l.tlsConf)
	tc.SetDeadline(time.Now().Add(l.h.readHeaderTimeout()))
	err := tc.Handshake()
	l.mu.Lock()
	delete(l.pending, c)
	l.mu.Unlock()
	if err != nil {
		l.handshakeFailed(c, err)
		c.Close()
		return
	}
	tc.SetDeadline(time.Time{})
	var conn net.Conn = tc
	if tc.ConnectionState().NegotiatedProtocol != "h2" {
		wc := &watchConn{Conn: tc, h: l.h, tls: tc}
		wc.armed.Store(true)
		conn = wc
	}
	select {
	case l.ready <- conn:
	case <-l.closed:
		tc.Close()
	}
}

// Close closes the listener and the connections still in a handshake, and
// waits until the accept loop and the handshakes have ended.
func (l *watchListener) Close() error {
	err := l.Listener.Close()
	if l.tlsConf == nil {
		return err
	}
	// After Accept's first call has added the accept loop to wg, or
	// instead of it: wg.Add must not run concurrently with wg.Wait below.
	l.start.Do(func() {})
	l.stop.Do(func() {
		close(l.closed)
		l.mu.Lock()
		l.closing = true
		for c := range l.pending {
			c.Close()
		}
		l.mu.Unlock()
	})
	l.wg.Wait()
	return err
}

// Serve serves hs (made by NewServer) on ln until hs is shut down or
// closed, with TLS if hs.TLSConfig is set.
func Serve(hs *http.Server, ln net.Listener) error {
	h, ok := hs.Handler.(*watchedHandler)
	if !ok {
		if hs.TLSConfig != nil {
			return hs.ServeTLS(ln, "", "")
		}
		return hs.Serve(ln)
	}
	return hs.Serve(newWatchListener(ln, h.h, hs))
}

// watchedHandler marks the watchConn of each request busy while h serves
// it, and gives the request the TLS state net/http cannot see through the
// wrapper.
type watchedHandler struct{ h *Handler }

func (w *watchedHandler) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	c, _ := r.Context().Value(watchKey{}).(*watchConn)
	if c == nil {
		w.h.ServeHTTP(rw, r)
		return
	}
	c.enter()
	defer c.leave()
	if c.tls != nil && r.TLS == nil {
		st := c.tls.ConnectionState()
		r.TLS = &st
	}
	w.h.ServeHTTP(rw, r)
}

func connContext(ctx context.Context, c net.Conn) context.Context {
	if c, ok := c.(*watchConn); ok {
		return context.WithValue(ctx, watchKey{}, c)
	}
	return ctx // HTTP/2: its *tls.Conn (see watchListener)
}

func (h *Handler) readHeaderTimeout() time.Duration {
	if h.cfg.ReadHeaderTimeout > 0 {
		return h.cfg.ReadHeaderTimeout
	}
	return ReadHeaderTimeout
}

func (h *Handler) maxHeaderBytes() int {
	if h.cfg.MaxHeaderBytes > 0 {
		return h.cfg.MaxHeaderBytes
	}
	return MaxHeaderBytes
}

// Run serves hs (made by NewServer) on ln until ctx ends, then shuts it
// down: requests in flight and open tunnels get up to timeout, and at the
// deadline those left are closed. It returns once every goroutine the
// Handler started has ended.
func Run(ctx context.Context, hs *http.Server, ln net.Listener, timeout time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- Serve(hs, ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	w, _ := hs.Handler.(*watchedHandler)
	if err := hs.Shutdown(sctx); err != nil {
		// Shutdown waits for HTTP/2 connections until their last stream
		// ends: at the deadline their tunnels are ended first, so that
		// they are logged as closed at the deadline, not as cut.
		if w != nil {
			w.h.stopAll()
			w.h.open.abortAll()
		}
		hs.Close()
	}
	if w != nil {
		w.h.Drain(sctx)
	}
	<-errc
	return nil
}
