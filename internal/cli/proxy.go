package cli

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/allow"
	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/front"
	"github.com/reverse-http/reverse-http/internal/metrics"
	"github.com/reverse-http/reverse-http/internal/proxy"
	"github.com/reverse-http/reverse-http/internal/route"
	"github.com/reverse-http/reverse-http/internal/run"
	"github.com/reverse-http/reverse-http/internal/tlsconf"
)

// TLSServerFiles are the --*.tls.file.* flags of a server.
type TLSServerFiles struct {
	Key       string `placeholder:"FILE" help:"Server private key (PEM)."`
	Cert      string `placeholder:"FILE" help:"Server certificate (PEM)."`
	ClientCA  string `name:"client-ca" placeholder:"FILE" help:"CA that verifies client certificates; enables mutual TLS."`
	ClientCRL string `name:"client-crl" placeholder:"FILE" help:"CRL signed by the client CA; revoked client certificates are refused."`
}

// HTTPProxyTLS is --http-proxy.tls.* on proxy and lb.
type HTTPProxyTLS struct {
	Enable      bool           `help:"Serve the HTTP proxy over TLS."`
	Refresh     time.Duration  `default:"0s" help:"Re-read the certificate files at this interval (0 = never)."`
	File        TLSServerFiles `embed:"" prefix:"file."`
	KeyPassword string         `name:"key-password" help:"Password of an encrypted private key."`
}

// ConnectorTLS is --http-connector.tls.*: how a node reaches the proxies'
// HTTP ports when it forwards a tunnel.
type ConnectorTLS struct {
	Enable             bool          `help:"Use TLS towards the proxies' HTTP proxy ports."`
	Refresh            time.Duration `default:"0s" help:"Re-read the client certificate files at this interval (0 = never)."`
	InsecureSkipVerify bool          `help:"Do not verify the proxies' certificates."`
	UseSystemPool      bool          `help:"Trust the system's roots besides --http-connector.tls.file.root-ca."`
	File               struct {
		Key         string `placeholder:"FILE" help:"Client private key (PEM) for mutual TLS."`
		Cert        string `placeholder:"FILE" help:"Client certificate (PEM) for mutual TLS."`
		RootCA      string `name:"root-ca" placeholder:"FILE" help:"CA that verifies the proxies."`
		KeyPassword string `name:"key-password" help:"Password of an encrypted client key."`
	} `embed:"" prefix:"file."`
}

func (c ConnectorTLS) config(e *Env) (*tlsconf.Reloadable, error) {
	if !c.Enable {
		return nil, nil
	}
	conf, err := tlsconf.NewClient(tlsconf.ClientOptions{
		Files: tlsconf.ClientFiles{
			Key: c.File.Key, Cert: c.File.Cert, RootCA: c.File.RootCA, KeyPassword: c.File.KeyPassword,
		},
		Refresh:            c.Refresh,
		InsecureSkipVerify: c.InsecureSkipVerify,
		UseSystemPool:      c.UseSystemPool,
	}, e.Log)
	if err != nil {
		return nil, flagError("http-connector", err)
	}
	return conf, nil
}

