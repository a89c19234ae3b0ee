// Package metrics holds the Prometheus metrics of every role and the HTTP
// server that exposes them. A nil *Metrics records nothing.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the collectors of one process.
type Metrics struct {
	Registry *prometheus.Registry

	AgentsConnected prometheus.Gauge
	AgentSessions   *prometheus.CounterVec // result: ok, auth_failed, replaced, duplicate, over_limit, rate_limited
	TunnelsActive   prometheus.Gauge
	Tunnels         *prometheus.CounterVec // kind: connect, forward, agent, invalid; status: HTTP status code
	TunnelBytes     *prometheus.CounterVec // direction: up (client to destination), down
	TunnelOpen      prometheus.Histogram   // seconds to open a tunnel through an agent
	AuditDrops      prometheus.Counter     // audit lines dropped: the audit log's buffer was full
}

// New makes and registers the collectors, plus Go and process collectors.
func New() *Metrics {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Metrics{
		Registry: r,
		AgentsConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "reverse_http_agents_connected", Help: "Agents connected to this proxy, or 1 if this agent is connected.",
		}),
		AgentSessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "reverse_http_agent_sessions_total", Help: "Agent connections by how they ended or began: ok, auth_failed (credential refused, or agent ID not named by its client certificate), replaced, duplicate (refused with 0x104: the ID is in use by a live agent), over_limit (--limits.agents), rate_limited (--limits.agent-handshakes-per-second).",
		}, []string{"result"}),
		TunnelsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "reverse_http_tunnels_active", Help: "Tunnels open now.",
		}),
		Tunnels: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "reverse_http_tunnels_total", Help: "Client requests and agent tunnels by kind (connect, forward, agent, invalid: refused before it was parsed) and HTTP status.",
		}, []string{"kind", "status"}),
		TunnelBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "reverse_http_tunnel_bytes_total", Help: "Bytes relayed by direction: up (client to destination), down (destination to client).",
		}, []string{"direction"}),
		TunnelOpen: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "reverse_http_tunnel_open_seconds",
			Help:    "Time to open a tunnel through an agent, including the agent's dial of the destination.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		AuditDrops: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "reverse_http_audit_dropped_total", Help: "Audit log lines dropped because the audit log's buffer was full (--audit.file written too slowly).",
		}),
	}
	r.MustRegister(m.AgentsConnected, m.AgentSessions, m.TunnelsActive, m.Tunnels, m.TunnelBytes, m.TunnelOpen, m.AuditDrops)
	return m
}

// Session counts an agent connection's authentication result.
func (m *Metrics) Session(result string) {
	if m != nil {
		m.AgentSessions.WithLabelValues(result).Inc()
	}
}

// Agents adds delta to the connected-agents gauge.
func (m *Metrics) Agents(delta float64) {
	if m != nil {
		m.AgentsConnected.Add(delta)
	}
}

// Opened records a tunnel that opened after d.
func (m *Metrics) Opened(d time.Duration) {
	if m != nil {
		m.TunnelOpen.Observe(d.Seconds())
		m.TunnelsActive.Inc()
	}
}

// Closed records the end of an opened tunnel and its bytes.
func (m *Metrics) Closed(up, down int64) {
	if m != nil {
		m.TunnelsActive.Dec()
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

// AuditDropped counts n audit lines dropped.
func (m *Metrics) AuditDropped(n int64) {
	if m != nil {
		m.AuditDrops.Add(float64(n))
	}
}

// Request counts one client request or agent tunnel by kind and status.
func (m *Metrics) Request(kind string, status int) {
	if m != nil {
		m.Tunnels.WithLabelValues(kind, strconv.Itoa(status)).Inc()
	}
}

// Serve serves /metrics, /healthz and Go's /debug/pprof/ on addr until ctx
// ends. Bind it to a private address: profiles reveal internals.
func (m *Metrics) Serve(ctx context.Context, addr string, log *slog.Logger) error {
	ln, err := Listen(addr)
	if err != nil {
		return err
	}
	return m.ServeListener(ctx, ln, log)
}

// Listen binds the metrics listener on addr (TCP), for ServeListener; a
// caller that must know the bound address before serving (the agent
// refuses tunnels to it) binds first.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics.listen-address: %w", err)
	}
	return ln, nil
}

// ServeListener is Serve on a bound listener, which it closes. The
// command line at /debug/pprof/cmdline is the process's with the values of
// secret flags (tokens, passwords) replaced; see RedactArgs.
func (m *Metrics) ServeListener(ctx context.Context, ln net.Listener, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Info("metrics listening", "address", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("metrics: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// cmdline is pprof.Cmdline with secrets redacted: the running program's
// command line, arguments separated by NUL bytes.
func cmdline(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprint(w, strings.Join(RedactArgs(os.Args), "\x00"))
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
