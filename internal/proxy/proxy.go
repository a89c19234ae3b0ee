// Package proxy is the proxy role's agent side: it accepts agents over QUIC
// and, where their UDP is blocked, over TLS on TCP (package transport),
// authenticates them, keeps one connection per agent ID and opens tunnels
// to them.
package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/metrics"
	"github.com/reverse-http/reverse-http/internal/relay"
	"github.com/reverse-http/reverse-http/internal/transport"
	"github.com/reverse-http/reverse-http/internal/wire"
)

// Config configures a Server.
type Config struct {
	// ListenAddr is the UDP address agents connect to.
	ListenAddr string
	// TCPListenAddr, if not empty, is the TCP address agents whose UDP is
	// blocked connect to (package transport's TCP variant), with the same
	// TLS configuration and authentication.
	TCPListenAddr string
	// TLS is the server's TLS configuration; NextProtos is set to wire.ALPN.
	TLS *tls.Config
	// Auth checks the agents' credentials.
	Auth auth.Authenticator
	// AuthTimeout bounds the authentication exchange. Zero means 10s.
	AuthTimeout time.Duration
	// DialTimeout bounds opening a tunnel: a stream, the agent's dial of
	// the destination and its answer. Zero means 10s.
	DialTimeout time.Duration
	// IdleTimeout closes an agent connection that was silent this long.
	// Zero means 30s. The agent's own setting applies when it is shorter.
	IdleTimeout time.Duration
	// StatelessResetKey, if not nil, lets this proxy reset connections it
	// does not know (a restarted or failed-over proxy sharing the key makes
	// agents of a dead one reconnect at once instead of after their idle
	// timeout). Nil disables stateless resets.
	StatelessResetKey *quic.StatelessResetKey
	// OnAgent, if set, is called after an agent connected (up) and after
	// its connection ended (!up). It must not block.
	OnAgent func(agentID string, up bool)
	// OnRetire, if set, is called when a connection of agentID is retired
	// (replaced by a newer one, or dropped for another proxy's route): it
	// closes once its open tunnels end, so idle keep-alive connections
	// through it should be closed. It must not block.
	OnRetire func(agentID string)
	// Metrics, if not nil, records agent sessions.
	Metrics *metrics.Metrics
	// AgentIDFromCert, if set, binds agent IDs to client certificates (TLS
	// must require and verify them): an agent whose authenticated ID its
	// certificate does not name is refused with wire.CodeAuthFailed.
	// AgentIDFromCN compares the subject CN, AgentIDFromSAN the DNS SANs
	// and the URI SANs tlsconf.AgentURI makes. Empty means no binding.
	AgentIDFromCert string

	// MaxAgents is how many agents may be connected at once. Past it, a
	// new agent is closed with wire.CodeTooManyAgents once it has
	// authenticated (one that replaces a connection with its own ID is let
	// in). Zero means no limit.
	MaxAgents int
	// MaxTunnelsPerAgent is how many tunnels may be open through one agent
	// at once, those forwarded here by other nodes included (absolute-form
	// keep-alive connections count while they are open). Past it Dial
	// fails with wire.ErrLimit. Zero means no limit.
	MaxTunnelsPerAgent int
	// HandshakesPerSecond is the rate of new agent connections, a token
	// bucket of HandshakeBurst: past it a connection is refused with QUIC's
	// CONNECTION_REFUSED before any TLS work. Zero means no limit.
	HandshakesPerSecond float64
	// HandshakeBurst is the size of that bucket. Zero means twice
	// HandshakesPerSecond (at least 1).
	HandshakeBurst int
	// HandshakesInFlight bounds the new agent connections admitted that
	// have not authenticated or ended yet: past it a connection is refused
	// with CONNECTION_REFUSED before any TLS work. Zero means no bound.
	HandshakesInFlight int

	// DuplicateWindow is how long a replacement of a live agent connection
	// by one from another address is remembered. A second such
	// replacement within it means two agents share the ID: while the
	// connected one answers, newcomers are refused with
	// wire.CodeDuplicate instead of evicting it. Zero means 2 minutes.
	DuplicateWindow time.Duration
	// DuplicateProbe is how long the connected agent is watched for a
	// packet before such a refusal; a silent one is replaced. Zero means
	// 3s (agents send keep-alives every 2s).
	DuplicateProbe time.Duration
}