// ProxyCmd is `reverse-http proxy`.
type ProxyCmd struct {
	AgentServer struct {
		ListenAddress string `default:":4242" help:"UDP address where agents connect over QUIC."`
		TCP           struct {
			ListenAddress *string `placeholder:"ADDR" help:"TCP address where agents whose UDP is blocked connect (TLS on TCP, the same certificates and auth); empty disables it (default: the --agent-server.listen-address, on TCP)."`
		} `embed:"" prefix:"tcp."`
		TLS struct {
			Refresh time.Duration  `default:"0s" help:"Re-read the certificate files at this interval (0 = never)."`
			File    TLSServerFiles `embed:"" prefix:"file."`
			// AgentIDFromCert binds agent IDs to client certificates.
			AgentIDFromCert string `name:"agent-id-from-cert" enum:",cn,san" default:"" placeholder:"cn|san" help:"Refuse an agent whose ID is not its client certificate's CN (cn) or one of its DNS SANs or urn:reverse-http:agent:<ID> URI SANs (san); needs --agent-server.tls.file.client-ca. One of: [cn, san]; empty: off."`
		} `embed:"" prefix:"tls."`
		Agent struct {
			DialTimeout time.Duration `default:"10s" help:"How long opening a tunnel through an agent may take, including the agent's dial of the destination."`
		} `embed:"" prefix:"agent."`
		IdleTimeout       time.Duration `default:"15s" help:"Drop an agent connection silent for this long (agents send keep-alives)."`
		StatelessResetKey string        `name:"stateless-reset-key" placeholder:"FILE" help:"File whose contents key QUIC stateless resets; proxies sharing it reset each other's dead connections, so agents fail over at once (default: derived from --agent-server.tls.file.key)."`
	} `embed:"" prefix:"agent-server."`
	HTTPProxy struct {
		ListenAddress string       `default:":3128" help:"TCP address of the client-facing HTTP proxy."`
		TLS           HTTPProxyTLS `embed:"" prefix:"tls."`
		HostWhitelist []string     `placeholder:"PATTERNS" help:"Destinations clients may reach (comma-separated or repeated). Empty allows all."`
	} `embed:"" prefix:"http-proxy." name:"http-proxy"`
	SOCKS5        SOCKS5Config `embed:"" prefix:"socks5."`
	HTTPConnector struct {
		TLS ConnectorTLS `embed:"" prefix:"tls."`
	} `embed:"" prefix:"http-connector."`
	Auth    AuthVerifier  `embed:"" prefix:"auth."`
	Metrics MetricsConfig `embed:"" prefix:"metrics."`
	Admin   AdminConfig   `embed:"" prefix:"admin."`
	Audit   AuditConfig   `embed:"" prefix:"audit."`
	Store   struct {
		Type             string          `enum:"none,memcached" default:"none" help:"Route store for HA. One of: [none, memcached]."`
		HTTPProxyAddress string          `name:"http-proxy-address" help:"Address this proxy registers for its agents; other nodes forward clients there (default: the HTTP proxy listen address, with this host's name if it has no host)."`
		TTL              time.Duration   `name:"ttl" default:"15s" help:"Lease of a route and of this node's membership: renewed every ttl/3; a dead proxy's routes are not followed after it."`
		ClusterKey       string          `name:"cluster-key" placeholder:"FILE" help:"File with the cluster's shared secret (at least 16 bytes): signs this node's lease; routes are followed only to nodes whose lease it verifies. Same file on every proxy and lb."`
		Memcached        MemcachedConfig `embed:"" prefix:"memcached."`
	} `embed:"" prefix:"store."`
	ShutdownTimeout time.Duration `name:"shutdown-timeout" default:"30s" help:"How long a graceful stop (SIGTERM) may take: new clients and agents are refused, connected agents are told to move to another proxy, open tunnels get until then (less a few seconds to release the routes), the rest are closed. The process exits by then; a second signal exits at once."`

	// See limits.go.
	Limits     ProxyLimits     `embed:"" prefix:"limits."`
	HTTPLimits HTTPProxyLimits `embed:"" prefix:"http-proxy."`
}

