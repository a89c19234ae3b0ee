// Package front is the client-facing HTTP proxy: CONNECT tunnels and
// absolute-form requests, authenticated with Proxy-Authorization Basic where
// the user name picks the agent.
package front

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reverse-http/reverse-http/internal/allow"
	"github.com/reverse-http/reverse-http/internal/audit"
	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/metrics"
	"github.com/reverse-http/reverse-http/internal/relay"
	"github.com/reverse-http/reverse-http/internal/wire"
)

// ForwardedHeader marks a request forwarded by another reverse-http node
// (an lb, or a proxy that does not hold the agent). A node that receives it
// serves only agents connected to itself: forwarding takes one hop at most.
const ForwardedHeader = "Reverse-Http-Forwarded"

type clientKey struct{}

type client struct {
	proxyAuth string
	forwarded bool
	// certName is the client's name when its TLS client certificate
	// authenticated it: a forwarding node vouches for it (see
	// SignForwardedFor), since there is no password to forward.
	certName string
}

// CertClient returns the name of the clients-file client whose request
// ctx belongs to when its certificate authenticated it, else "".
func CertClient(ctx context.Context) string {
	c, _ := ctx.Value(clientKey{}).(client)
	return c.certName
}

// ProxyAuthorization returns the Proxy-Authorization header of the client
// whose request ctx belongs to, so a tunnel can be forwarded on its behalf.
func ProxyAuthorization(ctx context.Context) string {
	c, _ := ctx.Value(clientKey{}).(client)
	return c.proxyAuth
}

// Forwarded reports whether ctx's request was forwarded by another node.
func Forwarded(ctx context.Context) bool {
	c, _ := ctx.Value(clientKey{}).(client)
	return c.forwarded
}

// Dialer opens a tunnel to hostport through an agent. Errors should wrap a
// wire error kind (wire.ErrAgentOffline, ...) so they map to a status.
type Dialer interface {
	Dial(ctx context.Context, agentID, hostport string) (net.Conn, error)
}

// Config configures a Handler.
type Config struct {
	Auth   auth.Authenticator
	Allow  *allow.List // nil or empty allows every destination
	Dialer Dialer
	// Metrics, if not nil, records requests and tunnels.
	Metrics *metrics.Metrics
	// Audit, if not nil, gets one line per tunnel and absolute-form
	// request when it ends, refused ones included.
	Audit *audit.Log

	// MaxTunnelsPerClient is how many CONNECT tunnels and absolute-form
	// requests one client IP address may have open at once; past it the
	// client gets 429. Requests forwarded by another node were counted
	// there and are not counted again if their ForwardedHeader is signed
	// with ClusterKey (see SignForwarded). Zero means no limit.
	MaxTunnelsPerClient int
	// ClusterKey, if not empty, verifies the ForwardedHeader of requests
	// from other nodes. Without it every request counts against
	// MaxTunnelsPerClient.
	ClusterKey []byte
	// TunnelIdleTimeout ends a CONNECT tunnel, or a connection through an
	// agent that serves absolute-form requests, that moved no byte either
	// way for this long. Zero means never.
	TunnelIdleTimeout time.Duration
	// MaxTransports bounds the connection pools kept for absolute-form
	// requests, one per agent (see transports). Zero means
	// DefaultMaxTransports.
	MaxTransports int
	// MaxHeaderBytes bounds a request's header in NewServer; larger ones
	// get 431. Zero means the constant MaxHeaderBytes (64 KiB).
	MaxHeaderBytes int
	// ReadHeaderTimeout bounds reading a request's header in NewServer;
	// a client that is slower is disconnected. Zero means the constant
	// ReadHeaderTimeout (10s).
	ReadHeaderTimeout time.Duration
	// MaxConcurrentStreams bounds the streams (tunnels and requests) one
	// HTTP/2 connection may have open at once on a TLS listener; the
	// client waits for one to end before it opens another. Zero means
	// DefaultMaxConcurrentStreams.
	MaxConcurrentStreams int
	// BodyIdleTimeout cuts an absolute-form request whose body sends no
	// byte for this long (answered 408). A body that trickles in is
	// served however slowly it comes. Zero means [BodyIdleTimeout].
	BodyIdleTimeout time.Duration
}