// Server accepts agents and dials tunnels through them.
type Server struct {
	cfg    Config
	log    *slog.Logger
	ln     *quic.Listener
	tr     *quic.Transport
	tcpLn  net.Listener // nil without TCPListenAddr
	tcpTLS *tls.Config
	mu     sync.RWMutex
	agents map[string]*session
	// retiring are connections out of agents that close when their last
	// tunnel ends (see retire); Run closes them too.
	retiring map[*session]struct{}
	closing  bool // Run is closing: no agent is registered any more
	draining bool // Drain was called: new agents are refused
	// dups remembers agent IDs whose live connection was replaced from
	// another address lately, keyed by authenticated ID only; entries
	// older than DuplicateWindow are dropped once it holds over
	// maxDupEntries, so it is bounded by the IDs replaced in one window.
	dups map[string]*dupState
	wg   sync.WaitGroup
	hs   *handshakeLimiter // admits agent connections; counts failed handshakes
	// authn is Config.Auth, or what SetAuth put in its place.
	authn atomic.Pointer[auth.Authenticator]
}

// SetAuth checks the credentials of agents that authenticate from now on
// with a; connected agents stay connected. For a configuration reload.
func (s *Server) SetAuth(a auth.Authenticator) { s.authn.Store(&a) }

type session struct {
	id      string
	conn    transport.Conn
	remote  string
	since   time.Time
	tunnels atomic.Int64 // open through this agent now
	// retired, once set, is why the connection is closed when its last
	// tunnel ends: it was replaced by a newer one for its ID, here or at
	// another proxy, and is no longer in Server.agents.
	retired atomic.Pointer[retirement]
	total   atomic.Int64 // tunnels opened through this agent
	// bytes to and from the agent, over all its tunnels so far
	bytesUp, bytesDown atomic.Int64
}

type retirement struct {
	code   quic.ApplicationErrorCode
	reason string
}

// retire closes a's connection with code and reason once its last tunnel
// has ended, at once if none is open: a connection replaced by a newer
// one keeps the tunnels it carries (make-before-break). a must be out of
// s.agents already, so that no new tunnel uses it.
func (s *Server) retire(a *session, code quic.ApplicationErrorCode, reason string) {
	a.retired.CompareAndSwap(nil, &retirement{code, reason})
	if s.cfg.OnRetire != nil {
		s.cfg.OnRetire(a.id)
	}
	if a.tunnels.Load() == 0 {
		a.conn.CloseWithError(code, reason)
		return
	}
	s.log.Info("agent connection replaced: it closes when its open tunnels end",
		"agent", a.id, "remote", a.remote, "transport", a.conn.Transport(), "tunnels", a.tunnels.Load())
}

// tunnelDone counts a tunnel of a as ended, and closes a retired
// connection whose last tunnel it was.
func (a *session) tunnelDone() {
	if a.tunnels.Add(-1) == 0 {
		if r := a.retired.Load(); r != nil {
			a.conn.CloseWithError(r.code, r.reason)
		}
	}
}

// dupState is what the proxy remembers of an agent ID used by two
// connections at once. Guarded by Server.mu.
type dupState struct {
	replacedAt time.Time // the last replacement or refusal
	loggedAt   time.Time // the last time it was logged
}

const maxDupEntries = 1024

// New makes a Server; Listen binds it.
func New(cfg Config, log *slog.Logger) *Server {
	if cfg.AuthTimeout <= 0 {
		cfg.AuthTimeout = 10 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 30 * time.Second
	}
	if cfg.DuplicateWindow <= 0 {
		cfg.DuplicateWindow = 2 * time.Minute
	}
	if cfg.DuplicateProbe <= 0 {
		cfg.DuplicateProbe = 3 * time.Second
	}
	s := &Server{cfg: cfg, log: log, agents: make(map[string]*session), retiring: make(map[*session]struct{}), dups: make(map[string]*dupState)}
	s.SetAuth(cfg.Auth)
	s.hs = newHandshakeLimiter(cfg.HandshakesPerSecond, cfg.HandshakeBurst, cfg.HandshakesInFlight, log, cfg.Metrics)
	return s
}