// AuthVerifier is --auth.* on proxy and lb.
type AuthVerifier struct {
	Type string `enum:"noauth,jwt" default:"noauth" help:"How agents and clients authenticate. One of: [noauth, jwt]."`
	JWT  struct {
		PublicKey   string `placeholder:"FILE" default:"auth-key-public.pem" help:"Public key (PEM) that verifies tokens."`
		Audience    string `help:"Required token audience (aud), when set."`
		Revoked     string `placeholder:"FILE" help:"Revocation list: one token jti per line; tokens it names are refused and their open tunnels closed. Re-read when it changes and on SIGHUP."`
		AgentsClaim string `name:"agents-claim" default:"agent_id" placeholder:"NAME" help:"Claim of a client token that names the agents it may use: an agent ID pattern or a list of them ('*' allowed), e.g. a provider's groups claim."`
		// See jwks.go.
		JWKSURL     string        `name:"jwks-url" placeholder:"URL" help:"Also verify tokens with the keys of an identity provider's JWKS at this URL (https, or http to loopback), picked by the token's kid; needs --auth.jwt.issuer. --auth.jwt.public-key then applies only if its file exists."`
		Issuer      string        `placeholder:"ISS" help:"Required iss of the tokens verified with --auth.jwt.jwks-url keys (the provider's issuer URL)."`
		JWKSRefresh time.Duration `name:"jwks-refresh" default:"5m" help:"Advanced: fetch the --auth.jwt.jwks-url keys again at this interval (at least 10s); a token naming an unknown kid fetches them sooner, at most once per 10s."`
	} `embed:"" prefix:"jwt."`
	Clients struct {
		File string `placeholder:"FILE" help:"Clients file (YAML; see 'auth client add'): clients authenticate with password NAME:SECRET (or a client JWT with --auth.type=jwt, or a client certificate whose CN is NAME); noauth then applies to agents only. Re-read when it changes and on SIGHUP."`
	} `embed:"" prefix:"clients."`
}

// checkFlags checks the --auth.* settings that need no file.
func (a AuthVerifier) checkFlags() error {
	if a.JWT.Revoked != "" && a.Type != "jwt" {
		return errors.New("--auth.jwt.revoked needs --auth.type=jwt")
	}
	if c := a.JWT.AgentsClaim; c == "" || len(c) > 64 {
		return fmt.Errorf("--auth.jwt.agents-claim: want a claim name of 1-64 bytes, got %q", c)
	}
	return nil
}

// authFiles are the auth files a node re-reads when they change: the
// clients file and the JWT revocation list, each nil when not given.
// They are opened once; their paths need a restart to change.
type authFiles struct {
	clients *auth.ClientsFile
	revoked *auth.RevokedFile
}

func (a AuthVerifier) openFiles() (f authFiles, err error) {
	if p := a.Clients.File; p != "" {
		if f.clients, err = auth.OpenClientsFile(p); err != nil {
			return f, fmt.Errorf("--auth.clients.file: %w", err)
		}
	}
	if p := a.JWT.Revoked; p != "" {
		if f.revoked, err = auth.OpenRevokedFile(p); err != nil {
			return f, fmt.Errorf("--auth.jwt.revoked: %w", err)
		}
	}
	return f, nil
}

// check reads the files again: changed names the flags whose file
// changed, and apply puts them in force. An error names the flag and
// the file; nothing of it applies.
func (f authFiles) check() (changed []string, apply func(), err error) {
	var applies []func()
	if f.clients != nil {
		a, err := f.clients.Check()
		if err != nil {
			return nil, nil, fmt.Errorf("--auth.clients.file: %w", err)
		}
		if a != nil {
			changed, applies = append(changed, "--auth.clients.file"), append(applies, a)
		}
	}
	if f.revoked != nil {
		a, err := f.revoked.Check()
		if err != nil {
			return nil, nil, fmt.Errorf("--auth.jwt.revoked: %w", err)
		}
		if a != nil {
			changed, applies = append(changed, "--auth.jwt.revoked"), append(applies, a)
		}
	}
	return changed, func() {
		for _, a := range applies {
			a()
		}
	}, nil
}

// authFilePoll is how often the auth files are looked at for changes (a
// stat; a file is read only when its size, time or identity changed, or
// it was modified within the last 2s): a revoked client's tunnels close
// within it (and a little).
const authFilePoll = 250 * time.Millisecond

