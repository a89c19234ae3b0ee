// Package agent is the agent role: it keeps one authenticated connection
// to a proxy, over QUIC or, where UDP is blocked, over TLS on TCP (package
// transport), accepts the tunnels the proxy opens, checks each
// destination against its allowlist, dials it and relays bytes.
package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/admin"
	"github.com/reverse-http/reverse-http/internal/allow"
	"github.com/reverse-http/reverse-http/internal/audit"
	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/metrics"
	"github.com/reverse-http/reverse-http/internal/relay"
	"github.com/reverse-http/reverse-http/internal/reload"
	"github.com/reverse-http/reverse-http/internal/run"
	"github.com/reverse-http/reverse-http/internal/transport"
	"github.com/reverse-http/reverse-http/internal/wire"
)

// Config configures an agent. Zero durations take the defaults named.
type Config struct {
	// ServerAddr is the proxy's agent server, host:port (UDP).
	ServerAddr string
	// TransportMode is how the agent reaches the proxy: TransportAuto
	// (the default: QUIC, falling back to TCP when QUIC does not connect),
	// TransportQUIC or TransportTCP.
	TransportMode string
	// TCPServerAddr is the proxy's agent server over TCP, host:port.
	// Empty: ServerAddr's host and port, on TCP.
	TCPServerAddr string
	// QUICProbeInterval is how often an agent in TransportAuto that fell
	// back to TCP tries QUIC again; when QUIC connects, it moves back
	// (make-before-break). Default 3 minutes.
	QUICProbeInterval time.Duration
	// ID is this agent's ID, if known, for /tunnels and /readyz (the
	// credential carries it; a JWT's is not read here).
	ID string
	// TLS is the client TLS configuration; NextProtos is set to wire.ALPN.
	TLS *tls.Config
	// Credential returns what the agent authenticates with: its ID (noauth)
	// or an agent-role JWT. It is called before every connection attempt,
	// so a token file replaced on disk is picked up.
	Credential func() (string, error)
	// Allow is the destination allowlist; nil or empty allows everything.
	Allow *allow.List
	// DialTimeout bounds resolving and dialing a destination. Default 10s.
	DialTimeout time.Duration
	// HandshakeTimeout bounds connecting and authenticating to the proxy.
	// Default 3s: a connection attempt that lands on a dead proxy (say, a
	// load balancer's stale session) is given up quickly and retried from
	// a new UDP port. An attempt that gets no packet at all within it is
	// reported as "no answer from the proxy over UDP"; one that gets
	// answers but does not complete is given up to half as long again.
	HandshakeTimeout time.Duration
	// KeepAlive is the QUIC keep-alive period. Default 2s.
	KeepAlive time.Duration
	// IdleTimeout declares the proxy dead after this much silence. Default 6s.
	IdleTimeout time.Duration
	// MaxStreams is how many tunnels the proxy may hold open at once. Default 100000.
	MaxStreams int64
	// ReplacedWait is how long to wait before reconnecting after the proxy
	// closed this connection because another agent took the same ID. Default 30s.
	ReplacedWait time.Duration
	// ShutdownTimeout is how long the open tunnels may go on once Run's
	// context ended (new ones are refused meanwhile). Default 30s.
	ShutdownTimeout time.Duration
	// Backoff caps the exponential reconnect backoff. Default 30s.
	BackoffMax time.Duration
	// Resolver resolves destination names; nil means net.DefaultResolver.
	Resolver *net.Resolver
	// Lookup, if not nil, resolves destination names instead of Resolver
	// (tests use it to return chosen addresses).
	Lookup func(ctx context.Context, host string) ([]netip.Addr, error)
	// OwnListeners are the bound addresses of this process's own listeners
	// (metrics and pprof, admin). A tunnel to any of them is refused,
	// whatever Allow says. A listener on an unspecified address (0.0.0.0,
	// ::) stands for every local address with its port: loopback and the
	// host's interface addresses. Empty: none.
	OwnListeners []netip.AddrPort
	// LocalAddrs, if not nil, returns the host's interface addresses in
	// place of net.InterfaceAddrs (for tests).
	LocalAddrs func() []netip.Addr
	// BlockLocal refuses destinations that resolve to loopback (127.0.0.0/8,
	// ::1), link-local (169.254.0.0/16, fe80::/10), unspecified (0.0.0.0/8,
	// ::) or cloud metadata addresses (169.254.169.254, fd00:ec2::254),
	// IPv4-mapped forms included, even when a name pattern of Allow allows
	// the name. An address or CIDR pattern of Allow that lies inside such a
	// range (127.0.0.1:9090, 127.0.0.0/8; for a metadata address, exactly
	// that address) re-allows what it covers; a broader one (0.0.0.0/0)
	// does not. False: no such check (the reference's behaviour).
	BlockLocal bool
	// Metrics, if not nil, records the connection state and tunnels.
	Metrics *metrics.Metrics
	// Audit, if not nil, gets one line per tunnel when it ends, refused
	// ones included; Run runs its writer.
	Audit *audit.Log
	// AdminAddr, if not empty, serves the admin endpoint (health,
	// readiness, Metrics (made if nil), /tunnels, the status page; with
	// Pprof Go's profiler); a tunnel to that listener is refused like to
	// OwnListeners.
	AdminAddr string
	Pprof     bool
	// Reload, if not nil, is called on SIGHUP while Run runs: the
	// update's allowlist replaces Allow for tunnels opened from then on
	// (see package reload). Nil: SIGHUP is not handled.
	Reload reload.Load
	// Transport, if not nil, is the UDP socket the agent connects from,
	// which it may share with other agents in this process (a load
	// generator). Nil: every connection attempt uses a new socket, and so
	// a new source port, as a load balancer's stale session needs.
	Transport *quic.Transport
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.DialTimeout, 10*time.Second)
	def(&c.HandshakeTimeout, 3*time.Second)
	def(&c.KeepAlive, 2*time.Second)
	def(&c.IdleTimeout, 6*time.Second)
	def(&c.ReplacedWait, 30*time.Second)
	def(&c.BackoffMax, 30*time.Second)
	def(&c.ShutdownTimeout, 30*time.Second)
	def(&c.QUICProbeInterval, 3*time.Minute)
	if c.TransportMode == "" {
		c.TransportMode = TransportAuto
	}
	if c.TCPServerAddr == "" {
		c.TCPServerAddr = c.ServerAddr
	}
	if c.MaxStreams <= 0 {
		c.MaxStreams = 100_000
	}
	if c.Resolver == nil {
		c.Resolver = net.DefaultResolver
	}
}