// QUICConfig is the proxy's QUIC configuration.
func (s *Server) quicConfig() *quic.Config {
	return &quic.Config{
		MaxIdleTimeout:        s.cfg.IdleTimeout,
		HandshakeIdleTimeout:  s.cfg.AuthTimeout,
		MaxIncomingStreams:    1, // the authentication stream; tunnels are opened by us
		MaxIncomingUniStreams: -1,
	}
}

// Listen binds the UDP listener.
func (s *Server) Listen() error {
	tlsConf := s.tlsConfig(wire.ALPN)
	udpAddr, err := net.ResolveUDPAddr("udp", s.cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("agent server: listen on %s: %w", s.cfg.ListenAddr, err)
	}
	udp, err := net.ListenUDP("udp", udpAddr)
	if err != nil {
		return fmt.Errorf("agent server: listen on %s: %w", s.cfg.ListenAddr, err)
	}
	tr := &quic.Transport{Conn: udp, StatelessResetKey: s.cfg.StatelessResetKey}
	tr.ConnContext = s.hs.connContext
	ln, err := tr.Listen(tlsConf, s.quicConfig())
	if err != nil {
		udp.Close()
		return fmt.Errorf("agent server: listen on %s: %w", s.cfg.ListenAddr, err)
	}
	if s.cfg.TCPListenAddr != "" {
		tcpLn, err := net.Listen("tcp", s.cfg.TCPListenAddr)
		if err != nil {
			ln.Close()
			tr.Close()
			return &TCPListenError{Addr: s.cfg.TCPListenAddr, Err: err}
		}
		s.tcpLn, s.tcpTLS = tcpLn, s.tlsConfig(transport.ALPNTCP)
	}
	s.ln, s.tr = ln, tr
	return nil
}

// TCPListenError is a failure to bind the TCP listener for agents.
type TCPListenError struct {
	Addr string
	Err  error
}

func (e *TCPListenError) Error() string {
	return fmt.Sprintf("agent server: listen on %s (TCP): %v", e.Addr, e.Err)
}

func (e *TCPListenError) Unwrap() error { return e.Err }

// tlsConfig is the server TLS configuration with alpn, TLS 1.3 and no
// session tickets.
func (s *Server) tlsConfig(alpn string) *tls.Config {
	adjust := func(c *tls.Config) {
		c.NextProtos = []string{alpn}
		// Agents never resume sessions; a ticket would cost every
		// connection a few KB of memory for nothing.
		c.SessionTicketsDisabled = true
		if c.MinVersion < tls.VersionTLS13 {
			c.MinVersion = tls.VersionTLS13
		}
	}
	tlsConf := s.cfg.TLS.Clone()
	adjust(tlsConf)
	if get := tlsConf.GetConfigForClient; get != nil {
		// A configuration whose certificates are reloaded (tlsconf) answers
		// each handshake with a fresh clone of itself, made before the
		// changes above: make them there too.
		tlsConf.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			c, err := get(hello)
			if c != nil {
				adjust(c)
			}
			return c, err
		}
	}
	return tlsConf
}

// Close releases the listener of a Server that will not Run.
func (s *Server) Close() error {
	if s.ln == nil {
		return nil
	}
	s.ln.Close()
	if s.tcpLn != nil {
		s.tcpLn.Close()
	}
	return s.tr.Close()
}

// Addr is the bound UDP address; Listen must have succeeded.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// TCPAddr is the bound TCP address for agents, nil without one.
func (s *Server) TCPAddr() net.Addr {
	if s.tcpLn == nil {
		return nil
	}
	return s.tcpLn.Addr()
}