// watch re-reads the auth files every authFilePoll until ctx ends; when
// one changed and parses, it applies it, logs it and calls changed. A
// file that does not parse is logged once (until it changes again) and
// the one in force stays. Nil without files.
func (f authFiles) watch(log *slog.Logger) func(ctx context.Context, changed func()) error {
	if f.clients == nil && f.revoked == nil {
		return nil
	}
	return func(ctx context.Context, changed func()) error {
		t := time.NewTicker(authFilePoll)
		defer t.Stop()
		lastErr := ""
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
			names, apply, err := f.check()
			if err != nil {
				if err.Error() != lastErr {
					log.Error("auth file refused, keeping the one in force", "error", err.Error())
					lastErr = err.Error()
				}
				continue
			}
			lastErr = ""
			if len(names) == 0 {
				continue
			}
			apply()
			log.Info("auth file reloaded", "changed", strings.Join(names, ","), "clients", f.clientCount())
			changed()
		}
	}
}

func (f authFiles) clientCount() int {
	if f.clients == nil {
		return 0
	}
	return f.clients.Set().Len()
}

// MetricsConfig is --metrics.*, kept from the reference.
type MetricsConfig struct {
	ListenAddress string `placeholder:"ADDR" help:"Alias of --admin.listen-address, kept for compatibility: serves the whole admin endpoint (/metrics, /healthz, /readyz, ...) on this TCP address."`
}

// AdminConfig is --admin.*.
type AdminConfig struct {
	ListenAddress string `placeholder:"ADDR" help:"Serve the admin endpoint on this TCP address (empty = off): /healthz, /readyz, /metrics, /agents (proxy), /tunnels (proxy, lb, agent), a status page at /. Bind it to a private address."`
	Pprof         bool   `help:"Also serve Go's profiler on /debug/pprof/ of the admin endpoint (command line secrets redacted)."`
}

// adminAddress is the admin endpoint's address: --admin.listen-address or
// its alias --metrics.listen-address.
func adminAddress(a AdminConfig, m MetricsConfig) (string, error) {
	switch {
	case a.ListenAddress != "" && m.ListenAddress != "" && a.ListenAddress != m.ListenAddress:
		return "", fmt.Errorf("--admin.listen-address (%s) and its alias --metrics.listen-address (%s) differ: give one", a.ListenAddress, m.ListenAddress)
	case a.ListenAddress != "":
		return a.ListenAddress, nil
	}
	if a.Pprof && m.ListenAddress == "" {
		return "", errors.New("--admin.pprof needs --admin.listen-address")
	}
	return m.ListenAddress, nil
}

// MemcachedConfig is --store.memcached.*.
type MemcachedConfig struct {
	Address string        `default:"localhost:11211" help:"Memcached servers, comma-separated: routes are written to all and read from any."`
	Timeout time.Duration `default:"1s" help:"Memcached dial and I/O timeout, per operation."`
}

// clusterKey reads --store.cluster-key; without one it warns what is lost.
func clusterKey(keyFile string, e *Env) ([]byte, error) {
	if keyFile == "" {
		e.Log.Warn("no --store.cluster-key: node leases in memcached are not signed, so anyone who can write to memcached can make this node send clients (and their credentials) to any address; and tunnels forwarded between nodes count against --limits.tunnels-per-client of the forwarding node's address; set a shared key file on every proxy and lb")
		return nil, nil
	}
	data, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("--store.cluster-key: %w", err)
	}
	if len(bytes.TrimSpace(data)) < 16 {
		return nil, fmt.Errorf("--store.cluster-key %q: want at least 16 bytes of secret, got %d", keyFile, len(bytes.TrimSpace(data)))
	}
	return route.DeriveClusterKey(bytes.TrimSpace(data)), nil
}

