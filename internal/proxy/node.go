package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/reverse-http/reverse-http/internal/admin"
	"github.com/reverse-http/reverse-http/internal/audit"
	"github.com/reverse-http/reverse-http/internal/front"
	"github.com/reverse-http/reverse-http/internal/lb"
	"github.com/reverse-http/reverse-http/internal/metrics"
	"github.com/reverse-http/reverse-http/internal/reload"
	"github.com/reverse-http/reverse-http/internal/route"
	"github.com/reverse-http/reverse-http/internal/run"
)

// NodeConfig is everything a proxy node runs with.
type NodeConfig struct {
	// Agents configures the agent server; the Node sets its OnAgent and
	// Metrics.
	Agents Config
	// Front configures the client front; the Node sets its Dialer,
	// Metrics and ClusterKey.
	Front front.Config
	// HTTPAddr is where clients connect; HTTPTLS, if not nil, makes that
	// port HTTPS.
	HTTPAddr string
	HTTPTLS  *tls.Config
	// SOCKS5Addr, if not empty, is where SOCKS5 clients connect: the
	// same front (auth, allowlist, limits, routing) over SOCKS5.
	SOCKS5Addr string
	// Cluster, if not nil, publishes routes to this proxy's agents and
	// forwards clients of agents held elsewhere.
	Cluster *ClusterConfig
	// AdminAddr, if not empty, serves the admin endpoint (health,
	// readiness, metrics, /agents, /tunnels, the status page); with
	// Pprof also Go's profiler.
	AdminAddr string
	Pprof     bool
	// Metrics, if not nil, is where the node records; nil: NewNode makes
	// one.
	Metrics *metrics.Metrics
	// Audit, if not nil, is the audit log: the Node sets Front.Audit to
	// it and Run runs its writer, stopped last.
	Audit *audit.Log
	// ShutdownTimeout bounds the whole stop, counted from the end of
	// Run's context; zero means 5s.
	ShutdownTimeout time.Duration
	// Reload, if not nil, is called on SIGHUP while Run runs: the
	// update's allowlist and authenticator replace the client front's and
	// the agent server's (see package reload). Nil: SIGHUP is not
	// handled.
	Reload reload.Load
	// WatchAuth, if not nil, watches the auth files (clients file,
	// revocation list) until its context ends and calls changed after
	// it put a new one in force: the client front then ends the tunnels
	// of clients that no longer hold.
	WatchAuth func(ctx context.Context, changed func()) error
}

// ClusterConfig is a proxy's part in an HA cluster.
type ClusterConfig struct {
	Store *route.Memcached
	// Addr is the address routes name for this proxy's agents; empty
	// means the HTTP listener's port on this host's name (see SelfAddress).
	Addr string
	TTL  time.Duration
	// ReleaseTimeout bounds releasing the routes on shutdown.
	ReleaseTimeout time.Duration
	// Key is the cluster key: it signs forwarded tunnels and verifies
	// those forwarded here. Store holds the same key for node leases.
	Key []byte
	// ForwardTLS, if not nil, is used to reach other proxies' HTTP ports;
	// ForwardDialTimeout bounds a forwarded tunnel's opening.
	ForwardTLS         *tls.Config
	ForwardDialTimeout time.Duration
}

// Node is the proxy role: the agent server, the client front and, in a
// cluster, the route publisher, plus the metrics server. Run starts them
// and stops them in order.
type Node struct {
	cfg NodeConfig
	log *slog.Logger

	metrics *metrics.Metrics
	agents  *Server
	front   *front.Handler
	hs      *http.Server
	ln      net.Listener  // clients
	socks   *front.SOCKS5 // nil without SOCKS5Addr
	adminLn net.Listener  // nil without AdminAddr
	routes  *Routes       // nil without a cluster
	fwd     *lb.Forwarder // nil without a cluster
	release chan struct{} // closed once drained: the routes are released
	self    string        // this proxy's address, for agents and routes
	serving atomic.Bool   // Run serves and has not begun to stop
}

// NewNode makes a proxy node; Listen binds it and Run runs it.
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