// Handler serves proxy clients.
type Handler struct {
	cfg Config
	log *slog.Logger

	transports *transports       // per agent, for absolute-form requests
	clients    *clientCounts     // nil without MaxTunnelsPerClient
	idle       *relay.IdleCloser // nil without TunnelIdleTimeout
	open       openSet           // tunnels and requests open now
	// stop ends at the shutdown deadline: dials still under way give up.
	stop    context.Context
	stopAll context.CancelFunc

	// Config.Auth and Config.Allow, or what SetAuth and SetAllow put in
	// their place.
	authn     atomic.Pointer[auth.Authenticator]
	allowList atomic.Pointer[allow.List]
}

// SetAuth checks the requests that arrive from now on with a; open
// tunnels stay open. For a configuration reload.
func (h *Handler) SetAuth(a auth.Authenticator) { h.authn.Store(&a) }

// SetAllow checks the destinations of requests that arrive from now on
// against l (nil or empty allows all); open tunnels stay open. For a
// configuration reload.
func (h *Handler) SetAllow(l *allow.List) { h.allowList.Store(l) }

// New makes a Handler.
func New(cfg Config, log *slog.Logger) *Handler {
	if cfg.BodyIdleTimeout <= 0 {
		cfg.BodyIdleTimeout = BodyIdleTimeout
	}
	h := &Handler{cfg: cfg, log: log, idle: relay.NewIdleCloser(cfg.TunnelIdleTimeout)}
	h.stop, h.stopAll = context.WithCancel(context.Background())
	h.SetAuth(cfg.Auth)
	h.SetAllow(cfg.Allow)
	h.transports = newTransports(cfg.MaxTransports, h.newTransport)
	if cfg.MaxTunnelsPerClient > 0 {
		h.clients = newClientCounts(cfg.MaxTunnelsPerClient)
	}
	return h
}

// Server limits, as the issue and common sense ask. MaxHeaderBytes and
// ReadHeaderTimeout are the defaults of the Config fields of those names.
const (
	MaxHeaderBytes    = 64 << 10
	ReadHeaderTimeout = 10 * time.Second
	IdleTimeout       = 120 * time.Second
	// BodyIdleTimeout is the default Config.BodyIdleTimeout. net/http's
	// ReadHeaderTimeout ends with the headers, and a ReadTimeout would cut
	// long uploads and CONNECT tunnels; without this a client that stops
	// sending a body it announced holds a tunnel to the origin forever.
	BodyIdleTimeout = 30 * time.Second
)

// NewServer wraps h in an http.Server with header limits and timeouts:
// those of h's Config if h is a *Handler, else the defaults. tlsConf, if
// not nil, makes it serve HTTPS (the proxy itself over TLS), HTTP/2 too:
// ALPN offers h2 and http/1.1, and a client that picks h2 opens each
// tunnel and request as a stream of one connection (see h2.go). Plain
// HTTP is HTTP/1.1 only. Serve it with Serve.
func NewServer(addr string, h http.Handler, tlsConf *tls.Config, log *slog.Logger) *http.Server {
	maxHeader, readHeader, maxStreams := MaxHeaderBytes, ReadHeaderTimeout, DefaultMaxConcurrentStreams
	var connCtx func(context.Context, net.Conn) context.Context
	if fh, ok := h.(*Handler); ok {
		maxHeader, readHeader = fh.maxHeaderBytes(), fh.readHeaderTimeout()
		if fh.cfg.MaxConcurrentStreams > 0 {
			maxStreams = fh.cfg.MaxConcurrentStreams
		}
		// Serve wraps the connections so the requests net/http refuses
		// itself are logged too (see watchConn).
		h, connCtx = &watchedHandler{fh}, connContext
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	if tlsConf != nil {
		tlsConf = withALPN(tlsConf)
		protos.SetHTTP2(true)
	}
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ConnContext:       connCtx,
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: readHeader,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    maxHeader,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		Protocols:         &protos,
		// No ReadTimeout or WriteTimeout: a stream is a tunnel that may
		// stay open for days. IdleTimeout ends a connection without
		// streams; MaxHeaderBytes bounds a stream's header block too.
		HTTP2: &http.HTTP2Config{MaxConcurrentStreams: maxStreams},
	}
}