// Run accepts agents until ctx ends, then closes every agent connection and
// returns after all goroutines it started have ended.
func (s *Server) Run(ctx context.Context) error {
	if s.ln == nil {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	if s.tcpLn != nil {
		s.log.Info("agent server listening", "address", s.ln.Addr().String(), "tcp_address", s.tcpLn.Addr().String())
	} else {
		s.log.Info("agent server listening", "address", s.ln.Addr().String())
	}
	stop := context.AfterFunc(ctx, func() {
		s.hs.stop()
		s.ln.Close()
		if s.tcpLn != nil {
			s.tcpLn.Close()
		}
	})
	defer stop()
	tcpErr := make(chan error, 1)
	if s.tcpLn != nil {
		s.wg.Go(func() { tcpErr <- s.acceptTCP(ctx) })
	}
	var err error
	for {
		var conn *quic.Conn
		conn, err = s.ln.Accept(ctx)
		if err != nil {
			break
		}
		s.wg.Go(func() { s.serve(ctx, transport.FromQUIC(conn), handshakeDone(conn.Context())) })
	}
	s.ln.Close()
	if s.tcpLn != nil {
		s.tcpLn.Close()
		if terr := <-tcpErr; ctx.Err() == nil && terr != nil {
			err = terr
		}
	}
	closing := time.Now()
	s.mu.Lock()
	s.closing = true
	n := len(s.agents)
	for _, a := range s.agents {
		a.conn.CloseWithError(wire.CodeShutdown, "proxy shutting down")
	}
	// Retired connections still carrying tunnels end with the others.
	for a := range s.retiring {
		a.conn.CloseWithError(wire.CodeShutdown, "proxy shutting down")
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.log.Info("agent connections closed", "agents", n, "took", time.Since(closing).Round(time.Millisecond).String())
	s.tr.Close()
	s.hs.flush()
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("agent server: %w", err)
}

// Drain starts the proxy's drain: from now on new agent connections are
// refused with CodeShutdown. With move, every connected agent is told to
// move (wire.ControlMove), so it connects again, to another proxy, while
// its tunnels here go on; one that cannot take the message is closed
// with CodeShutdown. The connections stay until Run's context ends.
// reason says why, to the agents. Drain returns at once; Run waits for
// the messages to be sent.
func (s *Server) Drain(reason string, move bool) {
	s.mu.Lock()
	if s.draining || s.closing {
		s.draining = true
		s.mu.Unlock()
		return
	}
	s.draining = true
	if !move {
		s.mu.Unlock()
		return
	}
	sessions := make([]*session, 0, len(s.agents))
	for _, a := range s.agents {
		sessions = append(sessions, a)
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		start := time.Now()
		var sent atomic.Int64
		var wg sync.WaitGroup
		sem := make(chan struct{}, 256)
		for _, a := range sessions {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				if err := a.conn.SendControl(wire.ControlMove + "\n" + reason); err != nil {
					// An agent that cannot take the message (one from
					// before it existed) would be unreachable for the
					// whole drain: it reconnects elsewhere only when closed.
					s.log.Debug("move not sent: closing the connection instead", "agent", a.id, "error", err)
					a.conn.CloseWithError(wire.CodeShutdown, "proxy shutting down: connect to another proxy")
					return
				}
				sent.Add(1)
			})
		}
		wg.Wait()
		s.log.Info("draining: agents told to move", "agents", len(sessions), "sent", sent.Load(),
			"took", time.Since(start).Round(time.Millisecond).String())
	}()
}

// acceptTCP accepts agents on the TCP listener until it is closed. A
// connection over the handshake rate is closed before any TLS work; the
// TLS handshake is bounded by AuthTimeout and must pick ALPN
// transport.ALPNTCP.
func (s *Server) acceptTCP(ctx context.Context) error {
	for {
		raw, err := s.tcpLn.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("agent server: accept on %s (TCP): %w", s.tcpLn.Addr(), err)
		}
		done, err := s.hs.admit(time.Now(), raw.RemoteAddr(), false)
		if err != nil {
			raw.Close()
			continue
		}
		s.wg.Go(func() {
			conn, err := s.handshakeTCP(ctx, raw)
			if err != nil {
				done()
				s.hs.fail(time.Now(), raw.RemoteAddr(), transport.TCP, err)
				return
			}
			s.serve(ctx, conn, done)
			// The Conn's own goroutines end within a second of its close;
			// Run returns after them.
			conn.Wait()
		})
	}
}

