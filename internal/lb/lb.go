// Package lb forwards client tunnels to the proxy that holds the agent, as
// the route store says: the dialer behind the lb role, and behind a proxy
// that is asked for an agent connected elsewhere.
package lb

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/reverse-http/reverse-http/internal/front"
	"github.com/reverse-http/reverse-http/internal/metrics"
	"github.com/reverse-http/reverse-http/internal/relay"
	"github.com/reverse-http/reverse-http/internal/route"
	"github.com/reverse-http/reverse-http/internal/wire"
)

// Forwarder opens tunnels through the proxy that holds an agent by sending
// it a CONNECT with the client's own credentials.
type Forwarder struct {
	Store Store
	// Self are this node's own addresses; a route naming one is not
	// forwarded (the agent is not here, or the route is wrong).
	Self []string
	// TLS, if not nil, is used to reach the proxies' HTTP ports.
	TLS *tls.Config
	// DialTimeout bounds the whole exchange with the owning proxy,
	// including its own tunnel to the agent. Zero means 15s.
	DialTimeout time.Duration
	// ClusterKey signs the ForwardedHeader sent with each tunnel, so the
	// receiving proxy does not count it against the client limit again.
	ClusterKey []byte
	// Metrics, if not nil, counts the tunnels forwarded.
	Metrics *metrics.Metrics
	Log     *slog.Logger
}

// Store is where the Forwarder looks routes up (*route.Memcached).
type Store interface {
	Lookup(ctx context.Context, agentID string) (route.Route, error)
}

// unreachableError: the owning proxy could not be reached at all.
type unreachableError struct{ err error }

func (e *unreachableError) Error() string { return e.err.Error() }
func (e *unreachableError) Unwrap() error { return e.err }

// Dial opens a tunnel to hostport through agentID's proxy. If that proxy
// cannot be reached, it reads the route once more (the agent may have moved)
// before it gives up with 503.
func (f *Forwarder) Dial(ctx context.Context, agentID, hostport string) (net.Conn, error) {
	if front.Forwarded(ctx) {
		// Forwarded to us by another node, so its route named us: we hold
		// no agents, and forwarding again could loop.
		return nil, wire.Errorf(wire.ErrAgentOffline, "agent "+agentID+" is not connected here (request forwarded to an lb)")
	}
	addr, err := f.lookup(ctx, agentID)
	if err != nil {
		return nil, err
	}
	c, err := f.connect(ctx, addr, agentID, hostport)
	var ue *unreachableError
	if !errors.As(err, &ue) {
		return c, err
	}
	f.Log.Warn("proxy holding the agent is unreachable; reading the route again", "agent", agentID, "proxy", addr, "error", ue.err)
	again, lerr := f.lookup(ctx, agentID)
	if lerr == nil && again != addr {
		c, err = f.connect(ctx, again, agentID, hostport)
		if !errors.As(err, &ue) {
			return c, err
		}
		addr = again
	}
	return nil, wire.Errorf(wire.ErrAgentOffline, fmt.Sprintf("agent %s: its proxy %s is unreachable: %v", agentID, addr, ue.err))
}

func (f *Forwarder) lookup(ctx context.Context, agentID string) (string, error) {
	r, err := f.Store.Lookup(ctx, agentID)
	addr := r.Addr
	switch {
	case errors.Is(err, route.ErrNotFound):
		return "", wire.Errorf(wire.ErrAgentOffline, "agent "+agentID+" is not connected")
	case errors.Is(err, route.ErrNotMember):
		// Never send a client's credentials to a node that is not one of
		// ours: the entry is stale or forged.
		f.Log.Warn("route names a node that is not a live cluster member: not followed", "agent", agentID, "error", err)
		return "", wire.Errorf(wire.ErrAgentOffline, "agent "+agentID+" is not connected")
	case err != nil:
		return "", wire.Errorf(wire.ErrAgentOffline, "route store unavailable: "+err.Error())
	case slices.Contains(f.Self, addr):
		// A route to ourselves, but the agent is not here: it left
		// moments ago (or the route points at an lb).
		return "", wire.Errorf(wire.ErrAgentOffline, "agent "+agentID+" is not connected")
	}
	return addr, nil
}