// withALPN returns a copy of c that offers h2 and http/1.1 by ALPN. A
// GetConfigForClient (tlsconf's reloadable configurations answer every
// handshake with one) is wrapped so that the configuration it returns
// offers them too.
func withALPN(c *tls.Config) *tls.Config {
	c = c.Clone()
	c.NextProtos = []string{"h2", "http/1.1"}
	if get := c.GetConfigForClient; get != nil {
		c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			cc, err := get(hello)
			if cc == nil || err != nil {
				return cc, err
			}
			cc = cc.Clone()
			cc.NextProtos = []string{"h2", "http/1.1"}
			return cc, nil
		}
	}
	return c
}

// EvictVia drops the connection pools of absolute-form requests whose
// connections were forwarded through node (a proxy that is draining or
// gone): the next request is routed again. It returns how many.
func (h *Handler) EvictVia(node string) int { return h.transports.evictVia(node) }

// Forget drops the connection pool kept for agentID's absolute-form
// requests; call it when the agent disconnects.
func (h *Handler) Forget(agentID string) { h.transports.forget(agentID) }

// ServeHTTP authenticates, checks the allowlist and serves a CONNECT or an
// absolute-form request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.open.running.Add(1)
	defer h.open.running.Add(-1)
	start := time.Now()
	r = h2AbsoluteForm(r)
	target, err := destination(r)
	if err != nil {
		h.fail(w, r, start, "", nil, target, http.StatusBadRequest, err.Error())
		return
	}
	agentID, id, vouched, err := h.authenticate(r, target)
	if err != nil {
		w.Header().Set("Proxy-Authenticate", `Basic realm="reverse-http"`)
		h.fail(w, r, start, agentID, nil, target, http.StatusProxyAuthRequired, err.Error())
		return
	}
	cl := client{
		proxyAuth: r.Header.Get("Proxy-Authorization"),
		forwarded: r.Header.Get(ForwardedHeader) != "",
	}
	if id.Kind == auth.KindCert {
		cl.certName = id.Name
	}
	r = r.WithContext(context.WithValue(r.Context(), clientKey{}, cl))
	host, port, _ := wire.SplitHostPort(target)
	if reason := h.destinationDenied(id, host, port, target); reason != "" {
		h.fail(w, r, start, agentID, id, target, http.StatusForbidden, reason)
		return
	}
	release := func() {}
	if h.clients != nil && !h.countedElsewhere(r, agentID, vouched) {
		addr := clientAddr(r.RemoteAddr)
		if !h.clients.acquire(addr) {
			h.fail(w, r, start, agentID, id, target, http.StatusTooManyRequests, fmt.Sprintf(
				"client %s has %d tunnels and requests open, its limit (--limits.tunnels-per-client)", addr, h.cfg.MaxTunnelsPerClient))
			return
		}
		release = func() { h.clients.release(addr) }
	}
	if r.Method == http.MethodConnect {
		h.connect(w, r, agentID, id, target, release)
		return
	}
	defer release()
	h.forward(w, r, agentID, id, target)
}

// countedElsewhere reports whether r was forwarded by another node that
// counted it against its client's limit already: only if the node proves
// it is a cluster member by signing its ForwardedHeader (vouched, as
// authenticate verified it).
func (h *Handler) countedElsewhere(r *http.Request, agentID string, vouched forwarded) bool {
	switch {
	case !vouched.present:
		return false
	case vouched.err == nil:
		return true
	case len(h.cfg.ClusterKey) > 0:
		h.log.Warn("forwarded request not verified: counted against its sender's --limits.tunnels-per-client",
			"client", r.RemoteAddr, "agent", clip(agentID), "reason", vouched.err.Error())
	}
	return false
}