func (c MemcachedConfig) store(key []byte, e *Env) (*route.Memcached, error) {
	var servers []string
	for _, a := range strings.Split(c.Address, ",") {
		if a = strings.TrimSpace(a); a != "" {
			servers = append(servers, a)
		}
	}
	m, err := route.NewMemcached(route.Config{
		Servers: servers, Timeout: c.Timeout, ClusterKey: key,
		Log: e.Log.With("component", "route-store"),
	})
	if err != nil {
		return nil, fmt.Errorf("--store.memcached.address: %w", err)
	}
	return m, nil
}

// authenticator reads the public key, with --auth.type=jwt, and returns
// the authenticator, over files and, with a JWKS, its keys, and the key
// file's contents.
func (a AuthVerifier) authenticator(files authFiles, keys *auth.JWKS) (auth.Authenticator, []byte, error) {
	var (
		base auth.Authenticator = auth.NoAuth()
		pem  []byte
	)
	if a.Type == "jwt" {
		v, p, err := a.verifier(files, keys)
		if err != nil {
			return nil, nil, err
		}
		base, pem = auth.JWT(v), p
	}
	if files.clients != nil {
		return auth.WithClients(base, files.clients), pem, nil
	}
	return base, pem, nil
}

// verifier is the JWT verifier: the public key, and with a JWKS its keys
// too (the public key then only if its file exists).
func (a AuthVerifier) verifier(files authFiles, keys *auth.JWKS) (*auth.Verifier, []byte, error) {
	var pub crypto.PublicKey
	pem, err := os.ReadFile(a.JWT.PublicKey)
	switch {
	case keys != nil && errors.Is(err, fs.ErrNotExist):
		pem = nil // the provider's keys alone
	case err != nil:
		return nil, nil, fmt.Errorf("--auth.jwt.public-key: %w", err)
	default:
		if pub, err = auth.ParsePublicKey(pem); err != nil {
			return nil, nil, fmt.Errorf("--auth.jwt.public-key %q: %w", a.JWT.PublicKey, err)
		}
	}
	v := auth.NewVerifierWith(auth.VerifierConfig{
		Keys:        []auth.KeySource{auth.NewStaticKey(pub)},
		Audience:    a.JWT.Audience,
		AgentsClaim: a.JWT.AgentsClaim,
		Revoked:     files.revoked,
	})
	if keys != nil {
		v = v.WithKeySource(keys, a.JWT.Issuer)
	}
	return v, pem, nil
}

func parseAllow(flag string, patterns []string) (*allow.List, error) {
	l, err := allow.Parse(patterns)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", flag, err)
	}
	return l, nil
}

func checkDuration(flag string, d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("--%s: must not be negative, got %s", flag, d)
	}
	return nil
}

// validate checks the settings that need no file.
func (c *ProxyCmd) validate() error {
	for flag, d := range map[string]time.Duration{
		"agent-server.tls.refresh":        c.AgentServer.TLS.Refresh,
		"agent-server.agent.dial-timeout": c.AgentServer.Agent.DialTimeout,
		"agent-server.idle-timeout":       c.AgentServer.IdleTimeout,
		"http-proxy.tls.refresh":          c.HTTPProxy.TLS.Refresh,
		"http-connector.tls.refresh":      c.HTTPConnector.TLS.Refresh,
		"store.memcached.timeout":         c.Store.Memcached.Timeout,
		"store.ttl":                       c.Store.TTL,
		"shutdown-timeout":                c.ShutdownTimeout,
	} {
		if err := checkDuration(flag, d); err != nil {
			return err
		}
	}
	if err := c.Limits.check(c.HTTPLimits); err != nil {
		return err
	}
	if c.Store.Type == "memcached" && c.Store.TTL < 3*time.Second {
		return fmt.Errorf("--store.ttl: must be at least 3s (routes are renewed every ttl/3), got %s", c.Store.TTL)
	}
	if c.AgentServer.TLS.AgentIDFromCert != "" && c.AgentServer.TLS.File.ClientCA == "" {
		return errors.New("--agent-server.tls.agent-id-from-cert needs --agent-server.tls.file.client-ca: without client certificates there is nothing to match the agent ID against")
	}
	_, err := adminAddress(c.Admin, c.Metrics)
	return err
}

