package cli

import (
	"fmt"
	"time"

	"github.com/reverse-http/reverse-http/internal/front"
	"github.com/reverse-http/reverse-http/internal/proxy"
)

// HTTPProxyLimits are --http-proxy.max-header-bytes and
// --http-proxy.read-header-timeout on proxy and lb.
type HTTPProxyLimits struct {
	MaxHeaderBytes    int           `name:"max-header-bytes" default:"65536" help:"Largest request header a client may send; larger ones get 431."`
	ReadHeaderTimeout time.Duration `name:"read-header-timeout" default:"10s" help:"Time a client has to send a request's header; a slower one is disconnected (slow-loris)."`
}

// ClientLimits are the --limits.* flags of the client side, on proxy and lb.
//
// The default of --limits.tunnels-per-client is high because one address
// is often many clients (a NAT, a CI farm, an lb in front of proxies) and
// because the 10,000-tunnel scale test (e2e TestManyTunnels) comes from
// one address; it still keeps one address from taking every descriptor of
// a proxy with a usual limit of 65536 or more.
type ClientLimits struct {
	TunnelsPerClient  int           `name:"tunnels-per-client" default:"15000" help:"CONNECT tunnels and absolute-form requests one client IP address may have open at once; past it 429 (0 = no limit)."`
	TunnelIdleTimeout time.Duration `name:"tunnel-idle-timeout" default:"0s" help:"Close a tunnel (CONNECT, or a keep-alive connection through an agent for absolute-form requests) that moved no byte either way for this long (0 = never)."`
}

// ProxyLimits are the --limits.* flags of the proxy.
//
// The defaults leave room above what we test and measure: 10,000 tunnels
// through one agent (TestManyTunnels), 10,000 agents on one proxy
// connecting at about 1,000 per second on a 2-vCPU machine (rh-bench
// agents10k), so a 2,000/s bucket of 4,000 only bites on a reconnect storm
// or a flood of handshakes.
type ProxyLimits struct {
	ClientLimits             `embed:""`
	TunnelsPerAgent          int     `name:"tunnels-per-agent" default:"20000" help:"Tunnels open at once through one agent, counted on the proxy that holds it (forwarded ones included); past it 429 (0 = no limit)."`
	Agents                   int     `name:"agents" default:"20000" help:"Agents connected to this proxy at once; past it a new agent is refused with QUIC application error 0x110 and retries with backoff (0 = no limit)."`
	AgentHandshakesPerSecond float64 `name:"agent-handshakes-per-second" default:"2000" help:"New agent connections per second (a token bucket holding twice as many); past it a connection is refused before its TLS handshake (0 = no limit)."`
	AgentHandshakesInFlight  int     `name:"agent-handshakes-in-flight" default:"512" help:"New agent connections being handshaken and authenticated at once; past it a connection is refused before its TLS handshake and the agent retries with backoff, so that a reconnect storm cannot starve the connected agents (0 = no limit)."`
}

func (l HTTPProxyLimits) check() error {
	if l.MaxHeaderBytes <= 0 {
		return fmt.Errorf("--http-proxy.max-header-bytes: must be positive, got %d", l.MaxHeaderBytes)
	}
	if l.ReadHeaderTimeout <= 0 {
		return fmt.Errorf("--http-proxy.read-header-timeout: must be positive, got %s", l.ReadHeaderTimeout)
	}
	return nil
}

// check validates the client-side limits and the header flags h.
func (l ClientLimits) check(h HTTPProxyLimits) error {
	if err := h.check(); err != nil {
		return err
	}
	if l.TunnelsPerClient < 0 {
		return fmt.Errorf("--limits.tunnels-per-client: must not be negative (0 = no limit), got %d", l.TunnelsPerClient)
	}
	return checkDuration("limits.tunnel-idle-timeout", l.TunnelIdleTimeout)
}

// check validates the proxy's limits and the header flags h.
func (l ProxyLimits) check(h HTTPProxyLimits) error {
	if err := l.ClientLimits.check(h); err != nil {
		return err
	}
	for flag, n := range map[string]int{"tunnels-per-agent": l.TunnelsPerAgent, "agents": l.Agents, "agent-handshakes-in-flight": l.AgentHandshakesInFlight} {
		if n < 0 {
			return fmt.Errorf("--limits.%s: must not be negative (0 = no limit), got %d", flag, n)
		}
	}
	if l.AgentHandshakesPerSecond < 0 {
		return fmt.Errorf("--limits.agent-handshakes-per-second: must not be negative (0 = no limit), got %g", l.AgentHandshakesPerSecond)
	}
	return nil
}

// frontConfig sets the client-side limits in cfg.
func (l ClientLimits) frontConfig(h HTTPProxyLimits, cfg front.Config) front.Config {
	cfg.MaxTunnelsPerClient = l.TunnelsPerClient
	cfg.TunnelIdleTimeout = l.TunnelIdleTimeout
	cfg.MaxHeaderBytes = h.MaxHeaderBytes
	cfg.ReadHeaderTimeout = h.ReadHeaderTimeout
	return cfg
}

// proxyConfig sets the agent-side limits in cfg.
func (l ProxyLimits) proxyConfig(cfg proxy.Config) proxy.Config {
	cfg.MaxTunnelsPerAgent = l.TunnelsPerAgent
	cfg.MaxAgents = l.Agents
	cfg.HandshakesPerSecond = l.AgentHandshakesPerSecond
	cfg.HandshakesInFlight = l.AgentHandshakesInFlight
	return cfg
}