// forwarded is what a request's ForwardedHeader proved.
type forwarded struct {
	present  bool
	err      error  // why it does not prove a cluster member sent it; nil: it does
	certName string // the client certificate's name it vouches for, if any
}

// destination returns the host:port a request wants.
func destination(r *http.Request) (string, error) {
	if r.Method == http.MethodConnect {
		if _, _, err := wire.SplitHostPort(r.Host); err != nil {
			return r.Host, fmt.Errorf("CONNECT needs host:port: %v", err)
		}
		return r.Host, nil
	}
	if !r.URL.IsAbs() || r.URL.Host == "" {
		return "", errors.New("this is a proxy: send CONNECT host:port or an absolute-form request (GET http://host/path)")
	}
	var port string
	switch r.URL.Scheme {
	case "http":
		port = "80"
	case "https":
		port = "443"
	default:
		return "", fmt.Errorf("unsupported scheme %q", r.URL.Scheme)
	}
	target := r.URL.Host
	if p := r.URL.Port(); p == "" {
		target = net.JoinHostPort(r.URL.Hostname(), port)
	}
	if _, _, err := wire.SplitHostPort(target); err != nil {
		return target, err
	}
	return target, nil
}

// authenticate returns the agent ID r asks for, who its client is, and
// what its ForwardedHeader proved (verified once, here: the MAC covers the
// agent ID).
func (h *Handler) authenticate(r *http.Request, target string) (string, *auth.Identity, forwarded, error) {
	var fw forwarded
	certName := ""
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		// --http-proxy.tls.file.client-ca verified it (and its CRL).
		certName = r.TLS.VerifiedChains[0][0].Subject.CommonName
	}
	hdr := r.Header.Get("Proxy-Authorization")
	if hdr == "" {
		if certName != "" {
			// A certificate may stand for a client of the clients
			// file; the agent ID still comes from a user name.
			return "", nil, fw, errors.New("proxy authentication required: user = agent ID (the client certificate stands for the password when the clients file names its CN)")
		}
		return "", nil, fw, errors.New("proxy authentication required: user = agent ID, password = token or noauth")
	}
	user, pass, err := auth.ParseBasic(hdr)
	if err != nil {
		return "", nil, fw, err
	}
	if v := r.Header.Get(ForwardedHeader); v != "" {
		fw.present = true
		fw.certName, fw.err = checkForwardedFor(h.cfg.ClusterKey, v, user, target, time.Now())
		if fw.err == nil && certName == "" {
			// A cluster member that authenticated the client by its
			// certificate vouches for its name.
			certName = fw.certName
		}
	}
	id, err := h.authorize(auth.Credentials{User: user, Password: pass, CertName: certName})
	if err != nil {
		return user, nil, fw, err
	}
	return user, id, fw, nil
}

// authorize checks a client's credentials, user = agent ID and password =
// noauth, a client token or NAME:SECRET (or a client certificate), for
// every front (HTTP Basic on HTTP/1.1 and HTTP/2, SOCKS5
// username/password), and returns who the client is. Errors wrap
// auth.ErrUnauthorized.
func (h *Handler) authorize(c auth.Credentials) (*auth.Identity, error) {
	return (*h.authn.Load()).Client(c)
}

// destinationDenied says why a client may not reach host:port, or "":
// the node's allowlist and the client's own destinations (from the
// clients file or its token) must both allow it. The agent's allowlist
// applies after them, on the agent.
func (h *Handler) destinationDenied(id *auth.Identity, host string, port int, target string) string {
	if !h.allowList.Load().Allowed(host, port) {
		return "destination " + target + " is not allowed by the proxy's allowlist"
	}
	if !id.AllowedDestination(host, port) {
		return "destination " + target + " is not among the destinations of " + id.String()
	}
	return ""
}

