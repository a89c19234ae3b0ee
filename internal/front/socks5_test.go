package front_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/reverse-http/reverse-http/internal/allow"
	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/front"
	"github.com/reverse-http/reverse-http/internal/metrics"
	"github.com/reverse-http/reverse-http/internal/roletest"
	"github.com/reverse-http/reverse-http/internal/wire"
)

// serveSOCKS5 runs a SOCKS5 front for h on a loopback port until the test
// ends (or the returned stop is called) and returns its address.
func serveSOCKS5(t testing.TB, h *front.Handler, logs io.Writer) (addr string, stop func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := front.NewSOCKS5(h, ln, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	return s.Addr().String(), roletest.Run(t, "socks5", s.Run)
}

// dialerFunc is a Dialer.
type dialerFunc func(ctx context.Context, agentID, hostport string) (net.Conn, error)

func (f dialerFunc) Dial(ctx context.Context, agentID, hostport string) (net.Conn, error) {
	return f(ctx, agentID, hostport)
}

// TestSOCKS5Tunnel: a SOCKS5 CONNECT to an IPv4 literal, a domain name
// (passed to the dialer unresolved) and an IPv6 literal reaches the
// destination through the dialer with the client's agent ID; bytes the
// client sends behind its request before the reply arrive first; a
// half-close reaches the destination; /tunnels lists the tunnel while it
// is open; metrics and the log count it.
func TestSOCKS5Tunnel(t *testing.T) {
	echo := roletest.Echo(t)
	_, port, _ := net.SplitHostPort(echo)
	m := metrics.New()
	logs := &syncBuffer{}
	var dialed []string
	d := dialerFunc(func(ctx context.Context, agentID, hostport string) (net.Conn, error) {
		if agentID != "4711" {
			return nil, wire.Errorf(wire.ErrAgentOffline, "agent "+agentID+" is not connected")
		}
		if front.ProxyAuthorization(ctx) != auth.BasicHeader("4711", "noauth") {
			t.Errorf("dialer sees credentials %q, want the client's as Basic", front.ProxyAuthorization(ctx))
		}
		dialed = append(dialed, hostport)
		return net.Dial("tcp", echo)
	})
	h := front.New(front.Config{Auth: auth.NoAuth(), Dialer: d, Metrics: m}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	addr, _ := serveSOCKS5(t, h, logs)

	for _, target := range []string{"127.0.0.1:" + port, "service.internal:" + port, "[2001:db8::7]:" + port} {
		t.Run(target, func(t *testing.T) {
			dialed = nil
			// The request and the first bytes in one write, as clients
			// with optimistic data send them.
			c, err := roletest.SOCKS5Dial(addr, "4711", "noauth", append(roletest.SOCKS5Request(1, target), "early "...))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if len(dialed) != 1 || dialed[0] != target {
				t.Errorf("dialer got %q, want %q unresolved", dialed, target)
			}
			tunnels := h.Tunnels(0)
			if len(tunnels) != 1 || tunnels[0].Method != "SOCKS5-CONNECT" || tunnels[0].Agent != "4711" || tunnels[0].Destination != target {
				t.Errorf("/tunnels: %+v", tunnels)
			}
			c.Write([]byte("late"))
			c.(*net.TCPConn).CloseWrite()
			c.SetReadDeadline(time.Now().Add(wait))
			got, err := io.ReadAll(c)
			if err != nil || string(got) != "early late" {
				t.Fatalf("echoed %q, %v; want %q and EOF after the half-close", got, err, "early late")
			}
			logs.waitLog(t, `msg="tunnel closed"`, "method=SOCKS5-CONNECT", "destination="+target, "bytes_up=10", "bytes_down=10")
		})
	}
	if v := value(m.Tunnels.WithLabelValues("socks5", "ok")); v != 3 {
		t.Errorf("reverse_http_tunnels_total{kind=socks5,outcome=ok} = %v, want 3", v)
	}
}

// TestSOCKS5Refusals: each failure gets the reply code the docs give for
// it, and the log line names the same reason and status the HTTP front
// would.
func TestSOCKS5Refusals(t *testing.T) {
	list, err := allow.Parse([]string{"*.internal", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	refused := closedPort(t)
	d := dialerFunc(func(ctx context.Context, agentID, hostport string) (net.Conn, error) {
		switch {
		case agentID != "4711":
			return nil, wire.Errorf(wire.ErrAgentOffline, "agent "+agentID+" is not connected")
		case strings.HasPrefix(hostport, "slow."):
			return nil, wire.Errorf(wire.ErrTimeout, "dial "+hostport+" timed out after 10s")
		case strings.HasPrefix(hostport, "nxdomain."):
			return nil, wire.ErrorFromStatus(502, "cannot resolve nxdomain.internal: no such host")
		case strings.HasPrefix(hostport, "denied."):
			return nil, wire.ErrorFromStatus(403, "destination "+hostport+" is not allowed by the agent's allowlist")
		case strings.HasPrefix(hostport, "busy."):
			return nil, wire.ErrorFromStatus(429, "agent 4711 has 1 tunnels open, its limit (--limits.tunnels-per-agent)")
		}
		c, err := net.Dial("tcp", hostport)
		if err != nil {
			// As the agent reports it, and a proxy passes it on.
			return nil, wire.ErrorFromStatus(502, "dial "+hostport+": connect: connection refused")
		}
		return c, nil
	})
	logs := &syncBuffer{}
	m := metrics.New()
	h := front.New(front.Config{Auth: auth.NoAuth(), Allow: list, Dialer: d, Metrics: m}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	addr, _ := serveSOCKS5(t, h, logs)

	for _, tc := range []struct {
		name, user, target string
		cmd                byte
		raw                []byte // instead of a request for target
		code               byte
		status             string
		reason             string
	}{
		{name: "proxy allowlist", user: "4711", target: "evil.example:443", code: 0x02, status: "403", reason: "not allowed by the proxy's allowlist"},
		{name: "agent allowlist", user: "4711", target: "denied.internal:22", code: 0x02, status: "403", reason: "agent's allowlist"},
		{name: "agent offline", user: "4712", target: "a.internal:22", code: 0x03, status: "503", reason: "agent 4712 is not connected"},
		{name: "unresolvable", user: "4711", target: "nxdomain.internal:22", code: 0x04, status: "502", reason: "no such host"},
		{name: "connection refused", user: "4711", target: "127.0.0.1:" + refused, code: 0x05, status: "502", reason: "connection refused"},
		{name: "dial timeout", user: "4711", target: "slow.internal:22", code: 0x06, status: "504", reason: "timed out"},
		{name: "agent limit", user: "4711", target: "busy.internal:22", code: 0x01, status: "429", reason: "--limits.tunnels-per-agent"},
		{name: "bind", user: "4711", target: "a.internal:22", cmd: 2, code: 0x07, status: "400", reason: "SOCKS5 BIND is not supported"},
		{name: "udp associate", user: "4711", target: "0.0.0.0:0", cmd: 3, code: 0x07, status: "400", reason: "UDP-ASSOCIATE is not supported"},
		{name: "address type", user: "4711", raw: []byte{5, 1, 0, 9, 1, 2, 3, 4, 0, 80}, code: 0x08, status: "400", reason: "ATYP 0x09"},
		{name: "port 0", user: "4711", target: "a.internal:0", code: 0x01, status: "400", reason: "invalid port"},
		{name: "bad host", user: "4711", raw: append([]byte{5, 1, 0, 3, 3}, "a b\x00\x16"...), code: 0x01, status: "400", reason: "invalid character"},
		{name: "empty domain", user: "4711", raw: []byte{5, 1, 0, 3, 0, 0, 80}, code: 0x01, status: "400", reason: "empty domain name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.raw
			if req == nil {
				cmd := tc.cmd
				if cmd == 0 {
					cmd = 1
				}
				req = roletest.SOCKS5Request(cmd, tc.target)
			}
			_, err := roletest.SOCKS5Dial(addr, tc.user, "noauth", req)
			var se *roletest.SOCKS5Error
			if !errors.As(err, &se) || se.Stage != "reply" || se.Code != tc.code {
				t.Fatalf("got %v, want reply 0x%02x", err, tc.code)
			}
			logs.waitLog(t, `msg="request refused"`, "status="+tc.status, tc.reason)
		})
	}
	if v := value(m.Tunnels.WithLabelValues("socks5", "denied")); v != 2 {
		t.Errorf("reverse_http_tunnels_total{kind=socks5,outcome=denied} = %v, want 2", v)
	}
}

// TestSOCKS5Auth: with JWT authentication, a client token in the
// password opens a tunnel and anything else gets RFC 1929 status 1 and
// the connection closed, logged with the 407 reason; a client that offers
// no username/password method gets 0xFF.
func TestSOCKS5Auth(t *testing.T) {
	key, err := auth.GenerateKey("ES256")
	if err != nil {
		t.Fatal(err)
	}
	token := func(id string) string {
		s, err := auth.Sign(key, auth.TokenOptions{AgentID: id, Role: auth.RoleClient, Duration: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	echo := roletest.Echo(t)
	d := dialerFunc(func(ctx context.Context, agentID, hostport string) (net.Conn, error) {
		return net.Dial("tcp", hostport)
	})
	logs := &syncBuffer{}
	h := front.New(front.Config{Auth: auth.JWT(auth.NewVerifier(key.Public(), "")), Dialer: d}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	addr, _ := serveSOCKS5(t, h, logs)

	c, err := roletest.SOCKS5Dial(addr, "4711", token("4711"), roletest.SOCKS5Request(1, echo))
	if err != nil {
		t.Fatalf("client token: %v", err)
	}
	c.Close()
	for _, tc := range []struct{ name, user, pass, reason string }{
		{"noauth", "4711", "noauth", "unauthorized"},
		{"other agent's token", "4711", token("4712"), "agent_id mismatch: user 4711, token 4712"},
		{"empty user", "", token("4711"), "empty user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := roletest.SOCKS5Dial(addr, tc.user, tc.pass, roletest.SOCKS5Request(1, echo))
			var se *roletest.SOCKS5Error
			if !errors.As(err, &se) || se.Stage != "auth" || se.Code != 1 {
				t.Fatalf("got %v, want auth status 0x01", err)
			}
			logs.waitLog(t, `msg="request refused"`, "status=407", tc.reason)
		})
	}

	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.Write([]byte{5, 1, 0}) // no authentication only
	raw.SetReadDeadline(time.Now().Add(wait))
	got, _ := io.ReadAll(raw)
	if string(got) != "\x05\xff" {
		t.Errorf("answer to a greeting without method 2: % x, want 05 ff and close", got)
	}
	logs.waitLog(t, `msg="request refused"`, "status=407", "offers no username/password")
}

// TestSOCKS5Malformed: a peer that does not speak SOCKS5 is closed with a
// log line saying what it seems to speak; a client that does not finish
// its handshake within the read-header timeout is closed and logged; one
// that connects and leaves is only a debug line.
func TestSOCKS5Malformed(t *testing.T) {
	logs := &syncBuffer{}
	h := front.New(front.Config{Auth: auth.NoAuth(), ReadHeaderTimeout: 300 * time.Millisecond,
		Dialer: dialerFunc(func(context.Context, string, string) (net.Conn, error) { return nil, errors.New("no") })},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	addr, _ := serveSOCKS5(t, h, logs)
	for _, tc := range []struct {
		name string
		send string
		want []string
	}{
		{"http", "CONNECT a:443 HTTP/1.1\r\n\r\n", []string{"status=400", "not SOCKS5: version byte 0x43", "an HTTP request"}},
		{"socks4", "\x04\x01\x00\x50\x7f\x00\x00\x01\x00", []string{"status=400", "(SOCKS4)"}},
		{"no methods", "\x05\x00", []string{"status=400", "no authentication method"}},
		{"slow", "\x05", []string{"status=408", "not complete within 300ms (--http-proxy.read-header-timeout), at its greeting"}},
		{"slow auth", "\x05\x01\x02\x01\x04ab", []string{"status=408", "at its username/password"}},
		{"leaves", "", []string{"level=DEBUG", "client left during the handshake"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			c.Write([]byte(tc.send))
			if tc.send == "" {
				c.Close()
			} else {
				c.SetReadDeadline(time.Now().Add(wait))
				io.ReadAll(c) // until the front closes it
				c.Close()
			}
			logs.waitLog(t, tc.want...)
		})
	}
}

// TestSOCKS5Drain: Drain waits for an open SOCKS5 tunnel, closes it at
// the deadline, and Run returns with no goroutine left; a client that
// connects after Run's context ended is not served.
func TestSOCKS5Drain(t *testing.T) {
	echo := roletest.Echo(t)
	check := roletest.Goroutines(t)
	d := dialerFunc(func(ctx context.Context, agentID, hostport string) (net.Conn, error) {
		return net.Dial("tcp", hostport)
	})
	h := front.New(front.Config{Auth: auth.NoAuth(), Dialer: d, MaxTunnelsPerClient: 1}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	addr, stop := serveSOCKS5(t, h, io.Discard)
	c := roletest.SOCKS5Connect(t, addr, "4711", echo)
	// The per-client limit counts SOCKS5 tunnels too.
	if _, err := roletest.SOCKS5Dial(addr, "4711", "noauth", roletest.SOCKS5Request(1, echo)); err == nil {
		t.Fatal("second tunnel past --limits.tunnels-per-client 1 opened")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Error("the SOCKS5 port still accepts after Run returned")
	}
	if n := h.OpenTunnels(); n != 1 {
		t.Fatalf("%d open tunnels, want the SOCKS5 one still open until the drain deadline", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	h.Drain(ctx)
	if took := time.Since(start); took < 150*time.Millisecond {
		t.Errorf("Drain returned after %s with a tunnel open, want it to wait for the deadline", took)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	if _, err := io.ReadAll(c); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Errorf("tunnel after the drain: %v, want it closed", err)
	}
	c.Close()
	check()
}

// closedPort is a loopback port nothing listens on (bound and released).
func closedPort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}
