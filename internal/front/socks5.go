package front

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reverse-http/reverse-http/internal/audit"
	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/relay"
	"github.com/reverse-http/reverse-http/internal/run"
	"github.com/reverse-http/reverse-http/internal/socks5"
	"github.com/reverse-http/reverse-http/internal/wire"
)

// SOCKS5Method is the method of a SOCKS5 tunnel in /tunnels, the audit log
// and the "tunnel closed" log line; a refused request names its command
// ("SOCKS5-BIND"), and one refused before its request was read "SOCKS5".
const SOCKS5Method = "SOCKS5-CONNECT"

// SOCKS5Kind is the kind label of reverse_http_tunnels_total for
// everything that arrives on the SOCKS5 port.
const SOCKS5Kind = "socks5"

// SOCKS5 serves SOCKS5 clients (RFC 1928 CONNECT, RFC 1929
// username/password: user = agent ID, password = noauth or a client
// token) on a listener of its own, through a Handler: the same
// authentication, allowlist, per-client limit, dialer (so an lb or a
// proxy that does not hold the agent forwards to the one that does),
// metrics, audit log and open-tunnel set as the HTTP front. Domain names
// go to the agent unresolved.
type SOCKS5 struct {
	h   *Handler
	ln  net.Listener
	log *slog.Logger

	wg sync.WaitGroup // connection goroutines
	mu sync.Mutex
	// Connections in their handshake, closed at the shutdown deadline;
	// as many as were accepted and have not opened a tunnel yet, each
	// for at most the handshake timeout and the dial.
	handshaking map[net.Conn]struct{}
}

// NewSOCKS5 serves SOCKS5 on ln through h; Run runs it. log should name
// the component.
func NewSOCKS5(h *Handler, ln net.Listener, log *slog.Logger) *SOCKS5 {
	return &SOCKS5{h: h, ln: ln, log: log, handshaking: map[net.Conn]struct{}{}}
}

// ListenSOCKS5 binds addr for a SOCKS5 front through h, served once Run
// runs; log gets the component name. An empty addr is no SOCKS5 front:
// nil, nil. A bind error is a *run.ListenError for "socks5".
func ListenSOCKS5(addr string, h *Handler, log *slog.Logger) (*SOCKS5, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, &run.ListenError{Part: "socks5", Err: err}
	}
	return NewSOCKS5(h, ln, log.With("component", "socks5")), nil
}

// Close closes the listener of a SOCKS5 that will not Run.
func (s *SOCKS5) Close() error { return s.ln.Close() }

// Addr is the listener's address.
func (s *SOCKS5) Addr() net.Addr { return s.ln.Addr() }

// Run serves until ctx ends; then it closes the listener at once, lets the
// handshakes under way finish (Handler.Drain waits for them and for the
// tunnels they open), and returns once every goroutine it started has
// ended. At the Handler's shutdown deadline (Drain) handshakes still
// under way are closed. The tunnels' relays are the Handler's: Drain
// waits for them.
func (s *SOCKS5) Run(ctx context.Context) error {
	stopAccept := context.AfterFunc(ctx, func() { s.ln.Close() })
	defer stopAccept()
	closeAtDeadline := context.AfterFunc(s.h.stop, s.closeHandshakes)
	defer closeAtDeadline()
	err := s.serve()
	s.wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (s *SOCKS5) serve() error {
	var delay time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of descriptors and the like: wait and try again, as
			// net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("socks5: accept failed; retrying", "error", err, "retry_in", delay.String())
			time.Sleep(delay)
			continue
		}
		delay = 0
		// Counted before the goroutine starts, so that Drain cannot
		// miss a connection accepted as it begins.
		s.h.open.running.Add(1)
		s.h.open.handshakes.Add(1)
		s.wg.Add(1)
		go s.serveConn(c)
	}
}

func (s *SOCKS5) serveConn(c net.Conn) {
	defer s.wg.Done()
	defer s.h.open.running.Add(-1)
	s.mu.Lock()
	s.handshaking[c] = struct{}{}
	s.mu.Unlock()
	opened := false
	if s.h.stop.Err() == nil {
		opened = s.handshake(c)
	} // else accepted after the shutdown deadline: closed below
	s.mu.Lock()
	delete(s.handshaking, c)
	s.mu.Unlock()
	s.h.open.handshakes.Add(-1)
	if !opened {
		c.Close()
	}
}

func (s *SOCKS5) closeHandshakes() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.handshaking {
		c.Close()
	}
}

