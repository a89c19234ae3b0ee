package lb

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/reverse-http/reverse-http/internal/admin"
	"github.com/reverse-http/reverse-http/internal/audit"
	"github.com/reverse-http/reverse-http/internal/front"
	"github.com/reverse-http/reverse-http/internal/metrics"
	"github.com/reverse-http/reverse-http/internal/reload"
	"github.com/reverse-http/reverse-http/internal/route"
	"github.com/reverse-http/reverse-http/internal/run"
)

// NodeConfig is everything an lb node runs with.
type NodeConfig struct {
	// Front configures the client front; the Node sets its Dialer,
	// Metrics and ClusterKey.
	Front front.Config
	// HTTPAddr is where clients connect; HTTPTLS, if not nil, makes that
	// port HTTPS.
	HTTPAddr string
	HTTPTLS  *tls.Config
	// SOCKS5Addr, if not empty, is where SOCKS5 clients connect: the
	// same front (auth, allowlist, limits, forwarding) over SOCKS5.
	SOCKS5Addr string
	Store      *route.Memcached
	// Key is the cluster key: it signs the tunnels this node forwards.
	Key []byte
	// ForwardTLS, if not nil, is used to reach the proxies' HTTP ports;
	// ForwardDialTimeout bounds a forwarded tunnel's opening.
	ForwardTLS         *tls.Config
	ForwardDialTimeout time.Duration
	// AdminAddr, if not empty, serves the admin endpoint (health,
	// readiness, metrics, /tunnels, the status page); with Pprof also
	// Go's profiler.
	AdminAddr string
	Pprof     bool
	// Metrics, if not nil, is where the node records; nil: NewNode makes
	// one.
	Metrics *metrics.Metrics
	// Audit, if not nil, is the audit log: the Node sets Front.Audit to
	// it and Run runs its writer, stopped last.
	Audit *audit.Log
	// ShutdownTimeout bounds the stop, counted from the end of Run's
	// context; zero means 5s.
	ShutdownTimeout time.Duration
	// Reload, if not nil, is called on SIGHUP while Run runs: the
	// update's allowlist and authenticator replace the client front's
	// (see package reload). Nil: SIGHUP is not handled.
	Reload reload.Load
	// WatchAuth, if not nil, watches the auth files (clients file,
	// revocation list) until its context ends and calls changed after
	// it put a new one in force: the client front then ends the tunnels
	// of clients that no longer hold.
	WatchAuth func(ctx context.Context, changed func()) error
}

// Node is the lb role: the client front, forwarding every tunnel to the
// proxy that holds its agent, plus the metrics server. Run owns them.
type Node struct {
	cfg     NodeConfig
	log     *slog.Logger
	metrics *metrics.Metrics
	front   *front.Handler
	hs      *http.Server
	ln      net.Listener
	socks   *front.SOCKS5 // nil without SOCKS5Addr
	fwd     *Forwarder
	adminLn net.Listener // nil without AdminAddr
	serving atomic.Bool  // Run serves and has not begun to stop
}

// NewNode makes an lb node; Listen binds it and Run runs it.
func NewNode(cfg NodeConfig, log *slog.Logger) *Node {
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 5 * time.Second
	}
	m := cfg.Metrics
	if m == nil {
		m = metrics.New()
	}
	return &Node{cfg: cfg, log: log, metrics: m}
}