// Listen binds the agent, client, SOCKS5 and admin listeners. An error is
// a *run.ListenError naming the listener ("agents", "agents-tcp",
// "clients", "socks5", "admin"), and nothing stays bound.
func (n *Node) Listen() (err error) {
	acfg := n.cfg.Agents
	acfg.Metrics = n.metrics
	acfg.OnAgent = func(id string, up bool) {
		if !up {
			n.front.Forget(id)
		}
		if n.routes != nil {
			n.routes.Notify(id, up)
		}
	}
	// Idle keep-alive connections through a retired agent connection
	// would keep it open; new requests open new ones through the new.
	acfg.OnRetire = func(id string) { n.front.Forget(id) }
	n.agents = New(acfg, n.log.With("component", "agent-server"))
	if err := n.agents.Listen(); err != nil {
		var tcp *TCPListenError
		if errors.As(err, &tcp) {
			return &run.ListenError{Part: "agents-tcp", Err: tcp.Err}
		}
		return &run.ListenError{Part: "agents", Err: errors.Unwrap(err)}
	}
	defer func() {
		if err != nil {
			n.agents.Close()
		}
	}()
	if n.ln, err = net.Listen("tcp", n.cfg.HTTPAddr); err != nil {
		return &run.ListenError{Part: "clients", Err: err}
	}
	defer func() {
		if err != nil {
			n.ln.Close()
		}
	}()

	fcfg := n.cfg.Front
	fcfg.Metrics = n.metrics
	fcfg.Audit = n.cfg.Audit
	fcfg.Dialer = n.agents
	if c := n.cfg.Cluster; c != nil {
		c.Store.Observe(n.metrics.StoreOp)
		self := c.Addr
		if self == "" {
			if self, err = SelfAddress(n.cfg.HTTPAddr, n.ln.Addr()); err != nil {
				return err
			}
		}
		n.self = self
		n.release = make(chan struct{})
		n.routes = NewRoutes(RoutesConfig{Store: c.Store, Addr: self, TTL: c.TTL, ReleaseTimeout: c.ReleaseTimeout, ReleaseAfter: n.release},
			n.agents, n.log.With("component", "routes"))
		fcfg.ClusterKey = c.Key
		n.fwd = &lb.Forwarder{
			Store: c.Store, Self: []string{self, n.ln.Addr().String()}, TLS: c.ForwardTLS,
			DialTimeout: c.ForwardDialTimeout, ClusterKey: c.Key, Metrics: n.metrics,
			Log: n.log.With("component", "forwarder"),
		}
		fcfg.Dialer = &lb.Cluster{Local: n.agents, Forward: n.fwd}
		n.log.Info("route store", "type", "memcached", "servers", strings.Join(c.Store.Servers(), ","), "route", self,
			"ttl", c.TTL.String(), "cluster_key", len(c.Key) > 0)
	}
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
	return nil
}

// Ready reports why the node cannot do its job now, or nil: it serves
// both listeners, is not shutting down and, in a cluster, the route store
// answered within the last renewal period (TTL/3, and a second).
func (n *Node) Ready() error {
	if !n.serving.Load() {
		return errors.New("not serving: starting or shutting down")
	}
	if c := n.cfg.Cluster; c != nil {
		period := c.TTL/3 + time.Second
		last := c.Store.LastAnswer()
		if last.IsZero() {
			return errors.New("the route store has not answered yet")
		}
		if ago := time.Since(last); ago > period {
			return fmt.Errorf("the route store has not answered for %s (renewal period %s)", ago.Round(time.Second), c.TTL/3)
		}
	}
	return nil
}

// HTTPAddr is the bound client listener's address; AgentAddr the agent
// server's. Listen must have succeeded.
func (n *Node) HTTPAddr() net.Addr  { return n.ln.Addr() }
func (n *Node) AgentAddr() net.Addr { return n.agents.Addr() }

// SOCKS5Addr is the bound SOCKS5 listener's address, nil without one.
func (n *Node) SOCKS5Addr() net.Addr {
	if n.socks == nil {
		return nil
	}
	return n.socks.Addr()
}