// fail answers with a status and a one-line plain-text reason, and logs it.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, start time.Time, agentID string, id *auth.Identity, target string, status int, reason string) {
	kind := "forward"
	if r.Method == http.MethodConnect {
		kind = "connect"
	}
	h.cfg.Metrics.Request(kind, status)
	h.log.Info("request refused", "agent", clip(agentID), "client", r.RemoteAddr, "identity", id.String(), "method", r.Method, "proto", r.Proto,
		"destination", clip(target), "status", status, "reason", reason)
	h.cfg.Audit.Record(audit.Entry{Agent: agentID, Client: r.RemoteAddr, Identity: id.String(), Method: r.Method, Destination: target,
		Status: status, Outcome: wire.Outcome(status), Reason: reason, Duration: time.Since(start)})
	// Bytes pipelined behind a refused CONNECT are not a request, and a
	// client that failed to authenticate or sent garbage is not kept. Not
	// over HTTP/2: a refusal ends its stream, and "Connection: close"
	// would make net/http end the connection, with every other stream.
	closeConn := r.ProtoMajor == 1 &&
		(r.Method == http.MethodConnect || status == http.StatusProxyAuthRequired || status == http.StatusBadRequest)
	writeError(w, status, reason, closeConn)
}

// maxLoggedID bounds an agent ID (a client's Basic user) or a refused
// destination in a log line: either may be as long as the header limit
// allows, and one request must not cost a 64 KiB log line. slog quotes what
// is left, so control characters cannot forge a line either.
const maxLoggedID = 256

func clip(id string) string {
	if len(id) <= maxLoggedID {
		return id
	}
	return fmt.Sprintf("%s... (%d bytes)", id[:maxLoggedID], len(id))
}

// writeError answers with a status and a one-line plain-text reason.
// With closeConn the client's connection is closed after it.
func writeError(w http.ResponseWriter, status int, reason string, closeConn bool) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if closeConn {
		w.Header().Set("Connection", "close")
	}
	w.WriteHeader(status)
	fmt.Fprintln(w, reason)
}

// connect serves a CONNECT; release is called once the tunnel has ended
// or failed to open.
func (h *Handler) connect(w http.ResponseWriter, r *http.Request, agentID string, id *auth.Identity, target string, release func()) {
	start := time.Now()
	// Not r.Context(): net/http cancels it when the client half-closes
	// right behind its CONNECT, which is legitimate. The dial timeout
	// bounds the wait for a client that left.
	// Not r.Context() (see above), but cut at the shutdown deadline.
	dctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	stopCut := context.AfterFunc(h.stop, cancel)
	tunnel, err := h.cfg.Dialer.Dial(dctx, agentID, target)
	stopCut()
	cancel()
	if err != nil {
		release()
		h.fail(w, r, start, agentID, id, target, wire.Status(err), err.Error())
		return
	}
	h.cfg.Metrics.Opened(time.Since(start))
	h.cfg.Metrics.Request("connect", http.StatusOK)
	h.cfg.Metrics.ClientTunnel(id.MetricLabel())
	if r.ProtoMajor == 2 {
		h.connectH2(w, r, agentID, id, target, start, relay.AsConn(tunnel), release)
		return
	}
	rc := http.NewResponseController(w)
	conn, brw, err := rc.Hijack()
	conn = unwatch(conn)
	if err != nil {
		tunnel.Close()
		release()
		h.fail(w, r, start, agentID, id, target, http.StatusInternalServerError, "cannot take over the connection: "+err.Error())
		return
	}
	conn.SetDeadline(time.Time{})
	// Listed before the client hears it is open.
	var rt atomic.Pointer[relay.Tunnel]
	o := relayOpen(Tunnel{Agent: agentID, Client: r.RemoteAddr, Identity: id.String(), Destination: target, Method: http.MethodConnect, Since: start}, id, &rt)
	h.open.add(o)
	if _, err := conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		tunnel.Close()
		conn.Close()
		h.tunnelEnded(h.log, o, r.Proto, release, relay.Result{Err: fmt.Errorf("client gone: %w", err)})
		return
	}
	// The relay runs in goroutines of its own and this one, whose stack
	// grew deep in net/http and the dial, ends. Nothing of the request is
	// kept: an open tunnel costs its two connections and two small stacks.
	h.open.running.Add(1)
	proto := r.Proto
	rt.Store(relay.StartIdle(relay.NewTCP(conn, brw.Reader), relay.AsConn(tunnel), h.idle, func(res relay.Result) {
		defer h.open.running.Add(-1)
		h.tunnelEnded(h.log, o, proto, release, res)
	}))
	h.watch(o)
}

