package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
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

// errHandshakeRate refuses a connection over the handshake rate.
var errHandshakeRate = errors.New("over --limits.agent-handshakes-per-second")

// handshakeLimiter is a token bucket for new agent connections. Refusals
// are logged at most once per second, with how many there were.
type handshakeLimiter struct {
	rate, burst float64
	log         *slog.Logger
	metrics     *metrics.Metrics

	mu       sync.Mutex
	tokens   float64
	last     time.Time // of the last refill
	refused  int       // since the last log line
	lastAddr net.Addr  // of the last refused connection
	logged   time.Time // when that line was written
}

func newHandshakeLimiter(rate float64, burst int, log *slog.Logger, m *metrics.Metrics) *handshakeLimiter {
	b := float64(burst)
	if burst <= 0 {
		b = max(2*rate, 1)
	}
	return &handshakeLimiter{rate: rate, burst: b, log: log, metrics: m, tokens: b, last: time.Now()}
}

// allow takes a token if there is one.
func (l *handshakeLimiter) allow(now time.Time, remote net.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	if l.tokens >= 1 {
		l.tokens--
		return true
	}
	l.refused++
	l.lastAddr = remote
	l.metrics.Session("rate_limited")
	if now.Sub(l.logged) >= time.Second {
		l.report(now)
	}
	return false
}

// report logs the refusals since the last line. l.mu must be held.
func (l *handshakeLimiter) report(now time.Time) {
	remote := ""
	if l.lastAddr != nil {
		remote = l.lastAddr.String()
	}
	l.log.Warn("agent handshakes refused", "refused", l.refused, "last_remote", remote,
		"reason", fmt.Sprintf("over %g new agent connections per second, burst %g (--limits.agent-handshakes-per-second)", l.rate, l.burst))
	l.refused = 0
	l.logged = now
}

// flush logs refusals not logged yet; nil-safe.
func (l *handshakeLimiter) flush() {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.refused > 0 {
		l.report(time.Now())
	}
}

// connContext is the quic.Transport's ConnContext: it refuses a new
// connection (CONNECTION_REFUSED, before any TLS work) over the rate.
func (l *handshakeLimiter) connContext(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
	if !l.allow(time.Now(), info.RemoteAddr) {
		return nil, errHandshakeRate
	}
	return ctx, nil
}