func (s *Server) handshakeTCP(ctx context.Context, raw net.Conn) (transport.Conn, error) {
	tc := tls.Server(raw, s.tcpTLS)
	hctx, cancel := context.WithTimeout(ctx, s.cfg.AuthTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, err
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != transport.ALPNTCP {
		raw.Close()
		return nil, fmt.Errorf("the agent offered no TLS application protocol %q (got %q): not a reverse-http agent over TCP", transport.ALPNTCP, p)
	}
	return transport.NewTCP(tc, false, transport.TCPConfig{IdleTimeout: s.cfg.IdleTimeout})
}

// serve authenticates a new connection and registers it. handshakeDone
// gives the connection's place among the handshakes in flight back; it
// is called once the connection authenticated or was refused.
func (s *Server) serve(ctx context.Context, conn transport.Conn, handshakeDone func()) {
	remote := conn.RemoteAddr().String()
	s.mu.RLock()
	draining := s.draining
	s.mu.RUnlock()
	if draining {
		handshakeDone()
		// At once: the agent tries again from a new UDP port, which the
		// load balancer may send to another proxy.
		conn.CloseWithError(wire.CodeShutdown, "proxy shutting down: connect to another proxy")
		return
	}
	id, err := s.authenticate(ctx, conn)
	handshakeDone()
	if errors.Is(err, errTooManyAgents) {
		s.refuseAgent(conn, id, err)
		return
	}
	var mismatch *certMismatchError
	if errors.As(err, &mismatch) {
		s.log.Warn("agent refused: its ID does not match its client certificate",
			"agent", id, "remote", remote, "reason", mismatch.msg, "agent_id_from_cert", s.cfg.AgentIDFromCert)
		conn.CloseWithError(wire.CodeAuthFailed, truncate(mismatch.msg, 600))
		s.cfg.Metrics.Session("auth_failed")
		return
	}
	if err != nil {
		s.log.Warn("agent authentication failed", "remote", remote, "error", err)
		code := wire.CodeAuthFailed
		if errors.Is(err, errEmptyID) {
			code = wire.CodeBadRequest
		}
		conn.CloseWithError(code, truncate(err.Error(), 200))
		s.cfg.Metrics.Session("auth_failed")
		return
	}
	if !s.admitDuplicate(ctx, id, remote) {
		conn.CloseWithError(wire.CodeDuplicate, truncate("agent ID "+id+" is in use by a live connection from another address", 200))
		s.cfg.Metrics.Session("duplicate")
		return
	}
	sess := &session{id: id, conn: conn, remote: remote, since: time.Now()}
	s.mu.Lock()
	if s.closing || s.draining {
		// Authenticated after Run closed the agents: refuse it, or its
		// connection would keep Run waiting.
		s.mu.Unlock()
		conn.CloseWithError(wire.CodeShutdown, "proxy shutting down")
		return
	}
	old := s.agents[id]
	if err := s.admit(id); err != nil {
		// Another agent took the last place after ours was checked.
		s.mu.Unlock()
		s.refuseAgent(conn, id, err)
		return
	}
	s.agents[id] = sess
	if old != nil && old.remote != remote && old.conn.Context().Err() == nil {
		s.noteReplaced(id, sess.since)
	}
	s.cfg.Metrics.Session("authenticated")
	s.cfg.Metrics.Transport(conn.Transport(), 1)
	if old != nil {
		s.cfg.Metrics.Transport(old.conn.Transport(), -1)
		s.retiring[old] = struct{}{}
	}
	s.mu.Unlock()
	if old != nil {
		s.log.Warn("agent connection replaced by a new one with the same ID",
			"agent", id, "old_remote", old.remote, "old_transport", old.conn.Transport(),
			"new_remote", remote, "transport", conn.Transport())
		s.retire(old, wire.CodeReplaced, "replaced by a new connection for agent "+id+" from "+remote)
		s.cfg.Metrics.Session("replaced")
	} else {
		s.cfg.Metrics.Agents(1)
	}
	s.log.Info("agent connected", "agent", id, "remote", remote, "transport", conn.Transport())
	if s.cfg.OnAgent != nil {
		s.cfg.OnAgent(id, true)
	}
	s.wg.Add(1)
	context.AfterFunc(conn.Context(), func() {
		defer s.wg.Done()
		s.mu.Lock()
		current := s.agents[id] == sess
		if current {
			delete(s.agents, id)
			s.cfg.Metrics.Agents(-1)
			s.cfg.Metrics.Transport(conn.Transport(), -1)
			s.cfg.Metrics.Session("closed") // a replaced one was counted as such
		}
		delete(s.retiring, sess)
		s.mu.Unlock()
		s.log.Info("agent disconnected", "agent", id, "remote", remote, "transport", conn.Transport(),
			"connected_for", time.Since(sess.since).Round(time.Millisecond).String(),
			"cause", context.Cause(conn.Context()))
		if current && s.cfg.OnAgent != nil {
			s.cfg.OnAgent(id, false)
		}
	})
}

// admitDuplicate decides whether a new connection for id from remote may take the
// ID over. It may, unless the ID's live connection was replaced from
// another address within DuplicateWindow (two agents share the ID and
// would evict each other forever), the current one is from another
// address too, and it still answers: then the current one stays. A
// reconnect from the same address, or one whose predecessor is closed or
// silent, is admitted at once.
func (s *Server) admitDuplicate(ctx context.Context, id, remote string) bool {
	now := time.Now()
	s.mu.RLock()
	old := s.agents[id]
	d := s.dups[id]
	s.mu.RUnlock()
	if old == nil || old.remote == remote || old.conn.Context().Err() != nil {
		return true
	}
	s.mu.RLock()
	flapping := d != nil && now.Sub(d.replacedAt) < s.cfg.DuplicateWindow
	s.mu.RUnlock()
	if !flapping || !answering(ctx, old.conn, s.cfg.DuplicateProbe) {
		return true
	}
	s.mu.Lock()
	s.noteReplaced(id, now) // keep the window open while refusals go on
	d = s.dups[id]
	logIt := d.loggedAt.IsZero() || now.Sub(d.loggedAt) >= s.cfg.DuplicateWindow
	if logIt {
		d.loggedAt = now
	}
	s.mu.Unlock()
	if logIt {
		s.log.Warn("two live agents use the same ID: keeping the connected one and refusing the other while it stays (logged once per window)",
			"agent", id, "connected_remote", old.remote, "refused_remote", remote,
			"window", s.cfg.DuplicateWindow.String())
	}
	return false
}

// noteReplaced records that id's live connection was replaced (or a
// newcomer refused) at t. s.mu must be held.
func (s *Server) noteReplaced(id string, t time.Time) {
	d := s.dups[id]
	if d == nil {
		if len(s.dups) >= maxDupEntries {
			for k, e := range s.dups {
				if t.Sub(e.replacedAt) >= s.cfg.DuplicateWindow {
					delete(s.dups, k)
				}
			}
		}
		d = &dupState{}
		s.dups[id] = d
	}
	d.replacedAt = t
}

// answering reports whether conn receives a packet within d: a live agent
// sends keep-alives, a dead one whose connection has not timed out yet
// sends nothing.
func answering(ctx context.Context, conn transport.Conn, d time.Duration) bool {
	before := conn.Received()
	timer := time.NewTimer(d)
	defer timer.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-conn.Context().Done():
			return false
		case <-timer.C:
			return false
		case <-tick.C:
			if conn.Received() > before {
				return true
			}
		}
	}
}