// Run starts the proxy and blocks until the context ends.
func (c *ProxyCmd) Run(e *Env) error {
	if err := c.validate(); err != nil {
		return err
	}
	cs, err := newClientSide(e, c.Auth, c.HTTPProxy.HostWhitelist, c.HTTPProxy.TLS, c.HTTPConnector.TLS)
	if err != nil {
		return err
	}
	authn, allowList, proxyTLS, connectorTLS := cs.auth, cs.allow, cs.serverTLS.Config(), cs.connectorTLS.Config()
	if mode := c.AgentServer.TLS.AgentIDFromCert; mode != "" {
		e.Log.Info("agent IDs are bound to client certificates: an agent whose certificate does not name its ID is refused", "agent_id_from_cert", mode)
	}
	agentFiles, agentTLS, selfSigned, err := c.agentTLS(e)
	if err != nil {
		return err
	}

	resetKey, err := c.resetKey()
	if err != nil {
		return err
	}
	adminAddr, err := adminAddress(c.Admin, c.Metrics)
	if err != nil {
		return err
	}
	cfg := proxy.NodeConfig{
		Agents: c.Limits.proxyConfig(proxy.Config{
			ListenAddr:        c.AgentServer.ListenAddress,
			TCPListenAddr:     c.tcpListenAddr(),
			TLS:               agentTLS,
			Auth:              authn,
			DialTimeout:       c.AgentServer.Agent.DialTimeout,
			IdleTimeout:       c.AgentServer.IdleTimeout,
			StatelessResetKey: resetKey,
			AgentIDFromCert:   c.AgentServer.TLS.AgentIDFromCert,
		}),
		Front:           c.Limits.frontConfig(c.HTTPLimits, front.Config{Auth: authn, Allow: allowList}),
		HTTPAddr:        c.HTTPProxy.ListenAddress,
		HTTPTLS:         proxyTLS,
		SOCKS5Addr:      c.SOCKS5.ListenAddress,
		AdminAddr:       adminAddr,
		Pprof:           c.Admin.Pprof,
		Metrics:         metrics.New(),
		ShutdownTimeout: c.ShutdownTimeout,
		WatchAuth:       cs.files.watch(e.Log.With("component", "auth")),
		Reload: clientSideReload(e,
			[]reloadTLS{{"agent-server", agentFiles}, {"http-proxy", cs.serverTLS}, {"http-connector", cs.connectorTLS}},
			cs, c.Auth, c.HTTPProxy.HostWhitelist,
			func(next *CLI) (func() error, AuthVerifier, []string) {
				return next.Proxy.validate, next.Proxy.Auth, next.Proxy.HTTPProxy.HostWhitelist
			}),
	}
	if cfg.Audit, err = c.Audit.open(cfg.Metrics, e.Log); err != nil {
		return err
	}
	if c.Store.Type == "memcached" {
		if a := c.Store.HTTPProxyAddress; a != "" {
			if _, _, err := net.SplitHostPort(a); err != nil {
				return fmt.Errorf("--store.http-proxy-address: %w", err)
			}
		}
		key, err := clusterKey(c.Store.ClusterKey, e)
		if err != nil {
			return err
		}
		store, err := c.Store.Memcached.store(key, e)
		if err != nil {
			return err
		}
		cfg.Cluster = &proxy.ClusterConfig{
			Store: store, Addr: c.Store.HTTPProxyAddress, TTL: c.Store.TTL,
			ReleaseTimeout:     releaseTimeout(c.ShutdownTimeout, c.Store.Memcached.Timeout),
			Key:                key,
			ForwardTLS:         connectorTLS,
			ForwardDialTimeout: c.AgentServer.Agent.DialTimeout + 5*time.Second,
		}
	}
	n := proxy.NewNode(cfg, e.Log)
	if err := n.Listen(); err != nil {
		return listenError(err, map[string]string{
			"agents": "agent-server.listen-address", "agents-tcp": "agent-server.tcp.listen-address",
			"clients": "http-proxy.listen-address", "socks5": "socks5.listen-address", "admin": adminFlag(c.Admin)})
	}
	if selfSigned != "" {
		e.Log.Warn("no --agent-server.tls.file.cert/key: using a self-signed certificate generated in memory; agents must use --agent-client.tls.insecure-skip-verify",
			"sha256_fingerprint", selfSigned)
	}
	logListening(e, n.HTTPAddr(), proxyTLS, c.Auth.Type, allowList)
	logSOCKS5(e, n.SOCKS5Addr(), c.Auth.Type, allowList)
	return runError(cs.run(e.Ctx, n.Run))
}