// quicFallbackAfter is how many QUIC attempts in a row that got answers
// but failed make an agent in TransportAuto try TCP.
const quicFallbackAfter = 3

// Values of Config.TransportMode.
const (
	TransportAuto = "auto"
	TransportQUIC = transport.QUIC
	TransportTCP  = transport.TCP
)

// Agent is a running agent.
type Agent struct {
	cfg  Config
	log  *slog.Logger
	open tunnelSet
	live atomic.Int32 // connections authenticated to a proxy now (two while moving)
	// udpBlocked: in TransportAuto, the last QUIC attempt failed, so
	// connections start with TCP until a QUIC probe succeeds.
	udpBlocked atomic.Bool
	// quicFailures counts QUIC attempts in a row that failed with an
	// answer from the proxy (see dialProxy).
	quicFailures atomic.Int32
	// allowList is Config.Allow, or what SetAllow put in its place.
	allowList atomic.Pointer[allow.List]
}

// SetAllow checks the destinations of tunnels opened from now on against
// l (nil or empty allows all); open tunnels stay open. For a
// configuration reload.
func (a *Agent) SetAllow(l *allow.List) { a.allowList.Store(l) }

// Ready reports why the agent cannot serve tunnels now, or nil: it is
// connected to the proxy and authenticated.
func (a *Agent) Ready() error {
	if a.live.Load() == 0 {
		return fmt.Errorf("not connected to the proxy at %s", a.cfg.ServerAddr)
	}
	return nil
}

// New makes an agent.
func New(cfg Config, log *slog.Logger) *Agent {
	cfg.setDefaults()
	a := &Agent{cfg: cfg, log: log}
	a.SetAllow(cfg.Allow)
	return a
}

// sessionEnd is how a session ended: how long it was up, and why.
type sessionEnd struct {
	up  time.Duration
	err error
}

// healthyAfter is how long a connection must have lasted for the backoff to
// start over.
const healthyAfter = 30 * time.Second

// A draining proxy refuses new connections with CodeShutdown ("connect to
// another proxy"). Behind a UDP load balancer that hashes the source
// address, every attempt (from a new port) reaches a proxy at random, so
// the agent tries again soon: up to drainRetries times in a row, each
// after drainRetryMin to drainRetryMax, before it falls back to the
// exponential backoff. With two proxies, all of them reach the draining
// one with chance 2^-(drainRetries+1); a fleet whose only proxy drains
// costs it drainRetries refused handshakes per agent. The count starts
// over once a connection authenticates.
const (
	drainRetries  = 16
	drainRetryMin = 50 * time.Millisecond
	drainRetryMax = 300 * time.Millisecond
)