var errEmptyID = errors.New("empty agent ID")

func (s *Server) authenticate(ctx context.Context, conn transport.Conn) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.AuthTimeout)
	defer cancel()
	stream, err := conn.AcceptStream(ctx)
	if err != nil {
		return "", fmt.Errorf("accept auth stream: %w", err)
	}
	deadline, _ := ctx.Deadline()
	stream.SetDeadline(deadline)
	cred, err := wire.ReadMessage(stream)
	if err != nil {
		stream.CancelRead(wire.StreamCodeAbort)
		stream.CancelWrite(wire.StreamCodeAbort)
		return "", fmt.Errorf("read credential: %w", err)
	}
	if cred == "" {
		return "", errEmptyID
	}
	id, err := (*s.authn.Load()).Agent(cred)
	if err != nil {
		return "", err
	}
	if id == "" {
		return "", errEmptyID
	}
	if s.cfg.AgentIDFromCert != "" {
		if err := checkCertBinding(s.cfg.AgentIDFromCert, conn.TLS(), id); err != nil {
			return id, err
		}
	}
	s.mu.RLock()
	err = s.admit(id)
	s.mu.RUnlock()
	if err != nil {
		return id, err
	}
	if err := wire.WriteMessage(stream, wire.AuthOK); err != nil {
		return "", fmt.Errorf("write auth answer: %w", err)
	}
	stream.Close()
	return id, nil
}

