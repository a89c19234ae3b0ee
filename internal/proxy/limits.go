package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
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
// packet. Refusals are logged at most once per second, with how many
// there were.
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
func (l *handshakeLimiter) admit(now time.Time, remote net.Addr) (done func(), err error) {
	if l == nil {
		return func() {}, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
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
		if now.Sub(l.logged) >= time.Second {
			l.report(now)
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

// flush logs refusals not logged yet; nil-safe.
func (l *handshakeLimiter) flush() {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.refusedBusy+l.refusedRate > 0 {
		l.report(time.Now())
	}
}

// handshakeDoneKey holds, in an admitted QUIC connection's context, the
// done function of its place.
type handshakeDoneKey struct{}

// connContext is the quic.Transport's ConnContext: it refuses a new
// connection (CONNECTION_REFUSED, before any TLS work) that admit
// refuses. The place of one admitted is given back when the connection
// ends (ctx is cancelled then) or by handshakeDone.
func (l *handshakeLimiter) connContext(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
	done, err := l.admit(time.Now(), info.RemoteAddr)
	if err != nil {
		return nil, err
	}
	context.AfterFunc(ctx, done)
	return context.WithValue(ctx, handshakeDoneKey{}, done), nil
}

// handshakeDone is the done function in ctx, or one that does nothing.
func handshakeDone(ctx context.Context) func() {
	if done, ok := ctx.Value(handshakeDoneKey{}).(func()); ok {
		return done
	}
	return func() {}
}
