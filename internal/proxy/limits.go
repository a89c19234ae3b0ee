package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/metrics"
	"github.com/reverse-http/reverse-http/internal/transport"
	"github.com/reverse-http/reverse-http/internal/wire"
)

// errTooManyAgents: the proxy holds Config.MaxAgents agents.
var errTooManyAgents = errors.New("too many agents")

// admit returns an error wrapping errTooManyAgents if agent id may not
// connect now. s.mu must be held (read or write).
func (s *Server) admit(id string) error {
	max := s.cfg.MaxAgents
	if max <= 0 || len(s.agents) < max {
		return nil
	}
	if _, replaces := s.agents[id]; replaces {
		return nil // takes no new place
	}
	return fmt.Errorf("%w: this proxy holds %d agents, its limit (--limits.agents); retry later or use another proxy", errTooManyAgents, max)
}

// refuseAgent closes the connection of an agent that authenticated as id
// but is over the agents limit.
func (s *Server) refuseAgent(conn transport.Conn, id string, err error) {
	s.log.Warn("agent refused", "agent", id, "remote", conn.RemoteAddr().String(), "reason", err.Error())
	conn.CloseWithError(wire.CodeTooManyAgents, truncate(err.Error(), 200))
	s.cfg.Metrics.Session("over_limit")
}

// Refusals of new agent connections before any TLS work.
var (
	errHandshakeRate = errors.New("over --limits.agent-handshakes-per-second")
	errHandshakeBusy = errors.New("over --limits.agent-handshakes-in-flight")
)

// handshakeLimiter admits new agent connections: a token bucket for their
// rate, and a bound on those admitted that have not authenticated (or
// ended) yet. The bound is what keeps a storm of reconnecting agents from
// collapsing the proxy: past what its CPU finishes within the agents'
// handshake timeout, handshakes time out half done, the agents retry, and
// the wasted work grows until the connected agents' keep-alives go
// unread too. Refused early, an agent backs off at the cost of one
// packet.
//
// It also counts the connections admitted whose TLS handshake failed or
// never finished (a wrong certificate, not an agent, a timeout). Refusals
// and failures are logged at most once per second each, with how many
// there were, so that strangers cannot flood the log.
type handshakeLimiter struct {
	rate, burst float64 // rate 0: no rate limit
	maxInFlight int64   // 0: no bound
	log         *slog.Logger
	metrics     *metrics.Metrics

	mu          sync.Mutex
	tokens      float64
	last        time.Time // of the last refill
	inFlight    int64
	refusedRate int      // since the last log line
	refusedBusy int      // since the last log line
	lastAddr    net.Addr // of the last refused connection
	logged      time.Time
	// recent and older remember the QUIC addresses refused in this
	// second and the one before (see admit).
	recent, older map[netip.AddrPort]error
	recentSince   time.Time
	failures      int // since the last log line
	lastFailure   failure
	failLogged    time.Time
	timer         *time.Timer // logs what is pending; nil when nothing is
	stopped       bool        // the proxy shuts down: cut handshakes are not failures
}

// failure is a failed agent TLS handshake.
type failure struct {
	remote    net.Addr
	transport string
	err       error
}

func newHandshakeLimiter(rate float64, burst, maxInFlight int, log *slog.Logger, m *metrics.Metrics) *handshakeLimiter {
	b := float64(burst)
	if burst <= 0 {
		b = max(2*rate, 1)
	}
	return &handshakeLimiter{rate: rate, burst: b, maxInFlight: int64(maxInFlight), log: log, metrics: m, tokens: b, last: time.Now()}
}

// admit admits a new connection, or refuses it with errHandshakeBusy or
// errHandshakeRate. done, called once the connection authenticated, was
// refused or ended (more calls do nothing), gives its place back.
//
// A QUIC connection (quic true) from an address refused within the last
// second or two is refused again, and not counted: a ClientHello with a
// post-quantum key share spans two Initial packets, and the second, if a
// place had come free meanwhile, would otherwise be admitted as a
// connection of its own that can never finish, holding a place until the
// handshake timeout.
func (l *handshakeLimiter) admit(now time.Time, remote net.Addr, quic bool) (done func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ap netip.AddrPort
	if u, ok := remote.(*net.UDPAddr); ok && quic {
		ap = u.AddrPort()
		if err := l.refusedRecently(now, ap); err != nil {
			return nil, err
		}
	}
	switch {
	case l.maxInFlight > 0 && l.inFlight >= l.maxInFlight:
		err = errHandshakeBusy
		l.refusedBusy++
		l.metrics.Session("busy")
	case l.rate > 0 && !l.take(now):
		err = errHandshakeRate
		l.refusedRate++
		l.metrics.Session("rate_limited")
	}
	if err != nil {
		l.lastAddr = remote
		l.remember(ap, err)
		if now.Sub(l.logged) >= time.Second {
			l.report(now)
		} else {
			l.later(l.logged.Add(time.Second).Sub(now))
		}
		return nil, err
	}
	l.inFlight++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			l.inFlight--
			l.mu.Unlock()
		})
	}, nil
}

// maxRecent bounds each generation of remembered refusals: in a storm
// past it, second halves of ClientHellos are refused or admitted as
// before, and counted again.
const maxRecent = 8192