// Session is an agent connected to this proxy.
type Session struct {
	ID    string
	Since time.Time // when it authenticated
}

// AgentInfo describes a connected agent, as /agents lists it.
type AgentInfo struct {
	ID           string    `json:"id"`
	RemoteAddr   string    `json:"remote_addr"`
	ConnectedAt  time.Time `json:"connected_at"`
	TunnelsOpen  int64     `json:"tunnels_open"`
	TunnelsTotal int64     `json:"tunnels_total"`
	BytesUp      int64     `json:"bytes_up"`
	BytesDown    int64     `json:"bytes_down"`
	RTTMillis    float64   `json:"rtt_ms"`
	// Transport is transport.QUIC or transport.TCP.
	Transport string `json:"transport"`
}

// AgentInfos returns the connected agents, sorted by ID.
func (s *Server) AgentInfos() []AgentInfo {
	s.mu.RLock()
	all := make([]*session, 0, len(s.agents))
	for _, a := range s.agents {
		all = append(all, a)
	}
	s.mu.RUnlock()
	out := make([]AgentInfo, len(all))
	for i, a := range all {
		out[i] = AgentInfo{
			// The current address: QUIC follows a NAT rebinding.
			ID: a.id, RemoteAddr: a.conn.RemoteAddr().String(), ConnectedAt: a.since.UTC(),
			TunnelsOpen: a.tunnels.Load(), TunnelsTotal: a.total.Load(),
			BytesUp: a.bytesUp.Load(), BytesDown: a.bytesDown.Load(),
			RTTMillis: float64(a.conn.RTT().Microseconds()) / 1000,
			Transport: a.conn.Transport(),
		}
	}
	slices.SortFunc(out, func(a, b AgentInfo) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Sessions returns the connected agents.
func (s *Server) Sessions() []Session {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]Session, 0, len(s.agents))
	for _, a := range s.agents {
		out = append(out, Session{ID: a.id, Since: a.since})
	}
	return out
}

// Session returns agentID's connection, if it is connected.
func (s *Server) Session(agentID string) (Session, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	a := s.agents[agentID]
	if a == nil {
		return Session{}, false
	}
	return Session{ID: a.id, Since: a.since}, true
}

// Drop closes the connection of sess with an application error, if it is
// still agent sess.ID's current connection. It reports whether it did.
func (s *Server) Drop(sess Session, code quic.ApplicationErrorCode, reason string) bool {
	s.mu.Lock()
	a := s.agents[sess.ID]
	if a == nil || !a.since.Equal(sess.Since) {
		s.mu.Unlock()
		return false
	}
	// Out of the map now, so that no new tunnel uses it; its open tunnels
	// go on (retire).
	delete(s.agents, sess.ID)
	s.retiring[a] = struct{}{}
	s.cfg.Metrics.Agents(-1)
	s.cfg.Metrics.Transport(a.conn.Transport(), -1)
	s.cfg.Metrics.Session("closed")
	s.mu.Unlock()
	if s.cfg.OnAgent != nil {
		s.cfg.OnAgent(sess.ID, false)
	}
	s.retire(a, code, reason)
	return true
}

// Answering reports whether sess, still agent sess.ID's connection,
// receives a packet within the duplicate probe (agents send keep-alives
// every 2s). A connection that is gone is not answering.
func (s *Server) Answering(ctx context.Context, sess Session) bool {
	s.mu.RLock()
	a := s.agents[sess.ID]
	s.mu.RUnlock()
	if a == nil || !a.since.Equal(sess.Since) {
		return false
	}
	return answering(ctx, a.conn, s.cfg.DuplicateProbe)
}

// Agents returns the number of connected agents.
func (s *Server) Agents() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.agents)
}

