package front

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strconv"
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
	if err != nil && c.tls != nil && !c.tls.ConnectionState().HandshakeComplete {
		c.handshakeFailed(err)
		return n, err
	}
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

// handshakeFailed does what net/http does for a *tls.Conn it can see: a
// client that spoke plain HTTP to the TLS port is told so, and other
// handshake failures (scanners, wrong CA) are logged at debug level only.
func (c *watchConn) handshakeFailed(err error) {
	if c.logged.Swap(true) {
		return
	}
	var re tls.RecordHeaderError
	if errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader[:]) {
		re.Conn.Write([]byte("HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"))
		re.Conn.Close()
		c.h.cfg.Metrics.Request("invalid", http.StatusBadRequest)
		c.h.log.Info("request refused", "client", c.RemoteAddr().String(), "status", http.StatusBadRequest,
			"reason", "plain HTTP sent to the TLS proxy port")
		c.h.cfg.Audit.Record(audit.Entry{Client: c.RemoteAddr().String(), Status: http.StatusBadRequest,
			Outcome: wire.Outcome(http.StatusBadRequest), Reason: "plain HTTP sent to the TLS proxy port"})
		return
	}
	c.h.log.Debug("TLS handshake error", "client", c.RemoteAddr().String(), "error", err)
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

// watchListener wraps every accepted connection in a watchConn, after TLS
// if tlsConf is set.
type watchListener struct {
	net.Listener
	h       *Handler
	tlsConf *tls.Config
}

func (l *watchListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	wc := &watchConn{Conn: c, h: l.h}
	wc.armed.Store(true)
	if l.tlsConf != nil {
		wc.tls = tls.Server(c, l.tlsConf)
		wc.Conn = wc.tls
	}
	return wc, nil
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
	return hs.Serve(&watchListener{Listener: ln, h: h.h, tlsConf: hs.TLSConfig})
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
	if wc, ok := c.(*watchConn); ok {
		return context.WithValue(ctx, watchKey{}, wc)
	}
	return ctx
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
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
	}
	if w, ok := hs.Handler.(*watchedHandler); ok {
		w.h.Drain(sctx)
	}
	<-errc
	return nil
}