// tunnelEnded books the end of o's tunnel (a CONNECT over proto, or a
// SOCKS5 one with proto ""): it leaves the open set, release gives its
// client's place back, and it is counted, logged to log and audited.
func (h *Handler) tunnelEnded(log *slog.Logger, o *open, proto string, release func(), res relay.Result) {
	h.open.remove(o)
	release()
	h.cfg.Metrics.Closed(res.AToB, res.BToA)
	t := o.info
	outcome := "ok"
	if res.Err != nil {
		outcome = res.Err.Error()
	}
	attrs := []any{"agent", t.Agent, "client", t.Client, "identity", t.Identity, "method", t.Method}
	if proto != "" {
		attrs = append(attrs, "proto", proto)
	}
	log.Info("tunnel closed", append(attrs, "destination", t.Destination, "bytes_up", res.AToB, "bytes_down", res.BToA,
		"duration", time.Since(t.Since).Round(time.Millisecond).String(), "outcome", outcome)...)
	e := audit.Entry{Agent: t.Agent, Client: t.Client, Identity: t.Identity, Method: t.Method, Destination: t.Destination,
		Status: http.StatusOK, Outcome: wire.OutcomeOK, BytesUp: res.AToB, BytesDown: res.BToA, Duration: time.Since(t.Since)}
	if res.Err != nil {
		e.Reason = res.Err.Error()
	}
	h.cfg.Audit.Record(e)
}

