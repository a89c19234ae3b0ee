package front

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/relay"
)

// HTTP/2 on the TLS listener (RFC 9113). A CONNECT is one stream: the
// tunnel's bytes are the stream's DATA frames, the request body up and the
// response body down, so one TLS connection carries many tunnels, each
// with its own flow control. net/http's server serves the protocol; the
// handler cannot hijack a stream, so it relays until the tunnel ends.
//
// How the ends map (section 8.5):
//
//   - The client's END_STREAM is the end of the request body: the tunnel's
//     write half is closed (a FIN towards the destination).
//   - The destination's FIN ends the response: the handler returns and
//     net/http sends END_STREAM. net/http cannot keep reading a stream whose
//     response is complete, so if the client had not ended its side yet it
//     is told to stop with RST_STREAM(NO_ERROR) (section 8.1), and the
//     tunnel's write half is reset, not closed: the destination must not
//     take a client side that was cut for one that ended.
//   - Any error (a reset from the client, the tunnel failing, the idle
//     timeout, the shutdown deadline) resets the stream (RST_STREAM
//     INTERNAL_ERROR) and the tunnel: a cut transfer never looks complete.

// DefaultMaxConcurrentStreams is Config.MaxConcurrentStreams' zero value.
const DefaultMaxConcurrentStreams = 1000

// errDestinationFirst ends an HTTP/2 tunnel whose destination ended its
// side while the client's was still open.
var errDestinationFirst = errors.New("destination ended first: HTTP/2 cannot keep the client's side open, so it was cut (RST_STREAM NO_ERROR to the client, a reset towards the destination)")

// h2Stream is one HTTP/2 stream as a relay.Conn: reads come from the
// request body, writes go to the response, each flushed at once.
type h2Stream struct {
	*relay.BodyReader // over readBody
	body              io.Reader
	w                 http.ResponseWriter
	rc                *http.ResponseController

	wroteEOF atomic.Bool // the response is complete: the handler may end the stream
	readEOF  atomic.Bool // the client ended its side
	cut      atomic.Bool // the read side was cut because the response ended first
}

// readBody reads the request body, noting its end and telling a read cut
// by CloseWrite.
func (s *h2Stream) readBody(p []byte) (int, error) {
	n, err := s.body.Read(p)
	switch {
	case err == io.EOF:
		s.readEOF.Store(true)
	case err != nil && s.cut.Load():
		err = errDestinationFirst
	}
	return n, err
}

// readerFunc is a function as an io.Reader.
type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func (s *h2Stream) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if err != nil {
		return n, err
	}
	return n, s.rc.Flush()
}

// CloseWrite is the destination's FIN: the response is complete. A client
// still sending is cut, so that the relay ends and the handler can return.
func (s *h2Stream) CloseWrite() error {
	s.wroteEOF.Store(true)
	if !s.readEOF.Load() {
		s.cut.Store(true)
		// A read deadline in the past ends the request body: what the
		// client sent is read, then an error instead of waiting.
		s.rc.SetReadDeadline(time.Unix(1, 0))
	}
	return nil
}

// Close: the relay ended cleanly; the handler ends the stream.
func (s *h2Stream) Close() error { return nil }

// Abort resets the stream unless its response was complete: a write
// deadline in the past makes net/http send RST_STREAM and fail the writes
// pending and to come; a read deadline in the past fails the reads.
func (s *h2Stream) Abort() {
	if !s.wroteEOF.Load() {
		s.rc.SetWriteDeadline(time.Unix(1, 0))
	}
	s.rc.SetReadDeadline(time.Unix(1, 0))
}