// Run serves the admin endpoint, if any, and connects, serves tunnels
// and reconnects until ctx ends; the audit log's writer, if any, runs
// until all of that has ended. It returns after every goroutine it started
// has ended. Failing to bind the admin listener is a *run.ListenError for
// "admin".
func (a *Agent) Run(ctx context.Context) error {
	return run.Outlast(ctx, a.cfg.Audit.Run, a.run)
}

func (a *Agent) run(ctx context.Context) error {
	parts := []func(context.Context) error{a.connect}
	if a.cfg.Reload != nil {
		parts = append(parts, func(ctx context.Context) error {
			return reload.Watch(ctx, a.log, a.cfg.Reload, func(u *reload.Update) { a.SetAllow(u.Allow) })
		})
	}
	if a.cfg.AdminAddr == "" {
		return run.All(ctx, parts...)
	}
	if a.cfg.Metrics == nil {
		a.cfg.Metrics = metrics.New()
	}
	// Bound first: the agent refuses tunnels to it.
	ln, err := admin.Listen(a.cfg.AdminAddr)
	if err != nil {
		return &run.ListenError{Part: "admin", Err: err}
	}
	if ap, err := netip.ParseAddrPort(ln.Addr().String()); err == nil {
		a.cfg.OwnListeners = append(slices.Clip(a.cfg.OwnListeners), ap)
	}
	return run.All(ctx, append(parts,
		func(ctx context.Context) error {
			return admin.Serve(ctx, ln, admin.Config{
				Role: "agent", Metrics: a.cfg.Metrics, Ready: a.Ready, Pprof: a.cfg.Pprof, Tunnels: a.Tunnels,
			}, a.log.With("component", "admin"))
		})...)
}

// liveSession is a session running in a goroutine of its own.
type liveSession struct {
	up     chan string     // gets the transport once authenticated
	moved  chan struct{}   // closed when the proxy asked the agent to move
	retire chan struct{}   // closed to retire it: see session
	done   chan sessionEnd // gets how it ended
}