// forward serves an absolute-form request through the agent, reusing
// tunnels as keep-alive connections to the origin. A request upgraded to
// another protocol (101, a WebSocket) is relayed until either side ends.
func (h *Handler) forward(w http.ResponseWriter, r *http.Request, agentID string, id *auth.Identity, target string) {
	start := time.Now()
	if len(r.TransferEncoding) > 0 {
		// net/http has dropped a Content-Length sent along with it (RFC
		// 9112 6.3), and the body is forwarded re-chunked, so the origin
		// sees what we saw. RFC 9112 6.1 still asks to close the
		// connection after such a request: a front end that believed the
		// Content-Length would not agree with us where the next request
		// starts. net/http no longer tells whether there was one, so every
		// chunked request ends its connection.
		w.Header().Set("Connection", "close")
	}
	sw := &statusWriter{ResponseWriter: w}
	var body *idleBody
	if r.Body != nil && r.Body != http.NoBody {
		body = &idleBody{ReadCloser: r.Body, rc: http.NewResponseController(w), timeout: h.cfg.BodyIdleTimeout}
		sw.body = &countingBody{ReadCloser: body}
		r.Body = sw.body
		defer body.finish()
	}
	o := &open{
		info:  Tunnel{Agent: agentID, Client: r.RemoteAddr, Identity: id.String(), Destination: target, Method: r.Method, Since: start},
		id:    id,
		bytes: sw.bytes,
	}
	// ended is why the request was ended from outside (revocation, the
	// shutdown deadline), for the log when the answer was under way.
	var ended atomic.Pointer[error]
	if c, _ := r.Context().Value(watchKey{}).(*watchConn); c != nil {
		inner := c.Conn
		o.abort = func(err error) {
			ended.CompareAndSwap(nil, &err)
			inner.Close()
		}
	} else if r.ProtoMajor == 2 {
		// One stream of a connection that may carry other clients'
		// requests: canceling the request ends the round trip to the
		// agent, and the stream is reset (or answered, if nothing was
		// sent yet); the connection stays.
		ctx, cancel := context.WithCancelCause(r.Context())
		defer cancel(nil)
		r = r.WithContext(ctx)
		o.abort = func(err error) {
			ended.CompareAndSwap(nil, &err)
			cancel(err)
		}
	}
	h.cfg.Metrics.ClientTunnel(id.MetricLabel())
	h.open.add(o)
	h.watch(o)
	defer h.open.remove(o)
	defer func() {
		up, down := sw.bytes()
		attrs := []any{"agent", agentID, "client", r.RemoteAddr, "identity", id.String(), "method", r.Method, "proto", r.Proto,
			"url", r.URL.Redacted(), "status", sw.status, "bytes_up", up, "bytes_down", down,
			"duration", time.Since(start).Round(time.Millisecond).String()}
		if sw.reason != "" {
			attrs = append(attrs, "reason", sw.reason)
		} else if err := ended.Load(); err != nil {
			attrs = append(attrs, "reason", (*err).Error())
		}
		// Metrics first: whoever reads the log line finds them counted.
		// The origin's own answer, whatever its status, is a success.
		own := sw.status
		if sw.reason == "" {
			own = http.StatusOK
		}
		h.cfg.Metrics.Request("forward", own)
		if u := sw.upgraded.Load(); u != nil {
			h.cfg.Metrics.Bytes(u.up.Load(), u.down.Load())
		}
		h.log.Info("request forwarded", attrs...)
		// The origin's status, if it answered, is not the proxy's outcome.
		proxyStatus := http.StatusOK
		if sw.reason != "" {
			proxyStatus = sw.status
		}
		h.cfg.Audit.Record(audit.Entry{Agent: agentID, Client: r.RemoteAddr, Identity: id.String(), Method: r.Method, Destination: target,
			Status: sw.status, Outcome: wire.Outcome(proxyStatus), Reason: sw.reason,
			BytesUp: up, BytesDown: down, Duration: time.Since(start)})
	}()
	errorHandler := func(w http.ResponseWriter, r *http.Request, err error) {
		status := wire.Status(err)
		var we *wire.Error
		reason := err.Error()
		cause := context.Cause(r.Context())
		var revoked *revokedError
		switch {
		case errors.As(cause, &revoked):
			status, reason = http.StatusForbidden, cause.Error()
		case errors.Is(cause, errShutdown):
			status, reason = http.StatusServiceUnavailable, cause.Error()
		case errors.Is(err, context.Canceled):
			status = 499 // client went away; only logged
		case errors.Is(err, relay.ErrIdle):
			status = http.StatusGatewayTimeout
			reason = fmt.Sprintf("idle timeout: no bytes either way for %s (--limits.tunnel-idle-timeout)", h.idle.Timeout())
		case errors.As(err, &we):
			reason = we.Reason
		}
		closeConn := false
		if body != nil && body.timedOut.Load() {
			status, closeConn = http.StatusRequestTimeout, true
			reason = fmt.Sprintf("request body: no data for %s", h.cfg.BodyIdleTimeout)
		}
		sw.reason = reason
		writeError(w, status, reason, closeConn)
	}

	e := h.transports.get(agentID)
	if e == nil {
		// No pool for this agent yet: dial first, so that only an agent
		// that answers gets one.
		conn, err := h.cfg.Dialer.Dial(r.Context(), agentID, target)
		if err != nil {
			errorHandler(sw, r, err)
			return
		}
		raw := conn
		conn = h.idle.Conn(conn)
		e = h.transports.add(agentID, conn, target)
		e.noteVia(raw)
		defer e.dropFirst(conn)
	}
	defer h.transports.done(e)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL = pr.In.URL
			pr.Out.Host = pr.In.Host
			pr.Out.RequestURI = ""
			pr.Out.Header.Del(ForwardedHeader)
		},
		Transport:     e.t,
		FlushInterval: -1,
		ErrorHandler:  errorHandler,
		ErrorLog:      slog.NewLogLogger(h.log.Handler(), slog.LevelDebug),
	}
	rp.ServeHTTP(sw, r)
}