// connectH2 serves a CONNECT over HTTP/2 once the tunnel is open: it
// relays until both directions have ended and returns, which ends the
// stream, or panics with http.ErrAbortHandler, which resets it.
func (h *Handler) connectH2(w http.ResponseWriter, r *http.Request, agentID string, id *auth.Identity, target string, start time.Time, tunnel relay.Conn, release func()) {
	rc := http.NewResponseController(w)
	var (
		rt   atomic.Pointer[relay.Tunnel]
		done = make(chan relay.Result, 1)
	)
	// Listed before the client hears it is open.
	o := relayOpen(Tunnel{Agent: agentID, Client: r.RemoteAddr, Identity: id.String(), Destination: target, Method: http.MethodConnect, Since: start}, id, &rt)
	h.open.add(o)
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		tunnel.Abort()
		h.tunnelEnded(h.log, o, r.Proto, release, relay.Result{Err: fmt.Errorf("client gone: %w", err)})
		panic(http.ErrAbortHandler)
	}
	s := &h2Stream{body: r.Body, w: w, rc: rc}
	s.BodyReader = relay.NewBodyReader(readerFunc(s.readBody))
	rt.Store(relay.StartIdle(s, tunnel, h.idle, func(res relay.Result) { done <- res }))
	h.watch(o)
	// The handler's goroutine waits: the ResponseWriter must not outlive
	// it, and net/http ends the stream when it returns.
	res := <-done
	h.tunnelEnded(h.log, o, r.Proto, release, res)
	if res.Err != nil && !s.wroteEOF.Load() {
		panic(http.ErrAbortHandler) // RST_STREAM, never a clean end
	}
}

// h2AbsoluteForm gives an HTTP/2 request that is not a CONNECT the
// absolute URL an HTTP/1.1 proxy request carries in its request line. An
// HTTP/2 client sends a proxy request as :scheme, :authority (the origin)
// and :path (RFC 9113 8.3.1); net/http puts :authority in r.Host and :path
// in r.URL, and :scheme only in whether r.TLS is set, which it then sets
// for every request of a TLS connection: schemeHandler notes it first. A
// :path already in absolute form is taken as it is.
func h2AbsoluteForm(r *http.Request) *http.Request {
	if r.ProtoMajor != 2 || r.Method == http.MethodConnect || r.URL.IsAbs() {
		return r
	}
	u := *r.URL
	u.Scheme, _ = r.Context().Value(schemeKey{}).(string)
	if u.Scheme == "" {
		// Not served by Serve: TLS to the origin rather than a request
		// meant for it in clear text.
		u.Scheme = "https"
	}
	u.Host = r.Host
	r2 := new(http.Request)
	*r2 = *r
	r2.URL = &u
	return r2
}

// schemeKey holds an HTTP/2 request's :scheme, "http" or "https".
type schemeKey struct{}

// schemeHandler notes the :scheme of each HTTP/2 request before net/http
// sets r.TLS on all of them (see h2AbsoluteForm). It wraps the handler
// net/http gives its HTTP/2 server (see wrapH2).
type schemeHandler struct{ h http.Handler }

func (s schemeHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	scheme := "http"
	if r.TLS != nil { // set by the HTTP/2 server for :scheme https only
		scheme = "https"
	}
	s.h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), schemeKey{}, scheme)))
}

// BaseContext passes on the connection's context, as net/http's HTTP/2
// server asks the handler it is given for it.
func (s schemeHandler) BaseContext() context.Context {
	if bc, ok := s.h.(interface{ BaseContext() context.Context }); ok {
		return bc.BaseContext()
	}
	return context.Background()
}

// wrapH2 puts schemeHandler in front of the handler of hs's HTTP/2
// connections. Call it once hs.Serve has configured HTTP/2, before a
// connection is served: from the listener's first Accept.
func wrapH2(hs *http.Server) {
	next := hs.TLSNextProto["h2"]
	if next == nil {
		return // no HTTP/2 (GODEBUG=http2server=0)
	}
	hs.TLSNextProto["h2"] = func(s *http.Server, c *tls.Conn, h http.Handler) {
		next(s, c, schemeHandler{h})
	}
}
