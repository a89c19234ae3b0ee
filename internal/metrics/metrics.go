// Package metrics holds the Prometheus metrics of every role and the HTTP
// server that exposes them. A nil *Metrics records nothing.
package metrics

import (
	"runtime"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/reverse-http/reverse-http/internal/wire"
)

// Metrics are the collectors of one process. No label takes values from
// agent IDs, clients or destinations: every label has a fixed, small set.
type Metrics struct {
	Registry *prometheus.Registry

	AgentsConnected  prometheus.Gauge
	AgentsTransport  *prometheus.GaugeVec
	AgentConnections *prometheus.CounterVec // outcome: authenticated, auth_failed, handshake_failed, replaced, closed, duplicate, over_limit, rate_limited, busy
	TunnelsOpen      prometheus.Gauge
	Tunnels          *prometheus.CounterVec // kind: connect, forward, socks5, agent, invalid; outcome: see wire.Outcome
	TunnelBytes      *prometheus.CounterVec // direction: up (client to destination), down
	TunnelOpen       prometheus.Histogram   // seconds to open a tunnel through an agent
	TunnelsForwarded prometheus.Counter     // tunnels opened through another node
	StoreOps         *prometheus.CounterVec // op: get, get_multi, set, add, touch, cas, delete
	StoreErrors      *prometheus.CounterVec // op, as StoreOps
	BuildInfo        *prometheus.GaugeVec   // version, commit, go_version; always 1
	AuditDrops       prometheus.Counter     // audit lines dropped: the audit log's buffer was full
	// ClientTunnels counts opened tunnels and requests by client: the
	// client's name in the clients file, or auth.OtherClient. Bounded by
	// the names the file has held since start.
	ClientTunnels *prometheus.CounterVec
}

// Build information for the build-info gauge; the command line sets it
// from the values the linker gave it.
var (
	Version = "dev"
	Commit  = "none"
)

// New makes and registers the collectors, plus Go and process collectors.
func New() *Metrics {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Metrics{
		Registry: r,
		AgentsConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "reverse_http_agents_connected", Help: "Agents connected to this proxy, or 1 if this agent is connected.",
		}),
		AgentConnections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "reverse_http_agent_connections_total", Help: "Agent connections by outcome: authenticated, auth_failed (credential refused, or agent ID not named by its client certificate), handshake_failed (the TLS handshake failed or did not finish: a wrong certificate or protocol, not an agent, a timeout), replaced (another connection took its ID), closed (ended otherwise), duplicate (refused with 0x104: the ID is in use by a live agent), over_limit (--limits.agents), rate_limited (--limits.agent-handshakes-per-second), busy (--limits.agent-handshakes-in-flight).",
		}, []string{"outcome"}),
		TunnelsOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "reverse_http_tunnels_open", Help: "Tunnels open now.",
		}),
		Tunnels: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "reverse_http_tunnels_total", Help: "Client tunnels and requests (kind connect, forward, socks5; invalid: refused before it was parsed) and agent tunnels (kind agent) by outcome: ok, denied, offline, refused, timeout, unauthorized, bad_request, limited, error.",
		}, []string{"kind", "outcome"}),
		TunnelBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "reverse_http_tunnel_bytes_total", Help: "Bytes relayed by direction: up (client to destination), down (destination to client).",
		}, []string{"direction"}),
		TunnelOpen: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "reverse_http_tunnel_open_seconds",
			Help:    "Time to open a tunnel through an agent, including the agent's dial of the destination.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		AgentsTransport: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "reverse_http_agents_connected_by_transport", Help: "Agent connections up now by transport: quic, or tcp (the fallback where UDP is blocked). On an agent, its own connections.",
		}, []string{"transport"}),
		TunnelsForwarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "reverse_http_tunnels_forwarded_total", Help: "Tunnels opened through the proxy that holds the agent, from an lb or from a proxy that does not hold it.",
		}),
		StoreOps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "reverse_http_store_operations_total", Help: "Route store (memcached) operations by op, counted per server: get, get_multi, set, add, touch, cas, delete.",
		}, []string{"op"}),
		StoreErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "reverse_http_store_errors_total", Help: "Route store operations that got no answer (server down, timeout), by op.",
		}, []string{"op"}),
		BuildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "reverse_http_build_info", Help: "Always 1; the labels say which build runs.",
		}, []string{"version", "commit", "go_version"}),
		ClientTunnels: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "reverse_http_client_tunnels_total", Help: "Client tunnels and absolute-form requests opened, by client: its name in --auth.clients.file, or \"other\" for every other client (noauth, JWT, a certificate not in the file). Only names from the file, so the label set is bounded by it.",
		}, []string{"client"}),
		AuditDrops: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "reverse_http_audit_dropped_total", Help: "Audit log lines dropped because the audit log's buffer was full (--audit.file written too slowly).",
		}),
	}
	m.BuildInfo.WithLabelValues(Version, Commit, runtime.Version()).Set(1)
	r.MustRegister(m.AgentsConnected, m.AgentsTransport, m.AgentConnections, m.TunnelsOpen, m.Tunnels, m.TunnelBytes, m.TunnelOpen,
		m.TunnelsForwarded, m.StoreOps, m.StoreErrors, m.BuildInfo, m.AuditDrops, m.ClientTunnels)
	return m
}