// newTransport makes the connection pool of e's agent.
func (h *Handler) newTransport(e *transportEntry) *http.Transport {
	agentID := e.id
	return &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			if c := e.take(addr); c != nil {
				return c, nil
			}
			c, err := h.cfg.Dialer.Dial(ctx, agentID, addr)
			if err != nil {
				return nil, err
			}
			e.noteVia(c)
			return h.idle.Conn(c), nil
		},
		Proxy:                 nil,
		ForceAttemptHTTP2:     false,
		MaxIdleConnsPerHost:   maxIdlePerAgent,
		IdleConnTimeout:       transportIdle,
		ResponseHeaderTimeout: 0,
		DisableCompression:    true,
		TLSHandshakeTimeout:   10 * time.Second,
	}
}

// idleBody is a request body whose every read must bring data within
// timeout: the deadline of the client's connection is moved forward before
// each read and cleared at the end of the body. The transport may still
// read it after the handler returned (the origin answered early); from
// then on (done) it leaves the connection's deadline alone, since net/http
// is setting it for the next request.
type idleBody struct {
	io.ReadCloser
	rc       *http.ResponseController
	timeout  time.Duration
	timedOut atomic.Bool

	mu   sync.Mutex
	done bool
}

func (b *idleBody) Read(p []byte) (int, error) {
	b.setDeadline(time.Now().Add(b.timeout))
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			b.timedOut.Store(true)
		} else {
			b.setDeadline(time.Time{})
		}
	}
	return n, err
}

func (b *idleBody) setDeadline(t time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.done {
		_ = b.rc.SetReadDeadline(t)
	}
}

// finish stops later reads from touching the deadline; call it before the
// handler returns. A deadline it leaves set bounds net/http's discarding of
// an unread rest of the body; the next request sets its own.
func (b *idleBody) finish() {
	b.mu.Lock()
	b.done = true
	b.mu.Unlock()
}

// statusWriter records the status and body size of a forwarded response,
// and the bytes relayed after an upgrade.
type statusWriter struct {
	http.ResponseWriter
	status   int
	n        atomic.Int64
	reason   string                       // why the proxy answered with an error, if it did
	body     *countingBody                // the request body, if there is one
	upgraded atomic.Pointer[countingConn] // the client's connection after a 101
}

// bytes returns the bytes relayed up (request body, then the upgraded
// connection's) and down (response body, then the upgraded connection's).
func (s *statusWriter) bytes() (up, down int64) {
	up, down = 0, s.n.Load()
	if s.body != nil {
		up = s.body.n.Load()
	}
	if u := s.upgraded.Load(); u != nil {
		up += u.up.Load()
		down += u.down.Load()
	}
	return up, down
}

// Hijack takes over the client's connection. httputil.ReverseProxy does
// that only to relay a 101 Switching Protocols, which it writes itself:
// the status is recorded here, and the connection counts the bytes.
func (s *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(s.ResponseWriter).Hijack()
	c = unwatch(c)
	if err != nil {
		return nil, nil, err
	}
	if s.status == 0 {
		s.status = http.StatusSwitchingProtocols
	}
	u := &countingConn{Conn: c}
	s.upgraded.Store(u)
	return u, brw, nil
}

// countingBody counts the bytes read from a request body.
type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// countingConn counts the bytes read from (up) and written to (down) a
// client connection; both copies of an upgraded connection use it at once.
type countingConn struct {
	net.Conn
	up, down atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.up.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.down.Add(int64(n))
	return n, err
}

// CloseWrite half-closes the connection when it can, so that the end of
// the origin's bytes reaches the client.
func (c *countingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(p)
	s.n.Add(int64(n))
	return n, err
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
