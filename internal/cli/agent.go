package cli

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/reverse-http/reverse-http/internal/agent"
	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/metrics"
	"github.com/reverse-http/reverse-http/internal/reload"
	"github.com/reverse-http/reverse-http/internal/tlsconf"
)

// AgentCmd is `reverse-http agent`.
type AgentCmd struct {
	AgentClient struct {
		ServerAddress     string        `default:"localhost:4242" help:"The proxy's agent server (host:port; QUIC on UDP, and the TCP fallback on the same port unless --agent-client.tcp-server-address)."`
		Transport         string        `enum:"auto,quic,tcp" default:"auto" placeholder:"auto|quic|tcp" help:"How to reach the proxy: quic, tcp (TLS on TCP, for networks that block UDP), or auto: QUIC, falling back to TCP when QUIC gets no answer within --agent-client.handshake-timeout (or fails 3 times in a row), and back to QUIC when it connects again."`
		TCPServerAddress  string        `name:"tcp-server-address" placeholder:"HOST:PORT" help:"The proxy's agent server over TCP, when not at --agent-client.server-address (e.g. port 443 behind a TCP load balancer)."`
		QUICProbeInterval time.Duration `name:"quic-probe-interval" default:"3m" help:"With --agent-client.transport=auto, after falling back to TCP: how often to try QUIC again."`
		HostWhitelist     []string      `placeholder:"PATTERNS" help:"Destinations this agent may dial (comma-separated or repeated). Empty allows all."`
		TLS               struct {
			Refresh            time.Duration `default:"0s" help:"Re-read the certificate files at this interval (0 = never)."`
			InsecureSkipVerify bool          `help:"Do not verify the proxy's certificate."`
			File               struct {
				Key    string `placeholder:"FILE" help:"Client private key (PEM) for mutual TLS."`
				Cert   string `placeholder:"FILE" help:"Client certificate (PEM) for mutual TLS."`
				RootCA string `name:"root-ca" placeholder:"FILE" help:"CA that verifies the proxy (default: the system's roots)."`
			} `embed:"" prefix:"file."`
		} `embed:"" prefix:"tls."`
		DialTimeout      time.Duration `default:"10s" help:"How long resolving and dialing a destination may take."`
		HandshakeTimeout time.Duration `default:"3s" help:"How long connecting and authenticating to the proxy may take before the agent retries."`
		KeepAlive        time.Duration `default:"2s" help:"QUIC keep-alive period."`
		IdleTimeout      time.Duration `default:"6s" help:"Consider the proxy gone after this much silence, and reconnect (bounds failover after a proxy dies)."`
		MaxStreams       int64         `default:"100000" help:"How many tunnels the proxy may hold open through this agent at once."`
		ReplacedWait     time.Duration `default:"30s" help:"After another agent with the same ID replaced this one, wait this long before reconnecting."`
		BackoffMax       time.Duration `default:"30s" help:"Cap of the exponential reconnect backoff."`
		BlockLocal       bool          `help:"Refuse destinations that resolve to loopback, link-local, unspecified or cloud metadata addresses (169.254.169.254, fd00:ec2::254), even when a name pattern allows the name; an address or CIDR pattern inside such a range re-allows what it covers."`
	} `embed:"" prefix:"agent-client."`
	Metrics         MetricsConfig `embed:"" prefix:"metrics."`
	Admin           AdminConfig   `embed:"" prefix:"admin."`
	Audit           AuditConfig   `embed:"" prefix:"audit."`
	ShutdownTimeout time.Duration `name:"shutdown-timeout" default:"30s" help:"How long a graceful stop (SIGTERM) may take: new tunnels are refused (503), open ones get until then, the rest are closed. A second signal exits at once."`
	Auth            struct {
		Type   string `enum:"noauth,jwt" default:"noauth" help:"How the agent authenticates. One of: [noauth, jwt]."`
		NoAuth struct {
			AgentID string `help:"The agent ID (noauth)."`
		} `embed:"" prefix:"noauth."`
		JWT struct {
			Token string `placeholder:"SOURCE" help:"Agent-role JWT, or file:PATH to read it from PATH."`
		} `embed:"" prefix:"jwt."`
	} `embed:"" prefix:"auth."`
}

// validate checks the settings that need no file.
func (c *AgentCmd) validate() error {
	ac := &c.AgentClient
	for flag, d := range map[string]time.Duration{
		"agent-client.tls.refresh":   ac.TLS.Refresh,
		"agent-client.dial-timeout":  ac.DialTimeout,
		"agent-client.keep-alive":    ac.KeepAlive,
		"agent-client.idle-timeout":  ac.IdleTimeout,
		"agent-client.replaced-wait": ac.ReplacedWait,
		"shutdown-timeout":           c.ShutdownTimeout,
		"agent-client.backoff-max":   ac.BackoffMax,
	} {
		if err := checkDuration(flag, d); err != nil {
			return err
		}
	}
	if ac.KeepAlive > 0 && ac.IdleTimeout > 0 && ac.KeepAlive >= ac.IdleTimeout {
		return fmt.Errorf("--agent-client.keep-alive (%s) must be shorter than --agent-client.idle-timeout (%s)", ac.KeepAlive, ac.IdleTimeout)
	}
	if ac.MaxStreams < 1 {
		return fmt.Errorf("--agent-client.max-streams: must be at least 1, got %d", ac.MaxStreams)
	}
	if _, _, err := net.SplitHostPort(ac.ServerAddress); err != nil {
		return fmt.Errorf("--agent-client.server-address: %w", err)
	}
	if a := ac.TCPServerAddress; a != "" {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("--agent-client.tcp-server-address: %w", err)
		}
	}
	if ac.QUICProbeInterval < time.Second {
		return fmt.Errorf("--agent-client.quic-probe-interval: must be at least 1s, got %s", ac.QUICProbeInterval)
	}
	_, err := adminAddress(c.Admin, c.Metrics)
	return err
}