// StoreOp counts a route store operation; it fits route.Memcached.Observe.
func (m *Metrics) StoreOp(op string, failed bool) {
	if m != nil {
		m.StoreOps.WithLabelValues(op).Inc()
		if failed {
			m.StoreErrors.WithLabelValues(op).Inc()
		}
	}
}

// Forwarded counts a tunnel opened through another node.
func (m *Metrics) Forwarded() {
	if m != nil {
		m.TunnelsForwarded.Inc()
	}
}

// Session counts an agent connection's authentication result.
func (m *Metrics) Session(outcome string) {
	if m != nil {
		m.AgentConnections.WithLabelValues(outcome).Inc()
	}
}

// Agents adds delta to the connected-agents gauge.
func (m *Metrics) Agents(delta float64) {
	if m != nil {
		m.AgentsConnected.Add(delta)
	}
}

// Transport adds delta to the connections gauge of transport.
func (m *Metrics) Transport(transport string, delta float64) {
	if m != nil {
		m.AgentsTransport.WithLabelValues(transport).Add(delta)
	}
}

// Opened records a tunnel that opened after d.
func (m *Metrics) Opened(d time.Duration) {
	if m != nil {
		m.TunnelOpen.Observe(d.Seconds())
		m.TunnelsOpen.Inc()
	}
}

// Closed records the end of an opened tunnel and its bytes.
func (m *Metrics) Closed(up, down int64) {
	if m != nil {
		m.TunnelsOpen.Dec()
		m.Bytes(up, down)
	}
}

// Bytes records bytes relayed outside a tunnel's Opened and Closed: those
// of a connection upgraded by an absolute-form request (101).
func (m *Metrics) Bytes(up, down int64) {
	if m != nil {
		m.TunnelBytes.WithLabelValues("up").Add(float64(up))
		m.TunnelBytes.WithLabelValues("down").Add(float64(down))
	}
}

// ClientTunnel counts a tunnel or request opened by client, a label from
// auth.Identity.Metric ("" counts as "other").
func (m *Metrics) ClientTunnel(client string) {
	if m != nil {
		if client == "" {
			client = "other"
		}
		m.ClientTunnels.WithLabelValues(client).Inc()
	}
}

// AuditDropped counts n audit lines dropped.
func (m *Metrics) AuditDropped(n int64) {
	if m != nil {
		m.AuditDrops.Add(float64(n))
	}
}

// Request counts one client request or agent tunnel by kind and the
// outcome of the proxy's (or agent's) own status: for an absolute-form
// request the origin answered, pass 200.
func (m *Metrics) Request(kind string, status int) {
	if m != nil {
		m.Tunnels.WithLabelValues(kind, wire.Outcome(status)).Inc()
	}
}

// Redacted replaces a secret flag value in RedactArgs.
const Redacted = "REDACTED"

// RedactArgs returns a copy of args with the value of every secret flag
// replaced by Redacted: flags whose last dotted part is "token", or whose
// name ends in "password" or "secret" (--auth.jwt.token,
// --http-proxy.tls.key-password), in both the --flag=value and the
// --flag value forms. A value "file:PATH" names a file, not a secret, and
// is kept.
func RedactArgs(args []string) []string {
	out := make([]string, len(args))
	copy(out, args)
	for i := 0; i < len(out); i++ {
		a := out[i]
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !secretFlag(name) {
			continue
		}
		if hasValue {
			if !strings.HasPrefix(value, "file:") {
				out[i] = a[:len(a)-len(value)] + Redacted
			}
			continue
		}
		if i+1 < len(out) && !strings.HasPrefix(out[i+1], "file:") {
			out[i+1] = Redacted
			i++
		}
	}
	return out
}

func secretFlag(name string) bool {
	name = strings.ToLower(name)
	last := name[strings.LastIndexByte(name, '.')+1:]
	return last == "token" || strings.HasSuffix(name, "password") || strings.HasSuffix(name, "secret")
}