// adminFlag is the flag the admin address came from, for errors.
func adminFlag(a AdminConfig) string {
	if a.ListenAddress != "" {
		return "admin.listen-address"
	}
	return "metrics.listen-address"
}

// listenError names the flag of the listener a role could not bind.
func listenError(err error, flags map[string]string) error {
	var le *run.ListenError
	if errors.As(err, &le) {
		if flag, ok := flags[le.Part]; ok {
			return fmt.Errorf("--%s: %w", flag, le.Err)
		}
	}
	return err
}

// runError names the flag behind a role's shutdown timeout.
func runError(err error) error {
	var te *run.TimeoutError
	if errors.As(err, &te) {
		return fmt.Errorf("shutdown did not finish within --shutdown-timeout (%s); exiting anyway", te.Timeout)
	}
	return err
}

// releaseTimeout is the part of the shutdown timeout kept, after the
// drain, for withdrawing the node lease and releasing the routes: two
// store timeouts and a second, at most half of it.
func releaseTimeout(shutdown, store time.Duration) time.Duration {
	return min(2*store+time.Second, shutdown/2)
}

// resetKey derives the QUIC stateless reset key from the key file given,
// or from the TLS key, so proxies that share a certificate share it too.
// Without either, stateless resets are off.
func (c *ProxyCmd) resetKey() (*quic.StatelessResetKey, error) {
	flag, path := "agent-server.stateless-reset-key", c.AgentServer.StatelessResetKey
	if path == "" {
		flag, path = "agent-server.tls.file.key", c.AgentServer.TLS.File.Key
	}
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", flag, err)
	}
	if len(data) < 16 {
		return nil, fmt.Errorf("--%s %q: want at least 16 bytes of secret, got %d", flag, path, len(data))
	}
	key := quic.StatelessResetKey(sha256.Sum256(append([]byte("reverse-http stateless reset key\x00"), data...)))
	return &key, nil
}

// clientSide is what proxy and lb share: how clients authenticate, where
// they may go, the TLS of the client port, and the TLS used to forward.
type clientSide struct {
	auth                    auth.Authenticator
	files                   authFiles
	publicKey               []byte     // of auth, with --auth.type=jwt
	jwks                    *auth.JWKS // of auth, with --auth.jwt.jwks-url; run by run
	allow                   *allow.List
	serverTLS, connectorTLS *tlsconf.Reloadable // nil when not enabled
}

