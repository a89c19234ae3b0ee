package agent

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reverse-http/reverse-http/internal/front"
	"github.com/reverse-http/reverse-http/internal/relay"
)

// openTunnel is a tunnel through this agent, for /tunnels.
type openTunnel struct {
	destination string
	since       time.Time
	relay       atomic.Pointer[relay.Tunnel]
}

// tunnelSet is the agent's open tunnels.
type tunnelSet struct {
	mu sync.Mutex
	m  map[*openTunnel]struct{}
}

func (s *tunnelSet) add(destination string, since time.Time) *openTunnel {
	t := &openTunnel{destination: destination, since: since}
	s.mu.Lock()
	if s.m == nil {
		s.m = map[*openTunnel]struct{}{}
	}
	s.m[t] = struct{}{}
	s.mu.Unlock()
	return t
}

func (s *tunnelSet) remove(t *openTunnel) {
	s.mu.Lock()
	delete(s.m, t)
	s.mu.Unlock()
}

// Tunnels returns up to limit of the tunnels open through this agent,
// oldest first (all if limit <= 0). Agent is this agent's ID when Config.ID
// names it; Client is empty: the proxy does not tell the agent who its
// client is. BytesUp went to the destination, BytesDown came from it.
func (a *Agent) Tunnels(limit int) []front.Tunnel {
	a.open.mu.Lock()
	all := make([]*openTunnel, 0, len(a.open.m))
	for t := range a.open.m {
		all = append(all, t)
	}
	a.open.mu.Unlock()
	slices.SortFunc(all, func(x, y *openTunnel) int { return x.since.Compare(y.since) })
	if limit > 0 && len(all) > limit {
		all = all[:limit]
	}
	out := make([]front.Tunnel, len(all))
	for i, t := range all {
		out[i] = front.Tunnel{Agent: a.cfg.ID, Destination: t.destination, Method: "CONNECT", Since: t.since.UTC()}
		if r := t.relay.Load(); r != nil {
			out[i].BytesUp, out[i].BytesDown = r.Bytes()
		}
	}
	return out
}
