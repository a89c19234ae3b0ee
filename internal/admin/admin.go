// Package admin is the operators' HTTP endpoint of every role: health,
// readiness, Prometheus metrics, the connected agents and open tunnels as
// JSON, a status page, and optionally Go's profiler. Bind it to a private
// address.
package admin

import (
	"context"
	_ "embed"
	"encoding/json"
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

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/reverse-http/reverse-http/internal/front"
	"github.com/reverse-http/reverse-http/internal/metrics"
)

// Config says what one role's admin endpoint serves.
type Config struct {
	// Role is "proxy", "lb" or "agent", for the status page.
	Role    string
	Metrics *metrics.Metrics
	// Ready reports why the node cannot do its job now (503 on /readyz
	// with that reason), or nil (200). Nil: always ready.
	Ready func() error
	// Agents, if not nil, lists the connected agents on /agents, sorted
	// by ID (a slice of a JSON-encodable type).
	Agents func() any
	// Tunnels, if not nil, lists up to limit open tunnels on /tunnels.
	Tunnels func(limit int) []front.Tunnel
	// Pprof serves Go's profiler on /debug/pprof/.
	Pprof bool
}

// DefaultTunnelLimit is how many tunnels /tunnels lists without ?limit=.
const DefaultTunnelLimit = 1000

//go:embed status.html
var statusPage []byte

// Handler serves cfg's endpoints.
func Handler(cfg Config) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { text(w, http.StatusOK, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if cfg.Ready != nil {
			if err := cfg.Ready(); err != nil {
				text(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
				return
			}
		}
		text(w, http.StatusOK, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Metrics.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /agents", func(w http.ResponseWriter, _ *http.Request) {
		if cfg.Agents == nil {
			text(w, http.StatusNotFound, "a "+cfg.Role+" holds no agents: /agents is served by proxies")
			return
		}
		writeJSON(w, cfg.Agents())
	})
	mux.HandleFunc("GET /tunnels", func(w http.ResponseWriter, r *http.Request) {
		if cfg.Tunnels == nil {
			text(w, http.StatusNotFound, "no tunnels are listed on a "+cfg.Role)
			return
		}
		limit := DefaultTunnelLimit
		if v := r.URL.Query().Get("limit"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				text(w, http.StatusBadRequest, fmt.Sprintf("limit: want a whole number of at least 1, got %q", clip(v)))
				return
			}
			limit = n
		}
		writeJSON(w, cfg.Tunnels(limit))
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		// The page runs its own script only; nothing from elsewhere.
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
		page := strings.ReplaceAll(string(statusPage), "{{ROLE}}", cfg.Role)
		host, _ := os.Hostname()
		page = strings.ReplaceAll(page, "{{NODE}}", htmlEscape(host))
		w.Write([]byte(page))
	})
	if cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// Listen binds the admin listener (TCP).
func Listen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

// Serve serves cfg on ln until ctx ends; it closes ln and returns once
// its goroutines have ended.
func Serve(ctx context.Context, ln net.Listener, cfg Config, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           Handler(cfg),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	log.Info("admin listening", "address", ln.Addr().String(), "pprof", cfg.Pprof)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("admin: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close() // a profile or trace in progress
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func text(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	fmt.Fprintln(w, msg)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// cmdline is pprof.Cmdline with secrets redacted.
func cmdline(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprint(w, strings.Join(metrics.RedactArgs(os.Args), "\x00"))
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

func htmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&#39;").Replace(s)
}