func newClientSide(e *Env, a AuthVerifier, whitelist []string, serverTLS HTTPProxyTLS, connectorTLS ConnectorTLS) (cs clientSide, err error) {
	if err := a.checkFlags(); err != nil {
		return cs, err
	}
	if cs.files, err = a.openFiles(); err != nil {
		return cs, err
	}
	if cs.jwks, err = a.jwks(e); err != nil {
		return cs, err
	}
	if cs.auth, cs.publicKey, err = a.authenticator(cs.files, cs.jwks); err != nil {
		return cs, err
	}
	cs.logJWKS(e, a)
	if cs.files.clients != nil {
		e.Log.Info("clients file: clients authenticate with NAME:SECRET, a client certificate naming a client, or a client JWT (with --auth.type=jwt); noauth applies to agents only",
			"file", cs.files.clients.Path(), "clients", cs.files.clients.Set().Len())
	}
	if cs.allow, err = parseAllow("http-proxy.host-whitelist", whitelist); err != nil {
		return cs, err
	}
	if cs.serverTLS, err = serverTLS.config(e); err != nil {
		return cs, err
	}
	cs.connectorTLS, err = connectorTLS.config(e)
	return cs, err
}

func (t HTTPProxyTLS) config(e *Env) (*tlsconf.Reloadable, error) {
	if !t.Enable {
		return nil, nil
	}
	f := t.File
	conf, err := tlsconf.NewServer(tlsconf.ServerFiles{
		Key: f.Key, Cert: f.Cert, ClientCA: f.ClientCA, ClientCRL: f.ClientCRL, KeyPassword: t.KeyPassword,
	}, t.Refresh, e.Log)
	if err != nil {
		return nil, flagError("http-proxy", err)
	}
	return conf, nil
}

func logListening(e *Env, addr net.Addr, tlsConf *tls.Config, authType string, allowList *allow.List) {
	scheme := "http"
	if tlsConf != nil {
		scheme = "https"
	}
	e.Log.Info("http proxy listening", "address", addr.String(), "scheme", scheme,
		"auth", authType, "allowlist", allowList.String())
}

// agentTLS is the agent server's TLS configuration, and its files. Without
// certificate files it is a self-signed certificate, whose fingerprint it
// returns, and files is nil.
func (c *ProxyCmd) agentTLS(e *Env) (files *tlsconf.Reloadable, conf *tls.Config, selfSigned string, err error) {
	f := c.AgentServer.TLS.File
	if f.Cert == "" && f.Key == "" {
		if f.ClientCA != "" {
			return nil, nil, "", errors.New("--agent-server.tls.file.client-ca needs --agent-server.tls.file.cert and --agent-server.tls.file.key")
		}
		cert, fp, err := tlsconf.SelfSigned([]string{"localhost", "127.0.0.1", "::1"})
		if err != nil {
			return nil, nil, "", err
		}
		return nil, &tls.Config{Certificates: []tls.Certificate{cert}}, fp, nil
	}
	files, err = tlsconf.NewServer(tlsconf.ServerFiles{
		Key: f.Key, Cert: f.Cert, ClientCA: f.ClientCA, ClientCRL: f.ClientCRL,
	}, c.AgentServer.TLS.Refresh, e.Log)
	if err != nil {
		return nil, nil, "", flagError("agent-server", err)
	}
	return files, files.Config(), "", nil
}

// flagError names the full flag in a tlsconf error, whose messages name
// settings relative to their prefix ("tls.file.cert ..."). Only the setting
// names are rewritten; paths in the message stay intact.
func flagError(prefix string, err error) error {
	name := func(setting string) string {
		if prefix == "http-connector" {
			// The connector's key password is a file.* flag, unlike the servers'.
			setting = strings.Replace(setting, "tls.key-password", "tls.file.key-password", 1)
		}
		return "--" + prefix + "." + setting
	}
	return &prefixedError{msg: tlsconf.Describe(err, name), err: err}
}

type prefixedError struct {
	msg string
	err error
}

func (e *prefixedError) Error() string { return e.msg }
func (e *prefixedError) Unwrap() error { return e.err }

// tcpListenAddr is --agent-server.tcp.listen-address: by default the
// QUIC listener's address, on TCP; set empty, none.
func (c *ProxyCmd) tcpListenAddr() string {
	if c.AgentServer.TCP.ListenAddress == nil {
		return c.AgentServer.ListenAddress
	}
	return *c.AgentServer.TCP.ListenAddress
}