// connect sends CONNECT hostport to the proxy at addr on behalf of the
// client whose request ctx carries.
func (f *Forwarder) connect(ctx context.Context, addr, agentID, hostport string) (net.Conn, error) {
	timeout := f.DialTimeout
	if timeout <= 0 {
		timeout = 15 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &unreachableError{err}
	}
	if f.TLS != nil {
		conf := f.TLS.Clone()
		if conf.ServerName == "" {
			conf.ServerName, _, _ = net.SplitHostPort(addr)
		}
		tc := tls.Client(conn, conf)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, &unreachableError{fmt.Errorf("TLS: %w", err)}
		}
		conn = tc
	}
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()

	req := "CONNECT " + hostport + " HTTP/1.1\r\nHost: " + hostport + "\r\n" +
		front.ForwardedHeader + ": " + front.SignForwarded(f.ClusterKey, agentID, hostport, time.Now()) + "\r\n"
	if auth := front.ProxyAuthorization(ctx); auth != "" {
		req += "Proxy-Authorization: " + auth + "\r\n"
	}
	// The answer is read through a limit (the relay then reads conn
	// itself, after what br holds), so a proxy answering without end
	// cannot grow this node.
	br := bufio.NewReaderSize(io.LimitReader(conn, maxAnswerBytes), 1024)
	status, reason, err := func() (int, string, error) {
		if _, err := conn.Write([]byte(req + "\r\n")); err != nil {
			return 0, "", err
		}
		return wire.ReadResponse(br)
	}()
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, wire.Errorf(wire.ErrTimeout, fmt.Sprintf("proxy %s: no answer for %s within %s", addr, hostport, timeout))
		}
		return nil, &unreachableError{err}
	}
	if status != http.StatusOK {
		conn.Close()
		if status == http.StatusBadRequest && strings.Contains(reason, "HTTP request to an HTTPS server") {
			// net/http's answer on a TLS port: this node's settings, not
			// the client's request, are wrong.
			return nil, &unreachableError{fmt.Errorf("it serves TLS on its HTTP port: set --http-connector.tls.enable")}
		}
		if status == http.StatusServiceUnavailable {
			return nil, wire.Errorf(wire.ErrAgentOffline, reason)
		}
		return nil, wire.ErrorFromStatus(status, reason)
	}
	if !stop() {
		conn.Close()
		return nil, wire.Errorf(wire.ErrTimeout, fmt.Sprintf("proxy %s: tunnel to %s: %v", addr, hostport, context.Cause(ctx)))
	}
	conn.SetDeadline(time.Time{})
	f.Metrics.Forwarded()
	return relay.NewTCP(conn, br), nil
}

// maxAnswerBytes bounds the owning proxy's answer to a forwarded CONNECT:
// its status line, headers and the one-line reason read from its body.
const maxAnswerBytes = 64 << 10

// Local is the part of a proxy the Cluster dialer needs.
type Local interface {
	Connected(agentID string) bool
	Dial(ctx context.Context, agentID, hostport string) (net.Conn, error)
}

// Cluster serves agents connected to this proxy itself, and forwards the
// others to the proxy that holds them, unless the request was forwarded
// already.
type Cluster struct {
	Local   Local
	Forward *Forwarder
}

func (c *Cluster) Dial(ctx context.Context, agentID, hostport string) (net.Conn, error) {
	if c.Local.Connected(agentID) || front.Forwarded(ctx) {
		return c.Local.Dial(ctx, agentID, hostport)
	}
	return c.Forward.Dial(ctx, agentID, hostport)
}