// socksRequest is what the log lines and the audit log say of one
// connection.
type socksRequest struct {
	c      net.Conn
	client string
	start  time.Time
	agent  string
	id     *auth.Identity // once authenticated
	method string
	target string
}

// handshake serves one connection up to its tunnel; it reports whether a
// tunnel opened, which then owns c.
func (s *SOCKS5) handshake(c net.Conn) bool {
	r := &socksRequest{c: c, client: c.RemoteAddr().String(), start: time.Now(), method: "SOCKS5"}
	timeout := s.h.readHeaderTimeout()
	c.SetDeadline(r.start.Add(timeout))
	// Bytes a client sends ahead of the replies (its request behind its
	// greeting, its first tunnel bytes behind the request) stay here
	// and go to the tunnel first.
	br := bufio.NewReaderSize(c, 1024)

	methods, err := socks5.ReadGreeting(br)
	if err != nil {
		s.readFailed(r, "greeting", err, timeout, false)
		return false
	}
	if !bytes.Contains(methods, []byte{socks5.MethodUserPass}) {
		socks5.WriteMethod(c, socks5.MethodNoAcceptable)
		s.refuse(r, http.StatusProxyAuthRequired, -1,
			fmt.Sprintf("the client offers no username/password authentication (methods % x, want 02): user = agent ID, password = token or noauth", methods))
		return false
	}
	if err := socks5.WriteMethod(c, socks5.MethodUserPass); err != nil {
		return false
	}
	user, pass, err := socks5.ReadUserPass(br)
	if err != nil {
		s.readFailed(r, "username/password", err, timeout, false)
		return false
	}
	r.agent = user
	id, err := s.h.authorize(auth.Credentials{User: user, Password: pass})
	if err != nil {
		// RFC 1929: a status other than 0, then the connection closes.
		socks5.WriteAuthStatus(c, false)
		s.refuse(r, http.StatusProxyAuthRequired, -1, err.Error())
		return false
	}
	r.id = id
	if err := socks5.WriteAuthStatus(c, true); err != nil {
		return false
	}
	req, err := socks5.ReadRequest(br)
	if err != nil {
		if req.Cmd != 0 {
			r.method = "SOCKS5-" + socks5.CmdName(req.Cmd)
		}
		s.readFailed(r, "request", err, timeout, true)
		return false
	}
	r.method = "SOCKS5-" + socks5.CmdName(req.Cmd)
	r.target = req.Dest()
	if req.Cmd != socks5.CmdConnect {
		s.refuse(r, http.StatusBadRequest, int(socks5.CommandNotSupported),
			"SOCKS5 "+socks5.CmdName(req.Cmd)+" is not supported: only CONNECT")
		return false
	}
	host, port, err := wire.SplitHostPort(r.target)
	if err != nil {
		s.refuse(r, http.StatusBadRequest, int(socks5.GeneralFailure), err.Error())
		return false
	}
	if reason := s.h.destinationDenied(id, host, port, r.target); reason != "" {
		s.refuse(r, http.StatusForbidden, int(socks5.NotAllowed), reason)
		return false
	}
	release := func() {}
	if s.h.clients != nil {
		addr := clientAddr(r.client)
		if !s.h.clients.acquire(addr) {
			s.refuse(r, http.StatusTooManyRequests, int(socks5.GeneralFailure), fmt.Sprintf(
				"client %s has %d tunnels and requests open, its limit (--limits.tunnels-per-client)", addr, s.h.cfg.MaxTunnelsPerClient))
			return false
		}
		release = func() { s.h.clients.release(addr) }
	}
	c.SetDeadline(time.Time{})

	// The dialer sees the client as the HTTP front's would: a node that
	// forwards the tunnel sends these credentials to the owning proxy.
	dctx, cancel := context.WithCancel(context.WithValue(context.Background(), clientKey{},
		client{proxyAuth: auth.BasicHeader(user, pass)}))
	stopCut := context.AfterFunc(s.h.stop, cancel)
	tunnel, err := s.h.cfg.Dialer.Dial(dctx, user, r.target)
	stopCut()
	cancel()
	if err != nil {
		release()
		status := wire.Status(err)
		s.refuse(r, status, int(socksReply(status, err)), err.Error())
		return false
	}
	s.h.cfg.Metrics.Opened(time.Since(r.start))
	s.h.cfg.Metrics.Request(SOCKS5Kind, http.StatusOK)
	s.h.cfg.Metrics.ClientTunnel(id.MetricLabel())
	// Listed before the client hears it is open, as the HTTP front's are.
	var rt atomic.Pointer[relay.Tunnel]
	o := relayOpen(Tunnel{Agent: user, Client: r.client, Identity: r.id.String(), Destination: r.target, Method: SOCKS5Method, Since: r.start}, r.id, &rt)
	s.h.open.add(o)
	if err := socks5.WriteReply(c, socks5.Succeeded); err != nil {
		tunnel.Close()
		s.h.tunnelEnded(s.log, o, "", release, relay.Result{Err: fmt.Errorf("client gone: %w", err)})
		return false
	}
	s.h.open.running.Add(1)
	rt.Store(relay.StartIdle(relay.NewTCP(c, br), relay.AsConn(tunnel), s.h.idle, func(res relay.Result) {
		defer s.h.open.running.Add(-1)
		s.h.tunnelEnded(s.log, o, "", release, res)
	}))
	s.h.watch(o)
	return true
}