// refusedRecently returns the error ap was refused with within the last
// one to two seconds, if it was. l.mu must be held.
func (l *handshakeLimiter) refusedRecently(now time.Time, ap netip.AddrPort) error {
	if age := now.Sub(l.recentSince); age >= time.Second {
		l.older, l.recent = l.recent, nil
		if age >= 2*time.Second {
			l.older = nil
		}
		l.recentSince = now
	}
	if err, ok := l.recent[ap]; ok {
		return err
	}
	return l.older[ap]
}

// remember records that ap was refused with err. l.mu must be held.
func (l *handshakeLimiter) remember(ap netip.AddrPort, err error) {
	if !ap.IsValid() || len(l.recent) >= maxRecent {
		return
	}
	if l.recent == nil {
		l.recent = make(map[netip.AddrPort]error)
	}
	l.recent[ap] = err
}

// fail counts a connection admitted whose TLS handshake failed or did
// not finish within the handshake timeout; it is logged with the next
// line of failures.
func (l *handshakeLimiter) fail(now time.Time, remote net.Addr, tr string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return
	}
	l.metrics.Session("handshake_failed")
	l.failures++
	l.lastFailure = failure{remote, tr, err}
	if now.Sub(l.failLogged) >= time.Second {
		l.reportFailures(now)
	} else {
		l.later(l.failLogged.Add(time.Second).Sub(now))
	}
}

// later logs what is pending after d, unless a timer for that runs
// already. l.mu must be held.
func (l *handshakeLimiter) later(d time.Duration) {
	if l.timer == nil {
		l.timer = time.AfterFunc(d, l.flush)
	}
}

// take takes a token if there is one. l.mu must be held.
func (l *handshakeLimiter) take(now time.Time) bool {
	l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	if l.tokens >= 1 {
		l.tokens--
		return true
	}
	return false
}

// report logs the refusals since the last line. l.mu must be held.
func (l *handshakeLimiter) report(now time.Time) {
	remote := ""
	if l.lastAddr != nil {
		remote = l.lastAddr.String()
	}
	var reasons []string
	if l.refusedBusy > 0 {
		reasons = append(reasons, fmt.Sprintf("%d with %d handshakes in flight (--limits.agent-handshakes-in-flight)", l.refusedBusy, l.maxInFlight))
	}
	if l.refusedRate > 0 {
		reasons = append(reasons, fmt.Sprintf("%d over %g new agent connections per second, burst %g (--limits.agent-handshakes-per-second)", l.refusedRate, l.rate, l.burst))
	}
	l.log.Warn("agent handshakes refused", "refused", l.refusedBusy+l.refusedRate, "last_remote", remote,
		"reason", strings.Join(reasons, "; "))
	l.refusedBusy, l.refusedRate = 0, 0
	l.logged = now
}

// reportFailures logs the failed handshakes since the last line. l.mu must
// be held.
func (l *handshakeLimiter) reportFailures(now time.Time) {
	f := l.lastFailure
	l.log.Warn("agent TLS handshakes failed", "failed", l.failures, "last_remote", f.remote.String(),
		"last_transport", f.transport, "last_error", f.err.Error())
	l.failures = 0
	l.failLogged = now
}

// stop stops counting failed handshakes: from now on the proxy's own
// shutdown cuts those in flight (quic-go closes them with
// CONNECTION_REFUSED).
func (l *handshakeLimiter) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopped = true
}

// flush logs the refusals and failures not logged yet.
func (l *handshakeLimiter) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	now := time.Now()
	if l.refusedBusy+l.refusedRate > 0 {
		l.report(now)
	}
	if l.failures > 0 {
		l.reportFailures(now)
	}
}

// handshakeKey holds, in an admitted QUIC connection's context, its
// *place.
type handshakeKey struct{}

// place is an admitted QUIC connection's place among the handshakes in
// flight.
type place struct {
	done     func()
	accepted atomic.Bool // the handshake finished and the listener returned it
}

// connContext is the quic.Transport's ConnContext: it refuses a new
// connection (CONNECTION_REFUSED, before any TLS work) that admit
// refuses. The place of one admitted is given back when the connection
// ends (ctx is cancelled then, with the cause) or by the done function
// handshakeDone returns; one that ends before the listener returned it
// failed its TLS handshake.
func (l *handshakeLimiter) connContext(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
	done, err := l.admit(time.Now(), info.RemoteAddr, true)
	if err != nil {
		return nil, err
	}
	p := &place{done: done}
	context.AfterFunc(ctx, func() {
		if !p.accepted.Load() {
			l.fail(time.Now(), info.RemoteAddr, transport.QUIC, context.Cause(ctx))
		}
		done()
	})
	return context.WithValue(ctx, handshakeKey{}, p), nil
}

// handshakeDone marks the QUIC connection whose context is ctx as
// accepted and returns the done function of its place (one that does
// nothing if it has none).
func handshakeDone(ctx context.Context) func() {
	if p, ok := ctx.Value(handshakeKey{}).(*place); ok {
		p.accepted.Store(true)
		return p.done
	}
	return func() {}
}