// startSession runs a session, over conn if not nil (a connection a QUIC
// probe made), in a goroutine counted by wg.
func (a *Agent) startSession(ctx context.Context, wg *sync.WaitGroup, conn transport.Conn) *liveSession {
	ls := &liveSession{up: make(chan string, 1), moved: make(chan struct{}), retire: make(chan struct{}), done: make(chan sessionEnd, 1)}
	var once sync.Once
	wg.Go(func() {
		up, err := a.session(ctx, conn, ls.retire, func(tr string) { ls.up <- tr },
			func() { once.Do(func() { close(ls.moved) }) })
		if closed(ls.moved) || closed(ls.retire) {
			a.log.Info("the connection this agent moved from has ended", "connected_for", up.Round(time.Millisecond).String(), "cause", err)
		}
		ls.done <- sessionEnd{up, err}
	})
	return ls
}

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// connect connects, serves tunnels and reconnects until ctx ends.
func (a *Agent) connect(ctx context.Context) error {
	b := backoff{base: 200 * time.Millisecond, max: a.cfg.BackoffMax}
	dupWait := time.Duration(0) // the last wait after a CodeDuplicate refusal
	drainLeft := drainRetries   // quick retries left after draining proxies' refusals
	// Sessions run in goroutines of their own: after a move the old one
	// goes on, with its tunnels, while the next one connects.
	var sessions sync.WaitGroup
	defer sessions.Wait()
	probe := time.NewTimer(time.Hour)
	probe.Stop()
	defer probe.Stop()
	var next transport.Conn // made by a QUIC probe, for the next session
	for {
		cur := a.startSession(ctx, &sessions, next)
		next = nil
		var (
			end   sessionEnd
			ended bool
		)
	serving:
		for {
			select {
			case tr := <-cur.up:
				probe.Stop()
				if a.cfg.TransportMode == TransportAuto && tr == transport.TCP {
					probe.Reset(a.cfg.QUICProbeInterval)
				}
				continue
			case end = <-cur.done:
				ended = true
			case <-cur.moved:
				b.reset()
				probe.Stop()
			case <-probe.C:
				conn, err := a.dialQUIC(ctx)
				if err != nil {
					a.log.Debug("QUIC still does not connect: staying on TCP", "server", a.cfg.ServerAddr, "error", err,
						"next_try_in", a.cfg.QUICProbeInterval.String())
					probe.Reset(a.cfg.QUICProbeInterval)
					continue
				}
				a.log.Info("QUIC connects again: moving back from TCP; tunnels on the TCP connection go on until they end",
					"server", a.cfg.ServerAddr)
				a.udpBlocked.Store(false)
				ls := a.startSession(ctx, &sessions, conn)
				select {
				case <-ls.up:
					close(cur.retire)
					cur = ls
				case e := <-ls.done:
					a.log.Warn("moving back to QUIC failed: staying on TCP", "error", e.err,
						"next_try_in", a.cfg.QUICProbeInterval.String())
					probe.Reset(a.cfg.QUICProbeInterval)
				}
				continue
			}
			break serving
		}
		if !ended && ctx.Err() == nil {
			continue // moved: connect again at once; the old session ends by itself
		}
		connected, err := end.up, end.err
		if ctx.Err() != nil {
			return nil
		}
		if connected > healthyAfter {
			b.reset()
		}
		var appErr *quic.ApplicationError
		duplicate := errors.As(err, &appErr) && appErr.Remote && appErr.ErrorCode == wire.CodeDuplicate
		if connected > 0 && !duplicate {
			dupWait = 0
		}
		if connected > 0 {
			drainLeft = drainRetries
		}
		draining := connected == 0 && errors.As(err, &appErr) && appErr.Remote && appErr.ErrorCode == wire.CodeShutdown
		quick := draining && drainLeft > 0
		var wait time.Duration
		if !quick {
			wait = b.next() // quick retries leave the backoff where it was
		}
		switch {
		case quick:
			drainLeft--
			wait = drainRetryMin + rand.N(drainRetryMax-drainRetryMin)
			a.log.Info("proxy is draining and refused this connection: trying again soon to reach another proxy",
				"server", a.cfg.ServerAddr, "reason", appErr.ErrorMessage, "retry_in", wait.Round(time.Millisecond).String(),
				"quick_retries_left", drainLeft)
		case errors.As(err, &appErr) && appErr.Remote && appErr.ErrorCode == wire.CodeReplaced:
			wait = a.cfg.ReplacedWait
			a.log.Warn("proxy closed this connection: another agent connected with the same ID; waiting before reconnecting",
				"reason", appErr.ErrorMessage, "retry_in", wait.String())
		case duplicate:
			// Another agent holds this ID and the two were evicting each
			// other. Stay away, twice as long each time up to four
			// replaced-waits, so that it keeps the ID while it is alive and
			// this one takes over soon after it leaves.
			dupWait = min(max(2*dupWait, a.cfg.ReplacedWait), 4*a.cfg.ReplacedWait)
			wait = dupWait
			a.log.Error("proxy refused this connection: another live agent uses the same ID; waiting before trying again",
				"reason", appErr.ErrorMessage, "retry_in", wait.String())
		case errors.As(err, &appErr) && appErr.Remote && (appErr.ErrorCode == wire.CodeAuthFailed || appErr.ErrorCode == wire.CodeBadRequest):
			a.log.Error("proxy refused authentication", "reason", appErr.ErrorMessage, "retry_in", wait.Round(time.Millisecond).String())
		default:
			a.log.Warn("connection to proxy ended", "server", a.cfg.ServerAddr, "error", err, "retry_in", wait.Round(time.Millisecond).String())
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// session runs one connection; it returns how long the connection was up
// (zero if it never authenticated) and why it ended. It dials the proxy
// unless conn is given; up is called with the transport once the
// connection authenticated.
//
// moved is called (once) when the proxy asks the agent to move; the
// session then goes on until the proxy closes it. Closing retire retires
// the session for a newer one: it goes on serving tunnels and closes once
// none has been open for a moment. When ctx ends, the session drains: new
// tunnels are refused with 503, and the connection is closed once the
// open ones ended or ShutdownTimeout passed.
func (a *Agent) session(ctx context.Context, conn transport.Conn, retire <-chan struct{}, up func(string), moved func()) (time.Duration, error) {
	cred, err := a.cfg.Credential()
	if err != nil {
		if conn != nil {
			conn.CloseWithError(wire.CodeNoError, "agent has no credential")
		}
		return 0, fmt.Errorf("credential: %w", err)
	}
	if conn == nil {
		conn, err = a.dialProxy(ctx)
		if err != nil {
			return 0, err
		}
	}
	var wg sync.WaitGroup
	defer func() {
		// Close first: tunnels end with the connection, then wait for them
		// and for the connection's own goroutines.
		conn.CloseWithError(wire.CodeNoError, "agent shutting down")
		wg.Wait()
		conn.Wait()
	}()
	if err := a.authenticate(ctx, conn, cred); err != nil {
		// A refusal closes the connection with an application error, which
		// the stream read returns wrapped in err.
		return 0, err
	}
	upSince := time.Now()
	agentID := auth.CredentialAgentID(cred)
	if a.live.Add(1) == 1 {
		a.cfg.Metrics.Agents(1)
	}
	defer func() {
		if a.live.Add(-1) == 0 {
			a.cfg.Metrics.Agents(-1)
		}
	}()
	tr := conn.Transport()
	a.cfg.Metrics.Transport(tr, 1)
	defer a.cfg.Metrics.Transport(tr, -1)
	a.log.Info("connected to proxy", "server", conn.RemoteAddr().String(), "transport", tr)
	up(tr)
	wg.Go(func() { a.control(conn, moved) })

	// The agent's own shutdown: no new tunnels; the open ones get until
	// ShutdownTimeout, then the connection closes.
	var open atomic.Int64     // tunnels being opened or relayed
	var accepted atomic.Int64 // tunnels accepted so far
	var draining atomic.Bool
	wg.Go(func() {
		select {
		case <-conn.Context().Done():
			return
		case <-ctx.Done():
		case <-retire:
			if closeWhenQuiet(ctx, conn, &open, &accepted) {
				return
			}
		}
		draining.Store(true)
		deadline := time.NewTimer(a.cfg.ShutdownTimeout)
		defer deadline.Stop()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for open.Load() > 0 {
			select {
			case <-deadline.C:
				a.log.Warn("shutdown deadline: closing the tunnels still open", "tunnels", open.Load())
				conn.CloseWithError(wire.CodeNoError, "agent shutting down")
				return
			case <-conn.Context().Done():
				return
			case <-tick.C:
			}
		}
		conn.CloseWithError(wire.CodeNoError, "agent shutting down")
	})
	for {
		stream, err := conn.AcceptStream(conn.Context())
		if err != nil {
			if cause := context.Cause(conn.Context()); cause != nil && conn.Context().Err() != nil {
				err = cause
			}
			return time.Since(upSince), err
		}
		// Counted before the check, so the drain watcher never closes the
		// connection under a tunnel it let in.
		open.Add(1)
		accepted.Add(1)
		if draining.Load() {
			open.Add(-1)
			wg.Go(func() {
				const reason = "agent is shutting down"
				a.refuse(stream, http.StatusServiceUnavailable, reason, "")
				a.audit(agentID, "", "", time.Now(), http.StatusServiceUnavailable, reason, relay.Result{})
			})
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The relay runs in goroutines of its own; this one, whose
			// stack grew deep in the dial, ends.
			relay := a.tunnel(context.WithoutCancel(ctx), conn, stream, agentID)
			if relay == nil {
				open.Add(-1)
				return
			}
			wg.Add(1)
			relay(func() {
				open.Add(-1)
				wg.Done()
			})
		}()
	}
}

// closeWhenQuiet closes the connection of a retired session once no
// tunnel was open on it, and none accepted, for half a second: the proxy
// may still send a tunnel or two until it has seen the new connection. It
// reports false if ctx ended first (the session then drains).
func closeWhenQuiet(ctx context.Context, conn transport.Conn, open, accepted *atomic.Int64) bool {
	const quiet = 500 * time.Millisecond
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	last, since := accepted.Load(), time.Now()
	for {
		select {
		case <-conn.Context().Done():
			return true
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
		if n := accepted.Load(); n != last || open.Load() > 0 {
			last, since = n, time.Now()
		} else if time.Since(since) >= quiet {
			conn.CloseWithError(wire.CodeNoError, "agent moved to a new connection")
			return true
		}
	}
}

// control reads the control messages the proxy sends until the
// connection ends; a move calls moved.
func (a *Agent) control(conn transport.Conn, moved func()) {
	for {
		msg, err := conn.AcceptControl(conn.Context())
		if err != nil {
			return
		}
		name, reason, _ := strings.Cut(msg, "\n")
		switch name {
		case wire.ControlMove:
			a.log.Info("proxy asked this agent to move: connecting again; tunnels on this connection go on until the proxy closes it",
				"server", a.cfg.ServerAddr, "remote", conn.RemoteAddr().String(), "transport", conn.Transport(), "reason", clipReason(reason))
			moved()
		default:
			a.log.Debug("unknown control message ignored", "message", clipReason(name))
		}
	}
}

func clipReason(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// dialProxy connects to the proxy the way TransportMode says. In
// TransportAuto it tries QUIC, then TCP when QUIC does not connect: at
// once when no packet came back within HandshakeTimeout (UDP blocked),
// after quicFallbackAfter failures in a row otherwise. After a fallback
// it starts with TCP, and a QUIC probe (see connect) moves it back.
func (a *Agent) dialProxy(ctx context.Context) (transport.Conn, error) {
	switch a.cfg.TransportMode {
	case TransportQUIC:
		return a.dialQUIC(ctx)
	case TransportTCP:
		return a.dialTCP(ctx)
	}
	first, second := a.dialQUIC, a.dialTCP
	firstName, secondName := transport.QUIC, transport.TCP
	if a.udpBlocked.Load() {
		first, second = second, first
		firstName, secondName = secondName, firstName
	}
	conn, err := first(ctx)
	if err == nil || ctx.Err() != nil {
		if firstName == transport.QUIC {
			a.quicFailures.Store(0)
		}
		return conn, err
	}
	if firstName == transport.QUIC {
		// No answer at all is UDP blocked: TCP at once. A handshake that
		// got answers but failed (a proxy too busy to finish it in
		// time, during a reconnection storm) is QUIC's to retry, until
		// it failed quicFallbackAfter times in a row.
		var na *noAnswerError
		if n := a.quicFailures.Add(1); !errors.As(err, &na) && n < quicFallbackAfter {
			return nil, err
		}
	}
	a.log.Warn("could not connect to the proxy over "+firstName+": trying "+secondName,
		"server", a.addrOf(firstName), "error", err)
	conn, err2 := second(ctx)
	if err2 != nil {
		return nil, fmt.Errorf("%w; over %s: %w", err, secondName, err2)
	}
	a.udpBlocked.Store(secondName == transport.TCP)
	return conn, nil
}

func (a *Agent) addrOf(tr string) string {
	if tr == transport.TCP {
		return a.cfg.TCPServerAddr
	}
	return a.cfg.ServerAddr
}

// tlsConfig is the client TLS configuration with alpn and TLS 1.3.
func (a *Agent) tlsConfig(alpn string) *tls.Config {
	c := a.cfg.TLS.Clone()
	c.NextProtos = []string{alpn}
	c.MinVersion = tls.VersionTLS13
	return c
}

// dialQUIC connects over QUIC from a new UDP socket, or through
// Config.Transport.
func (a *Agent) dialQUIC(ctx context.Context) (transport.Conn, error) {
	tlsConf := a.tlsConfig(wire.ALPN)
	conf := &quic.Config{
		KeepAlivePeriod:       a.cfg.KeepAlive,
		MaxIdleTimeout:        a.cfg.IdleTimeout,
		HandshakeIdleTimeout:  a.cfg.HandshakeTimeout,
		MaxIncomingStreams:    a.cfg.MaxStreams,
		MaxIncomingUniStreams: wire.MaxControlStreams,
	}
	// quic-go ends a handshake that received nothing for
	// HandshakeIdleTimeout with an IdleTimeoutError; the context, a little
	// longer, bounds a handshake that gets answers but stalls. That keeps
	// "no answer at all" (UDP blocked, no proxy there) distinguishable.
	dialCtx, cancel := context.WithTimeout(ctx, a.cfg.HandshakeTimeout+a.cfg.HandshakeTimeout/2)
	defer cancel()
	var conn *quic.Conn
	var err error
	if a.cfg.Transport == nil {
		conn, err = quic.DialAddr(dialCtx, a.cfg.ServerAddr, tlsConf, conf)
	} else {
		var addr *net.UDPAddr
		addr, err = net.ResolveUDPAddr("udp", a.cfg.ServerAddr)
		if err == nil {
			conn, err = a.cfg.Transport.Dial(dialCtx, addr, tlsConf, conf)
		}
	}
	if err != nil {
		var idle *quic.IdleTimeoutError
		if errors.As(err, &idle) && ctx.Err() == nil {
			return nil, &noAnswerError{server: a.cfg.ServerAddr, after: a.cfg.HandshakeTimeout, err: err}
		}
		return nil, fmt.Errorf("connect to %s: %w", a.cfg.ServerAddr, err)
	}
	return transport.FromQUIC(conn), nil
}

// dialTCP connects over TLS on TCP (package transport) to TCPServerAddr,
// within HandshakeTimeout.
func (a *Agent) dialTCP(ctx context.Context) (transport.Conn, error) {
	addr := a.cfg.TCPServerAddr
	ctx, cancel := context.WithTimeout(ctx, a.cfg.HandshakeTimeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s over TCP: %w", addr, err)
	}
	tlsConf := a.tlsConfig(transport.ALPNTCP)
	if tlsConf.ServerName == "" {
		if host, _, err := net.SplitHostPort(addr); err == nil {
			tlsConf.ServerName = host
		}
	}
	tc := tls.Client(raw, tlsConf)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("connect to %s over TCP: TLS: %w", addr, err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != transport.ALPNTCP {
		raw.Close()
		return nil, fmt.Errorf("connect to %s over TCP: the server does not speak %q (ALPN %q): is it a reverse-http proxy's agent port, with --agent-server.tcp.listen-address?", addr, transport.ALPNTCP, p)
	}
	return transport.NewTCP(tc, true, transport.TCPConfig{
		KeepAlive:          a.cfg.KeepAlive,
		IdleTimeout:        a.cfg.IdleTimeout,
		MaxIncomingStreams: uint32(min(a.cfg.MaxStreams, 1<<31)),
	})
}

// noAnswerError is a handshake that received no packet at all: the proxy's
// UDP port is blocked on the way, or nothing listens there.
type noAnswerError struct {
	server string
	after  time.Duration
	err    error // quic-go's *IdleTimeoutError
}

func (e *noAnswerError) Error() string {
	return fmt.Sprintf("no answer from the proxy over UDP within %s: is UDP to %s blocked, or is no proxy listening there?", e.after, e.server)
}

func (e *noAnswerError) Unwrap() error { return e.err }

func (a *Agent) authenticate(ctx context.Context, conn transport.Conn, cred string) error {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.HandshakeTimeout)
	defer cancel()
	stream, err := conn.OpenStream(ctx)
	if err != nil {
		return fmt.Errorf("open auth stream: %w", err)
	}
	deadline, _ := ctx.Deadline()
	stream.SetDeadline(deadline)
	if err := wire.WriteMessage(stream, cred); err != nil {
		return fmt.Errorf("send credential: %w", err)
	}
	stream.Close()
	if _, err := wire.ReadMessage(stream); err != nil {
		return fmt.Errorf("read auth answer: %w", err)
	}
	return nil
}

// tunnel answers one stream opened by the proxy. When the destination is
// dialed, it returns the function that starts relaying the tunnel; that
// calls ended once the tunnel is closed.
func (a *Agent) tunnel(ctx context.Context, conn transport.Conn, stream transport.Stream, agentID string) (startRelay func(ended func())) {
	start := time.Now()
	stream.SetReadDeadline(start.Add(a.cfg.DialTimeout))
	br := bufio.NewReaderSize(stream, 1024)
	target, err := wire.ReadConnect(br)
	if err != nil {
		a.refuse(stream, http.StatusBadRequest, err.Error(), target)
		a.audit(agentID, target, "", start, http.StatusBadRequest, err.Error(), relay.Result{})
		return nil
	}
	stream.SetReadDeadline(time.Time{})
	dest, err := a.dial(ctx, target)
	if err != nil {
		var we *wire.Error
		reason := err.Error()
		if errors.As(err, &we) {
			reason = we.Reason
		}
		a.refuse(stream, wire.Status(err), reason, target)
		a.audit(agentID, target, "", start, wire.Status(err), reason, relay.Result{})
		return nil
	}
	dialed := dest.RemoteAddr().String()
	if err := wire.WriteOK(stream); err != nil {
		dest.Close()
		stream.CancelRead(wire.StreamCodeAbort)
		stream.CancelWrite(wire.StreamCodeAbort)
		a.audit(agentID, target, dialed, start, http.StatusOK, "", relay.Result{Err: fmt.Errorf("proxy gone: %w", err)})
		return nil
	}
	a.cfg.Metrics.Request("agent", http.StatusOK)
	a.cfg.Metrics.Opened(time.Since(start))
	tunnelSide := relay.NewStream(stream, br, conn.LocalAddr(), conn.RemoteAddr())
	return func(ended func()) {
		ot := a.open.add(target, start)
		ot.relay.Store(relay.Start(tunnelSide, relay.NewTCP(dest, nil), func(res relay.Result) {
			defer ended()
			a.open.remove(ot)
			a.cfg.Metrics.Closed(res.AToB, res.BToA)
			outcome := "ok"
			if res.Err != nil {
				outcome = res.Err.Error()
			}
			a.log.Info("tunnel closed", "destination", target, "address", dest.RemoteAddr().String(),
				"bytes_up", res.AToB, "bytes_down", res.BToA,
				"duration", time.Since(start).Round(time.Millisecond).String(), "outcome", outcome)
			a.audit(agentID, target, dialed, start, http.StatusOK, "", res)
		}))
	}
}

// audit records a tunnel that ended, or was refused with status.
func (a *Agent) audit(agentID, target, dialed string, start time.Time, status int, reason string, res relay.Result) {
	if a.cfg.Audit == nil {
		return
	}
	if res.Err != nil {
		reason = res.Err.Error()
	}
	a.cfg.Audit.Record(audit.Entry{Agent: agentID, Method: http.MethodConnect, Destination: target, Dialed: dialed,
		Status: status, Outcome: wire.Outcome(status), Reason: reason,
		BytesUp: res.AToB, BytesDown: res.BToA, Duration: time.Since(start)})
}

func (a *Agent) refuse(stream transport.Stream, status int, reason, target string) {
	a.log.Info("tunnel refused", "destination", target, "status", status, "reason", reason)
	a.cfg.Metrics.Request("agent", status)
	stream.SetWriteDeadline(time.Now().Add(5 * time.Second))
	wire.WriteError(stream, status, reason)
	stream.Close()
	stream.CancelRead(wire.StreamCodeAbort)
}

// dial checks target against the allowlist, resolves it once and dials an
// address it resolved: names are checked by name, literal IPs by address,
// and the address dialed is the one checked. Resolved addresses that are the
// agent's own listeners, or local with BlockLocal, are skipped; when no
// address is left the tunnel is denied.
func (a *Agent) dial(ctx context.Context, target string) (net.Conn, error) {
	host, port, err := wire.SplitHostPort(target)
	if err != nil {
		return nil, wire.Errorf(wire.ErrBadRequest, err.Error())
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.DialTimeout)
	defer cancel()
	var addrs []netip.Addr
	allowList := a.allowList.Load()
	if ip, err := netip.ParseAddr(host); err == nil {
		if !allowList.Empty() && !allowList.AllowedIP(ip, port) {
			return nil, wire.Errorf(wire.ErrDenied, "destination "+target+" is not allowed by the agent's allowlist")
		}
		addrs = []netip.Addr{ip.Unmap()}
	} else {
		if !allowList.Empty() && !allowList.AllowedName(host, port) {
			return nil, wire.Errorf(wire.ErrDenied, "destination "+target+" is not allowed by the agent's allowlist")
		}
		addrs, err = a.lookup(ctx, host)
		if err != nil {
			if ctx.Err() != nil {
				return nil, wire.Errorf(wire.ErrTimeout, fmt.Sprintf("resolving %s timed out after %s", host, a.cfg.DialTimeout))
			}
			return nil, wire.Errorf(wire.ErrUnreachable, "cannot resolve "+host+": "+dnsReason(err))
		}
	}
	var d net.Dialer
	var firstErr error
	var refused netip.Addr
	var refusedWhat string
	dialed := 0
	for _, ip := range addrs {
		ip = ip.Unmap()
		if what := a.refusal(ip, port); what != "" {
			if !refused.IsValid() {
				refused, refusedWhat = ip, what
			}
			continue
		}
		dialed++
		c, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(ip, uint16(port)).String())
		if err == nil {
			return c, nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	if dialed == 0 && refused.IsValid() {
		return nil, wire.Errorf(wire.ErrDenied, refusedReason(target, refused, port, refusedWhat))
	}
	if ctx.Err() != nil {
		return nil, wire.Errorf(wire.ErrTimeout, fmt.Sprintf("dial %s timed out after %s", target, a.cfg.DialTimeout))
	}
	if firstErr == nil {
		return nil, wire.Errorf(wire.ErrUnreachable, "cannot resolve "+host+": no addresses")
	}
	return nil, wire.Errorf(wire.ErrUnreachable, "dial "+target+": "+opReason(firstErr))
}

func (a *Agent) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	if a.cfg.Lookup != nil {
		return a.cfg.Lookup(ctx, host)
	}
	return a.cfg.Resolver.LookupNetIP(ctx, "ip", host)
}

func dnsReason(err error) string {
	var de *net.DNSError
	if errors.As(err, &de) {
		if de.IsNotFound {
			return "no such host"
		}
		return de.Err
	}
	return err.Error()
}

// opReason shortens "dial tcp 127.0.0.1:1: connect: connection refused" to
// its cause.
func opReason(err error) string {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err.Error()
	}
	return err.Error()
}

// backoff is exponential backoff with full jitter.
type backoff struct {
	base, max time.Duration
	attempt   int
}

func (b *backoff) next() time.Duration {
	ceil := b.base << min(b.attempt, 20)
	if ceil > b.max || ceil <= 0 {
		ceil = b.max
	}
	b.attempt++
	return time.Duration(rand.Int64N(int64(ceil))) + time.Millisecond
}

func (b *backoff) reset() { b.attempt = 0 }