// Listen binds the client, SOCKS5 and admin listeners. An error is a
// *run.ListenError naming the listener ("clients", "socks5", "admin"),
// and nothing stays bound.
func (n *Node) Listen() (err error) {
	if n.ln, err = net.Listen("tcp", n.cfg.HTTPAddr); err != nil {
		return &run.ListenError{Part: "clients", Err: err}
	}
	defer func() {
		if err != nil {
			n.ln.Close()
		}
	}()
	n.cfg.Store.Observe(n.metrics.StoreOp)
	fcfg := n.cfg.Front
	fcfg.Metrics = n.metrics
	fcfg.Audit = n.cfg.Audit
	fcfg.ClusterKey = n.cfg.Key
	n.fwd = &Forwarder{
		Store:       n.cfg.Store,
		Self:        []string{n.cfg.HTTPAddr, n.ln.Addr().String()},
		TLS:         n.cfg.ForwardTLS,
		DialTimeout: n.cfg.ForwardDialTimeout,
		ClusterKey:  n.cfg.Key,
		Metrics:     n.metrics,
		Log:         n.log.With("component", "forwarder"),
	}
	fcfg.Dialer = n.fwd
	n.front = front.New(fcfg, n.log.With("component", "http-proxy"))
	n.hs = front.NewServer(n.cfg.HTTPAddr, n.front, n.cfg.HTTPTLS, n.log)
	if n.socks, err = front.ListenSOCKS5(n.cfg.SOCKS5Addr, n.front, n.log); err != nil {
		return err
	}
	defer func() {
		if err != nil && n.socks != nil {
			n.socks.Close()
		}
	}()
	if n.cfg.AdminAddr != "" {
		if n.adminLn, err = admin.Listen(n.cfg.AdminAddr); err != nil {
			return &run.ListenError{Part: "admin", Err: err}
		}
	}
	n.log.Info("route store", "type", "memcached", "servers", strings.Join(n.cfg.Store.Servers(), ","), "cluster_key", len(n.cfg.Key) > 0)
	return nil
}

// HTTPAddr is the bound client listener's address; Listen must have
// succeeded.
func (n *Node) HTTPAddr() net.Addr { return n.ln.Addr() }

// SOCKS5Addr is the bound SOCKS5 listener's address, nil without one.
func (n *Node) SOCKS5Addr() net.Addr {
	if n.socks == nil {
		return nil
	}
	return n.socks.Addr()
}

// Run binds the listeners if Listen has not, and serves until ctx ends.
// Then it stops accepting clients and lets requests and tunnels finish for
// up to ShutdownTimeout; those left are closed. It returns once every
// goroutine it started has ended, or with a *run.TimeoutError if a part
// did not stop in time.
func (n *Node) Run(ctx context.Context) error {
	if n.ln == nil {
		if err := n.Listen(); err != nil {
			return err
		}
	}
	parts := []func(context.Context) error{
		func(ctx context.Context) error {
			if err := front.Run(ctx, n.hs, n.ln, n.cfg.ShutdownTimeout); err != nil {
				return fmt.Errorf("http proxy: %w", err)
			}
			return nil
		},
	}
	if n.socks != nil {
		parts = append(parts, n.socks.Run)
	}
	parts = append(parts, func(ctx context.Context) error {
		return n.fwd.WatchMembers(ctx, func(proxy string) { n.front.EvictVia(proxy) })
	})
	if n.adminLn != nil {
		parts = append(parts, func(ctx context.Context) error {
			return admin.Serve(ctx, n.adminLn, admin.Config{
				Role: "lb", Metrics: n.metrics, Ready: n.Ready, Pprof: n.cfg.Pprof, Tunnels: n.front.Tunnels,
			}, n.log.With("component", "admin"))
		})
	}
	if n.cfg.Reload != nil {
		parts = append(parts, func(ctx context.Context) error {
			return reload.Watch(ctx, n.log, n.cfg.Reload, func(u *reload.Update) {
				n.front.SetAllow(u.Allow)
				n.front.SetAuth(u.Auth)
				// Once u.Apply put the re-read auth files in force,
				// end the tunnels of clients that no longer hold.
				u.Then(func() { n.front.Revalidate() })
			})
		})
	}
	if n.cfg.WatchAuth != nil {
		parts = append(parts, func(ctx context.Context) error {
			return n.cfg.WatchAuth(ctx, func() { n.front.Revalidate() })
		})
	}
	n.serving.Store(true)
	stopServing := context.AfterFunc(ctx, func() { n.serving.Store(false) })
	defer stopServing()
	// The audit log's writer stops last, once the front has drained and
	// recorded the tunnels it closed.
	return run.Outlast(ctx, n.cfg.Audit.Run, func(ctx context.Context) error {
		return run.Bounded(ctx, n.cfg.ShutdownTimeout, parts...)
	})
}

// Ready reports why the node cannot do its job now, or nil: it serves,
// is not shutting down, and a route store server answers (asked now,
// within a second).
func (n *Node) Ready() error {
	if !n.serving.Load() {
		return errors.New("not serving: starting or shutting down")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := n.cfg.Store.Ping(ctx); err != nil {
		return fmt.Errorf("route store unreachable: %v", err)
	}
	return nil
}

// Front is the node's client front; Listen must have succeeded.
func (n *Node) Front() *front.Handler { return n.front }
