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
	"sync"
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
	mu      sync.Mutex
	vias    map[string]int // open tunnels by the proxy they go through

	// MoveWait bounds how long Dial waits for an agent whose proxy is
	// unreachable or no longer a member to show up elsewhere; zero means
	// DefaultMoveWait.
	MoveWait time.Duration
	Log      *slog.Logger
}

// Store is where the Forwarder looks routes up (*route.Memcached).
type Store interface {
	Lookup(ctx context.Context, agentID string) (route.Route, error)
	// Members says which of addrs are live cluster members.
	Members(ctx context.Context, addrs []string) map[string]bool
	// Ping reports whether a store server answers.
	Ping(ctx context.Context) error
}

// unreachableError: the owning proxy could not be reached at all.
type unreachableError struct{ err error }

func (e *unreachableError) Error() string { return e.err.Error() }
func (e *unreachableError) Unwrap() error { return e.err }

// Dial opens a tunnel to hostport through agentID's proxy. If that proxy
// cannot be reached, or is no longer a live member (it is draining or
// died), the agent is about to connect elsewhere: Dial reads the route
// again every 100ms for up to MoveWait before it gives up with 503.
func (f *Forwarder) Dial(ctx context.Context, agentID, hostport string) (net.Conn, error) {
	if front.Forwarded(ctx) {
		// Forwarded to us by another node, so its route named us: we hold
		// no agents, and forwarding again could loop.
		return nil, wire.Errorf(wire.ErrAgentOffline, "agent "+agentID+" is not connected here (request forwarded to an lb)")
	}
	wait := f.MoveWait
	if wait <= 0 {
		wait = DefaultMoveWait
	}
	deadline := time.Now().Add(wait)
	var (
		last  error
		tried string // the proxy found unreachable
	)
	for {
		addr, err := f.lookup(ctx, agentID)
		var moving *movingError
		switch {
		case errors.As(err, &moving):
			last = err
		case err != nil:
			return nil, err
		case addr == tried:
			// Still the proxy that did not answer.
		default:
			c, err := f.connect(ctx, addr, agentID, hostport)
			var ue *unreachableError
			if !errors.As(err, &ue) {
				return c, err
			}
			f.Log.Warn("proxy holding the agent is unreachable; waiting for the agent to move", "agent", agentID, "proxy", addr, "error", ue.err)
			tried = addr
			last = wire.Errorf(wire.ErrAgentOffline, fmt.Sprintf("agent %s: its proxy %s is unreachable: %v", agentID, addr, ue.err))
		}
		if time.Now().After(deadline) {
			return nil, last
		}
		select {
		case <-ctx.Done():
			return nil, last
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// DefaultMoveWait is Forwarder.MoveWait's default: long enough for an
// agent told to move to connect to another proxy and claim its route.
const DefaultMoveWait = 3 * time.Second

// movingError: the route names a node that is not a live member; the
// agent may be moving.
type movingError struct{ error }

func (e *movingError) Unwrap() error { return e.error }

// routeHereError: the route names this node, which does not hold the
// agent (it may have connected a moment ago: a Cluster looks again).
type routeHereError struct{ error }

func (e *routeHereError) Unwrap() error { return e.error }

func (f *Forwarder) lookup(ctx context.Context, agentID string) (string, error) {
	r, err := f.Store.Lookup(ctx, agentID)
	addr := r.Addr
	switch {
	case errors.Is(err, route.ErrNotFound):
		return "", wire.Errorf(wire.ErrAgentOffline, "agent "+agentID+" is not connected")
	case errors.Is(err, route.ErrNotMember):
		// Never send a client's credentials to a node that is not one of
		// ours: the entry is stale, forged, or its proxy is draining.
		f.Log.Debug("route names a node that is not a live cluster member: not followed", "agent", agentID, "error", err)
		return "", &movingError{wire.Errorf(wire.ErrAgentOffline, "agent "+agentID+" is not connected (its route names a node that is not a live cluster member)")}
	case err != nil:
		return "", wire.Errorf(wire.ErrAgentOffline, "route store unavailable: "+err.Error())
	case slices.Contains(f.Self, addr):
		// A route to ourselves, but the agent is not here: it left
		// moments ago, is connecting here now, or the route points at an lb.
		return "", &routeHereError{wire.Errorf(wire.ErrAgentOffline, "agent "+agentID+" is not connected")}
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
		front.ForwardedHeader + ": " + front.SignForwardedFor(f.ClusterKey, agentID, hostport, front.CertClient(ctx), time.Now()) + "\r\n"
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
	return f.track(&forwardedConn{TCP: relay.NewTCP(conn, br), via: addr}), nil
}

// forwardedConn is a tunnel through the proxy at via.
type forwardedConn struct {
	*relay.TCP
	via   string
	once  sync.Once
	ended func()
}

// Via names the proxy the tunnel goes through (front.Via).
func (c *forwardedConn) Via() string { return c.via }

func (c *forwardedConn) Close() error {
	c.once.Do(c.ended)
	return c.TCP.Close()
}

func (c *forwardedConn) Abort() {
	c.once.Do(c.ended)
	c.TCP.Abort()
}

// track counts c among the open tunnels through its proxy until it ends.
func (f *Forwarder) track(c *forwardedConn) *forwardedConn {
	f.mu.Lock()
	if f.vias == nil {
		f.vias = map[string]int{}
	}
	f.vias[c.via]++
	f.mu.Unlock()
	c.ended = func() {
		f.mu.Lock()
		if f.vias[c.via]--; f.vias[c.via] <= 0 {
			delete(f.vias, c.via)
		}
		f.mu.Unlock()
	}
	return c
}

// WatchMembers checks every second, until ctx ends, that the proxies this
// node has open tunnels through are still live members; for one that is
// not (it is draining, or died) it calls gone, which drops the connection
// pools through it, so that the next request follows the agent's new
// route. Nothing is judged while the store does not answer.
func (f *Forwarder) WatchMembers(ctx context.Context, gone func(proxy string)) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	reported := map[string]bool{}
	missed := map[string]int{}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		f.mu.Lock()
		addrs := make([]string, 0, len(f.vias))
		for a := range f.vias {
			addrs = append(addrs, a)
		}
		f.mu.Unlock()
		for a := range missed {
			if !slices.Contains(addrs, a) {
				delete(missed, a)
				delete(reported, a)
			}
		}
		if len(addrs) == 0 {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := f.Store.Ping(pctx)
		cancel()
		if err != nil {
			continue
		}
		mctx, cancel := context.WithTimeout(ctx, time.Second)
		live := f.Store.Members(mctx, addrs)
		cancel()
		for _, a := range addrs {
			if live[a] {
				delete(reported, a)
				delete(missed, a)
				continue
			}
			// A lease read that failed looks like a missing lease: act
			// on the second miss in a row only.
			if missed[a]++; missed[a] < 2 {
				continue
			}
			gone(a)
			if !reported[a] {
				reported[a] = true
				f.Log.Info("proxy is no longer a live member (draining or gone): connection pools through it dropped", "proxy", a)
			}
		}
	}
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
	conn, err := c.Forward.Dial(ctx, agentID, hostport)
	var here *routeHereError
	if errors.As(err, &here) && c.Local.Connected(agentID) {
		// It moved here while the route was read.
		return c.Local.Dial(ctx, agentID, hostport)
	}
	return conn, err
}
