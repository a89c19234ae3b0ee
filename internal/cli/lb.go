package cli

import (
	"time"

	"github.com/reverse-http/reverse-http/internal/front"
	"github.com/reverse-http/reverse-http/internal/lb"
	"github.com/reverse-http/reverse-http/internal/metrics"
)

// LBCmd is `reverse-http lb`: the client front end of an HA cluster. It
// authenticates clients like a proxy and forwards each tunnel to the proxy
// that holds the agent, as memcached says.
type LBCmd struct {
	HTTPProxy struct {
		ListenAddress string       `default:":3129" help:"TCP address of the client-facing HTTP proxy."`
		TLS           HTTPProxyTLS `embed:"" prefix:"tls."`
		HostWhitelist []string     `placeholder:"PATTERNS" help:"Destinations clients may reach (comma-separated or repeated). Empty allows all."`
	} `embed:"" prefix:"http-proxy." name:"http-proxy"`
	SOCKS5        SOCKS5Config `embed:"" prefix:"socks5."`
	HTTPConnector struct {
		TLS         ConnectorTLS  `embed:"" prefix:"tls."`
		DialTimeout time.Duration `default:"15s" help:"How long forwarding a tunnel to a proxy may take, including that proxy's tunnel to the agent."`
	} `embed:"" prefix:"http-connector."`
	Auth    AuthVerifier  `embed:"" prefix:"auth."`
	Metrics MetricsConfig `embed:"" prefix:"metrics."`
	Admin   AdminConfig   `embed:"" prefix:"admin."`
	Audit   AuditConfig   `embed:"" prefix:"audit."`
	Store   struct {
		Type       string          `enum:"memcached" default:"memcached" help:"Route store. One of: [memcached]."`
		ClusterKey string          `name:"cluster-key" placeholder:"FILE" help:"File with the cluster's shared secret: routes are followed only to proxies whose node lease it verifies. Same file on every proxy and lb."`
		Memcached  MemcachedConfig `embed:"" prefix:"memcached."`
	} `embed:"" prefix:"store."`
	ShutdownTimeout time.Duration `name:"shutdown-timeout" default:"30s" help:"How long a graceful stop (SIGTERM) may take: new clients are refused, open tunnels get until then, the rest are closed. The process exits by then; a second signal exits at once."`

	// See limits.go.
	Limits     ClientLimits    `embed:"" prefix:"limits."`
	HTTPLimits HTTPProxyLimits `embed:"" prefix:"http-proxy."`
}

// validate checks the settings that need no file.
func (c *LBCmd) validate() error {
	for flag, d := range map[string]time.Duration{
		"http-proxy.tls.refresh":      c.HTTPProxy.TLS.Refresh,
		"http-connector.tls.refresh":  c.HTTPConnector.TLS.Refresh,
		"http-connector.dial-timeout": c.HTTPConnector.DialTimeout,
		"store.memcached.timeout":     c.Store.Memcached.Timeout,
		"shutdown-timeout":            c.ShutdownTimeout,
	} {
		if err := checkDuration(flag, d); err != nil {
			return err
		}
	}
	if err := c.Limits.check(c.HTTPLimits); err != nil {
		return err
	}
	_, err := adminAddress(c.Admin, c.Metrics)
	return err
}

// Run starts the lb and blocks until the context ends.
func (c *LBCmd) Run(e *Env) error {
	if err := c.validate(); err != nil {
		return err
	}
	cs, err := newClientSide(e, c.Auth, c.HTTPProxy.HostWhitelist, c.HTTPProxy.TLS, c.HTTPConnector.TLS)
	if err != nil {
		return err
	}
	adminAddr, err := adminAddress(c.Admin, c.Metrics)
	if err != nil {
		return err
	}
	key, err := clusterKey(c.Store.ClusterKey, e)
	if err != nil {
		return err
	}
	store, err := c.Store.Memcached.store(key, e)
	if err != nil {
		return err
	}
	m := metrics.New()
	auditLog, err := c.Audit.open(m, e.Log)
	if err != nil {
		return err
	}
	n := lb.NewNode(lb.NodeConfig{
		Front:              c.Limits.frontConfig(c.HTTPLimits, front.Config{Auth: cs.auth, Allow: cs.allow}),
		HTTPAddr:           c.HTTPProxy.ListenAddress,
		HTTPTLS:            cs.serverTLS.Config(),
		SOCKS5Addr:         c.SOCKS5.ListenAddress,
		Store:              store,
		Key:                key,
		ForwardTLS:         cs.connectorTLS.Config(),
		ForwardDialTimeout: c.HTTPConnector.DialTimeout,
		AdminAddr:          adminAddr,
		Pprof:              c.Admin.Pprof,
		Metrics:            m,
		Audit:              auditLog,
		ShutdownTimeout:    c.ShutdownTimeout,
		WatchAuth:          cs.files.watch(e.Log.With("component", "auth")),
		Reload: clientSideReload(e,
			[]reloadTLS{{"http-proxy", cs.serverTLS}, {"http-connector", cs.connectorTLS}},
			cs, c.Auth, c.HTTPProxy.HostWhitelist,
			func(next *CLI) (func() error, AuthVerifier, []string) {
				return next.LB.validate, next.LB.Auth, next.LB.HTTPProxy.HostWhitelist
			}),
	}, e.Log)
	if err := n.Listen(); err != nil {
		return listenError(err, map[string]string{"clients": "http-proxy.listen-address",
			"socks5": "socks5.listen-address", "admin": adminFlag(c.Admin)})
	}
	logListening(e, n.HTTPAddr(), cs.serverTLS.Config(), c.Auth.Type, cs.allow)
	logSOCKS5(e, n.SOCKS5Addr(), c.Auth.Type, cs.allow)
	return runError(cs.run(e.Ctx, n.Run))
}
