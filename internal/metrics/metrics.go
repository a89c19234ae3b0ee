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
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the collectors of one process.
type Metrics struct {
	Registry *prometheus.Registry

	AgentsConnected prometheus.Gauge
	AgentSessions   *prometheus.CounterVec // result: ok, auth_failed, replaced, duplicate
	TunnelsActive   prometheus.Gauge
	Tunnels         *prometheus.CounterVec // kind: connect, forward, agent; status: HTTP status code
	TunnelBytes     *prometheus.CounterVec // direction: up (client to destination), down
	TunnelOpen      prometheus.Histogram   // seconds to open a tunnel through an agent
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
			Name: "reverse_http_agent_sessions_total", Help: "Agent connections by how authentication ended: ok, auth_failed, replaced, duplicate.",
		}, []string{"result"}),
		TunnelsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "reverse_http_tunnels_active", Help: "Tunnels open now.",
		}),
		Tunnels: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "reverse_http_tunnels_total", Help: "Client requests and agent tunnels by kind (connect, forward, agent) and HTTP status.",
		}, []string{"kind", "status"}),
		TunnelBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "reverse_http_tunnel_bytes_total", Help: "Bytes relayed by direction: up (client to destination), down (destination to client).",
		}, []string{"direction"}),
		TunnelOpen: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "reverse_http_tunnel_open_seconds",
			Help:    "Time to open a tunnel through an agent, including the agent's dial of the destination.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
	}
	r.MustRegister(m.AgentsConnected, m.AgentSessions, m.TunnelsActive, m.Tunnels, m.TunnelBytes, m.TunnelOpen)
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
		m.TunnelBytes.WithLabelValues("up").Add(float64(up))
		m.TunnelBytes.WithLabelValues("down").Add(float64(down))
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
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--metrics.listen-address: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
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