// Run binds the listeners if Listen has not, and serves until ctx ends.
// Then it stops, within ShutdownTimeout counted from the end of ctx:
//
//   - From the end of ctx /readyz says 503, new clients and agents are
//     refused, and the client front drains: requests and tunnels get until
//     the timeout (in a cluster less ReleaseTimeout); those left are
//     closed. Then the agent connections are closed.
//   - In a cluster the agents are also told to move at once (they connect
//     to another proxy while their tunnels here go on), the node lease is
//     withdrawn at once, and the routes still naming this proxy are
//     released after the drain.
//   - The audit log's writer, if any, stops last: it writes the lines of
//     the tunnels closed at the deadline too.
//
// It returns once every goroutine it started has ended, or with a
// *run.TimeoutError if a part did not stop in time.
func (n *Node) Run(ctx context.Context) error {
	if n.ln == nil {
		if err := n.Listen(); err != nil {
			return err
		}
	}
	// drained ends once the client front has drained: then the agent
	// connections close and the admin endpoint, which answered 503 on
	// /readyz meanwhile, stops.
	drained, finish := context.WithCancel(context.WithoutCancel(ctx))
	defer finish()
	drainTimeout := n.cfg.ShutdownTimeout
	if n.routes != nil {
		// Keep time to release the routes after the drain.
		drainTimeout = max(n.cfg.ShutdownTimeout-n.routes.cfg.ReleaseTimeout, n.cfg.ShutdownTimeout/2)
	}
	parts := []func(context.Context) error{
		func(context.Context) error { return n.agents.Run(drained) },
		func(ctx context.Context) error {
			// The drain starts when this part's context ends: at the
			// signal, or when another part failed.
			stopDrain := context.AfterFunc(ctx, func() {
				n.serving.Store(false)
				n.log.Info("draining: no new clients or agents; connected agents are told to move; tunnels get until the shutdown timeout",
					"timeout", drainTimeout.String())
				// Standalone, the agents have nowhere to move to: they
				// reconnect once this proxy is back.
				n.agents.Drain("proxy "+n.self+" is draining", n.routes != nil)
			})
			defer func() {
				stopDrain()
				finish()
				if n.release != nil {
					close(n.release)
				}
			}()
			if err := front.Run(ctx, n.hs, n.ln, drainTimeout); err != nil {
				return fmt.Errorf("http proxy: %w", err)
			}
			return nil
		},
	}
	if n.socks != nil {
		// Stops accepting at the drain's start; its tunnels drain with
		// the HTTP front's.
		parts = append(parts, n.socks.Run)
	}
	if n.routes != nil {
		parts = append(parts, n.routes.Run, func(ctx context.Context) error {
			return n.fwd.WatchMembers(ctx, func(proxy string) { n.front.EvictVia(proxy) })
		})
	}
	if n.adminLn != nil {
		parts = append(parts, func(context.Context) error {
			return admin.Serve(drained, n.adminLn, admin.Config{
				Role: "proxy", Metrics: n.metrics, Ready: n.Ready, Pprof: n.cfg.Pprof,
				Agents: func() any { return n.agents.AgentInfos() }, Tunnels: n.front.Tunnels,
			}, n.log.With("component", "admin"))
		})
	}
	if n.cfg.Reload != nil {
		parts = append(parts, func(ctx context.Context) error {
			return reload.Watch(ctx, n.log, n.cfg.Reload, n.apply)
		})
	}
	if n.cfg.WatchAuth != nil {
		parts = append(parts, func(ctx context.Context) error {
			return n.cfg.WatchAuth(ctx, func() { n.front.Revalidate() })
		})
	}
	n.serving.Store(true)
	// The audit log's writer stops last, once the front has drained and
	// recorded the tunnels it closed.
	return run.Outlast(ctx, n.cfg.Audit.Run, func(ctx context.Context) error {
		return run.Bounded(ctx, n.cfg.ShutdownTimeout, parts...)
	})
}

// apply swaps in a reloaded configuration's parts: requests and agent
// handshakes from now on use them; tunnels and agents stay connected.
func (n *Node) apply(u *reload.Update) {
	n.front.SetAllow(u.Allow)
	n.front.SetAuth(u.Auth)
	n.agents.SetAuth(u.Auth)
	// Once u.Apply put the re-read auth files in force, end the tunnels
	// of clients that no longer hold.
	u.Then(func() { n.front.Revalidate() })
}

// SelfAddress is the address a proxy whose client listener was asked for
// listen and bound at bound registers for its agents: listen's host (this
// host's name if it is empty or unspecified) and bound's port if listen's
// is 0.
func SelfAddress(listen string, bound net.Addr) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", err
	}
	if port == "0" {
		_, port, _ = net.SplitHostPort(bound.String())
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		if host, err = os.Hostname(); err != nil {
			return "", fmt.Errorf("no route address given, and no host name: %w", err)
		}
	}
	return net.JoinHostPort(host, port), nil
}

// Agents is the node's agent server; Front its client front. Listen must
// have succeeded.
func (n *Node) Agents() *Server       { return n.agents }
func (n *Node) Front() *front.Handler { return n.front }