// Run starts the agent and blocks until the context ends.
func (c *AgentCmd) Run(e *Env) error {
	ac := &c.AgentClient
	if err := c.validate(); err != nil {
		return err
	}
	var credential func() (string, error)
	switch c.Auth.Type {
	case "jwt":
		src := c.Auth.JWT.Token
		if src == "" {
			return errors.New("--auth.jwt.token: required with --auth.type=jwt")
		}
		if _, err := auth.TokenSource(src); err != nil {
			return fmt.Errorf("--auth.jwt.token: %w", err)
		}
		if inlineFlag(e.Args, "auth.jwt.token") {
			e.Log.Warn("--auth.jwt.token is given inline on the command line, where other local users can read it in the process list; $REVERSE_HTTP_AUTH_JWT_TOKEN is better, --auth.jwt.token=file:PATH is safest")
		}
		credential = func() (string, error) { return auth.TokenSource(src) }
	default:
		id := c.Auth.NoAuth.AgentID
		if id == "" {
			return errors.New("--auth.noauth.agent-id: required with --auth.type=noauth")
		}
		if err := auth.CheckAgentID(id); err != nil {
			return fmt.Errorf("--auth.noauth.agent-id %q: %w", id, err)
		}
		credential = func() (string, error) { return id, nil }
	}
	allowList, err := parseAllow("agent-client.host-whitelist", ac.HostWhitelist)
	if err != nil {
		return err
	}
	tlsFiles, err := tlsconf.NewClient(tlsconf.ClientOptions{
		Files:              tlsconf.ClientFiles{Key: ac.TLS.File.Key, Cert: ac.TLS.File.Cert, RootCA: ac.TLS.File.RootCA},
		Refresh:            ac.TLS.Refresh,
		InsecureSkipVerify: ac.TLS.InsecureSkipVerify,
	}, e.Log)
	if err != nil {
		return flagError("agent-client", err)
	}
	adminAddr, err := adminAddress(c.Admin, c.Metrics)
	if err != nil {
		return err
	}
	var agentID string
	if c.Auth.Type != "jwt" {
		agentID = c.Auth.NoAuth.AgentID
	}
	var m *metrics.Metrics // made by the agent with an admin endpoint
	if adminAddr != "" {
		m = metrics.New()
	}
	auditLog, err := c.Audit.open(m, e.Log)
	if err != nil {
		return err
	}
	e.Log.Info("agent starting", "server", ac.ServerAddress, "transport", ac.Transport, "auth", c.Auth.Type, "allowlist", allowList.String(),
		"block_local", ac.BlockLocal)
	a := agent.New(agent.Config{
		AdminAddr:         adminAddr,
		Pprof:             c.Admin.Pprof,
		Metrics:           m,
		Audit:             auditLog,
		ServerAddr:        ac.ServerAddress,
		TransportMode:     ac.Transport,
		TCPServerAddr:     ac.TCPServerAddress,
		QUICProbeInterval: ac.QUICProbeInterval,
		ID:                agentID,
		TLS:               tlsFiles.Config(),
		Credential:        credential,
		Allow:             allowList,
		DialTimeout:       ac.DialTimeout,
		HandshakeTimeout:  ac.HandshakeTimeout,
		KeepAlive:         ac.KeepAlive,
		IdleTimeout:       ac.IdleTimeout,
		MaxStreams:        ac.MaxStreams,
		ReplacedWait:      ac.ReplacedWait,
		ShutdownTimeout:   c.ShutdownTimeout,
		BackoffMax:        ac.BackoffMax,
		BlockLocal:        ac.BlockLocal,
		Reload:            c.reloader(e, tlsFiles),
	}, e.Log)
	return listenError(a.Run(e.Ctx), map[string]string{"admin": adminFlag(c.Admin)})
}

// reloader is the agent's reload: the TLS files, the log level and the
// allowlist.
func (c *AgentCmd) reloader(e *Env, tlsFiles *tlsconf.Reloadable) reload.Load {
	r := &reloader{e: e, reloadable: agentReloadable, tls: []reloadTLS{{"agent-client", tlsFiles}}}
	whitelist := c.AgentClient.HostWhitelist
	return func() (*reload.Update, error) {
		next, u, err := r.begin()
		if err != nil {
			return nil, err
		}
		if err := next.Agent.validate(); err != nil {
			return nil, err
		}
		list := next.Agent.AgentClient.HostWhitelist
		if u.Allow, err = parseAllow("agent-client.host-whitelist", list); err != nil {
			return nil, err
		}
		if !slices.Equal(list, whitelist) {
			u.Changed = append(u.Changed, "--agent-client.host-whitelist")
		}
		u.Then(func() { whitelist = list })
		return u, nil
	}
}

// inlineFlag reports whether args (the command line, without the program
// name) set the flag name to a value given inline rather than as
// file:PATH, in the --name=value or the --name value form.
func inlineFlag(args []string, name string) bool {
	for i, a := range args {
		if a == "--" {
			return false
		}
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return !strings.HasPrefix(v, "file:")
		}
		if a == "--"+name && i+1 < len(args) {
			return !strings.HasPrefix(args[i+1], "file:")
		}
	}
	return false
}