// Connected reports whether agentID is connected here.
func (s *Server) Connected(agentID string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.agents[agentID]
	return ok
}

// Dial opens a tunnel to hostport through agentID. Errors are *wire.Error.
func (s *Server) Dial(ctx context.Context, agentID, hostport string) (net.Conn, error) {
	s.mu.RLock()
	sess := s.agents[agentID]
	s.mu.RUnlock()
	if sess == nil {
		return nil, wire.Errorf(wire.ErrAgentOffline, "agent "+agentID+" is not connected")
	}
	open := sess.tunnels.Add(1)
	if max := s.cfg.MaxTunnelsPerAgent; max > 0 && open > int64(max) {
		sess.tunnels.Add(-1)
		return nil, wire.Errorf(wire.ErrLimit, fmt.Sprintf("agent %s has %d tunnels open, its limit (--limits.tunnels-per-agent)", agentID, max))
	}
	opened := false
	defer func() {
		if !opened {
			sess.tunnelDone()
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	defer cancel()
	stream, err := sess.conn.OpenStream(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, wire.Errorf(wire.ErrTimeout, fmt.Sprintf("agent %s: no tunnel available within %s", agentID, s.cfg.DialTimeout))
		}
		return nil, wire.Errorf(wire.ErrAgentOffline, fmt.Sprintf("agent %s: %v", agentID, err))
	}
	// A deadline on the stream bounds the handshake; cancelling ctx (the
	// client went away) cuts it short.
	deadline, _ := ctx.Deadline()
	stream.SetDeadline(deadline)
	stopWatch := context.AfterFunc(ctx, func() { stream.SetDeadline(time.Now()) })
	defer stopWatch()

	// The agent's answer is read through a limit: net/http reads a header
	// line of any length, and an agent that never ends one would grow the
	// proxy's memory until the dial timeout. Tunnel bytes are read from
	// the stream itself once br's read-ahead is used up.
	br := bufio.NewReaderSize(io.LimitReader(stream, maxAnswerBytes), 1024)
	status, reason, err := func() (int, string, error) {
		if err := wire.WriteConnect(stream, hostport); err != nil {
			return 0, "", err
		}
		return wire.ReadResponse(br)
	}()
	if err != nil {
		stream.CancelRead(wire.StreamCodeAbort)
		stream.CancelWrite(wire.StreamCodeAbort)
		if ctx.Err() != nil {
			return nil, wire.Errorf(wire.ErrTimeout, fmt.Sprintf("agent %s: no answer for %s within %s", agentID, hostport, s.cfg.DialTimeout))
		}
		var nerr net.Error
		if errors.As(err, &nerr) && nerr.Timeout() {
			return nil, wire.Errorf(wire.ErrTimeout, fmt.Sprintf("agent %s: no answer for %s within %s", agentID, hostport, s.cfg.DialTimeout))
		}
		return nil, wire.Errorf(wire.ErrUnreachable, fmt.Sprintf("agent %s: tunnel to %s: %v", agentID, hostport, err))
	}
	if status != 200 {
		stream.CancelRead(wire.StreamCodeAbort)
		stream.Close()
		return nil, wire.ErrorFromStatus(status, reason)
	}
	if !stopWatch() {
		// ctx ended after the answer arrived: the client is gone.
		stream.CancelRead(wire.StreamCodeAbort)
		stream.CancelWrite(wire.StreamCodeAbort)
		return nil, wire.Errorf(wire.ErrTimeout, fmt.Sprintf("agent %s: tunnel to %s: %v", agentID, hostport, context.Cause(ctx)))
	}
	stream.SetDeadline(time.Time{})
	tunnel := relay.NewStream(stream, br, sess.conn.LocalAddr(), sess.conn.RemoteAddr())
	tunnel.OnClose(sess.tunnelDone)
	tunnel.Count(&sess.bytesDown, &sess.bytesUp)
	sess.total.Add(1)
	opened = true
	return tunnel, nil
}

// maxAnswerBytes bounds an agent's answer to a tunnel request: its status
// line, headers and reason. Real answers are under 200 bytes.
const maxAnswerBytes = 64 << 10

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