// socksReply is the SOCKS5 reply for a tunnel the HTTP front would have
// answered with status.
func socksReply(status int, err error) socks5.Reply {
	switch status {
	case http.StatusForbidden:
		return socks5.NotAllowed
	case http.StatusServiceUnavailable:
		return socks5.NetworkUnreachable
	case http.StatusGatewayTimeout:
		return socks5.TTLExpired
	case http.StatusBadGateway:
		if refusedByDestination(err) {
			return socks5.ConnectionRefused
		}
		return socks5.HostUnreachable
	}
	return socks5.GeneralFailure
}

// refusedByDestination reports whether the agent said the destination
// refused the connection. The protocol's 502 covers refused, unreachable
// and unresolvable alike (the reference agent sends 503 for all), so the
// only sign is the agent's reason, which ends with the dial error's text
// ("dial 10.0.0.7:22: connect: connection refused"), passed on unchanged
// by a proxy that forwarded the tunnel.
func refusedByDestination(err error) bool {
	var we *wire.Error
	return errors.As(err, &we) && strings.HasSuffix(we.Reason, "connection refused")
}

// readFailed handles a message that could not be read: a client that
// hung up is logged at debug level, one too slow or that sent garbage is
// refused. inRequest: a malformed request gets a reply, as RFC 1928 has
// one (a malformed greeting or username/password message has none).
func (s *SOCKS5) readFailed(r *socksRequest, what string, err error, timeout time.Duration, inRequest bool) {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		s.refuse(r, http.StatusRequestTimeout, -1, fmt.Sprintf(
			"SOCKS5 handshake not complete within %s (--http-proxy.read-header-timeout), at its %s: connection closed", timeout, what))
	case errors.Is(err, socks5.ErrAddressType):
		s.refuse(r, http.StatusBadRequest, int(socks5.AddressNotSupported), "SOCKS5 request: "+err.Error())
	case errors.Is(err, socks5.ErrVersion), errors.Is(err, socks5.ErrMalformed):
		rep := -1
		if inRequest {
			rep = int(socks5.GeneralFailure)
		}
		s.refuse(r, http.StatusBadRequest, rep, "SOCKS5 "+what+": "+err.Error())
	default:
		s.log.Debug("socks5: client left during the handshake", "client", r.client, "agent", clip(r.agent), "at", what, "error", err)
	}
}

// refuse sends reply rep (none if rep < 0), then logs, counts and audits
// the refusal as the HTTP front does a status; status is the HTTP status
// the HTTP front would have answered.
func (s *SOCKS5) refuse(r *socksRequest, status int, rep int, reason string) {
	attrs := []any{"agent", clip(r.agent), "client", r.client, "identity", r.id.String(), "method", r.method,
		"destination", clip(r.target), "status", status}
	if rep >= 0 {
		socks5.WriteReply(r.c, socks5.Reply(rep))
		attrs = append(attrs, "socks_reply", fmt.Sprintf("0x%02x", rep))
	}
	s.h.cfg.Metrics.Request(SOCKS5Kind, status)
	s.log.Info("request refused", append(attrs, "reason", reason)...)
	s.h.cfg.Audit.Record(audit.Entry{Agent: r.agent, Client: r.client, Identity: r.id.String(), Method: r.method, Destination: r.target,
		Status: status, Outcome: wire.Outcome(status), Reason: reason, Duration: time.Since(r.start)})
}
