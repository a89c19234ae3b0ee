package proxy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/metrics"
	"github.com/reverse-http/reverse-http/internal/proxy"
	"github.com/reverse-http/reverse-http/internal/wire"
)

// syncBuffer is a log destination the test can read while the proxy writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startLimitedProxy runs a noauth proxy.Server with cfg's limits until the
// test ends; its log goes to the returned buffer.
func startLimitedProxy(t *testing.T, cfg proxy.Config) (*proxy.Server, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.TLS = serverTLS(t)
	cfg.Auth = auth.NoAuth()
	cfg.DialTimeout = 5 * time.Second
	srv := proxy.New(cfg, slog.New(slog.NewTextHandler(logs, nil)))
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("proxy Run: %v", err)
		}
		if t.Failed() {
			t.Logf("proxy log:\n%s", logs.String())
		}
	})
	return srv, logs
}

// TestTunnelsPerAgentLimit: past MaxTunnelsPerAgent a Dial fails with
// ErrLimit (429) naming the flag; closing a tunnel frees its place, also
// when it was aborted.
func TestTunnelsPerAgentLimit(t *testing.T) {
	srv, _ := startLimitedProxy(t, proxy.Config{MaxTunnelsPerAgent: 2})
	startAgent(t, srv.Addr().String(), "4711", 0)
	waitFor(t, "agent 4711", func() bool { return srv.Connected("4711") })
	echo := echoServer(t)
	ctx := context.Background()

	first, err := srv.Dial(ctx, "4711", echo)
	if err != nil {
		t.Fatal(err)
	}
	second, err := srv.Dial(ctx, "4711", echo)
	if err != nil {
		t.Fatal(err)
	}
	_, err = srv.Dial(ctx, "4711", echo)
	if !errors.Is(err, wire.ErrLimit) || wire.Status(err) != 429 || !strings.Contains(err.Error(), "--limits.tunnels-per-agent") {
		t.Fatalf("third tunnel: %v (status %d), want 429 naming --limits.tunnels-per-agent", err, wire.Status(err))
	}
	// A failed dial (the destination refuses) does not keep a place.
	if _, err := srv.Dial(ctx, "4711", "127.0.0.1:1"); !errors.Is(err, wire.ErrLimit) {
		t.Fatalf("dial at the limit: %v, want ErrLimit", err)
	}
	first.Close()
	third, err := srv.Dial(ctx, "4711", echo)
	if err != nil {
		t.Fatalf("after a close: %v", err)
	}
	second.(interface{ Abort() }).Abort()
	fourth, err := srv.Dial(ctx, "4711", echo)
	if err != nil {
		t.Fatalf("after an abort: %v", err)
	}
	third.Close()
	fourth.Close()
	// Failed dials give their place back: two of them, then two tunnels.
	for range 3 {
		if _, err := srv.Dial(ctx, "4711", "127.0.0.1:1"); errors.Is(err, wire.ErrLimit) || err == nil {
			t.Fatalf("dial of a closed port: %v, want the agent's refusal", err)
		}
	}
	for range 2 {
		c, err := srv.Dial(ctx, "4711", echo)
		if err != nil {
			t.Fatalf("after failed dials: %v", err)
		}
		defer c.Close()
	}
}

// TestAgentsLimit: past MaxAgents a new agent is closed with
// CodeTooManyAgents and a reason naming the flag, before it is told it is
// authenticated; an agent reconnecting with an ID already here replaces
// it even at the limit.
func TestAgentsLimit(t *testing.T) {
	srv, logs := startLimitedProxy(t, proxy.Config{MaxAgents: 1})
	addr := srv.Addr().String()
	dialAgent(t, addr, "one")
	waitFor(t, "agent one", func() bool { return srv.Connected("one") })

	conn, err := quic.DialAddr(context.Background(), addr,
		&tls.Config{InsecureSkipVerify: true, NextProtos: []string{wire.ALPN}}, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	s, err := conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := wire.WriteMessage(s, "two"); err != nil {
		t.Fatal(err)
	}
	msg, err := wire.ReadMessage(s)
	var appErr *quic.ApplicationError
	if !errors.As(err, &appErr) || !appErr.Remote || appErr.ErrorCode != wire.CodeTooManyAgents ||
		!strings.Contains(appErr.ErrorMessage, "--limits.agents") {
		t.Fatalf("second agent: answer %q, %v; want application error %#x naming --limits.agents", msg, err, wire.CodeTooManyAgents)
	}
	if srv.Connected("two") || srv.Agents() != 1 {
		t.Fatalf("agents %v after a refusal", srv.Sessions())
	}
	if !strings.Contains(logs.String(), `msg="agent refused" agent=two`) {
		t.Errorf("no log line for the refusal:\n%s", logs)
	}

	// "one" again: a replacement takes no new place.
	dialAgent(t, addr, "one")
	waitFor(t, "agent one replaced", func() bool {
		return strings.Contains(logs.String(), "agent connection replaced")
	})
	if srv.Agents() != 1 || !srv.Connected("one") {
		t.Fatalf("agents %v after a replacement", srv.Sessions())
	}
}

// TestHandshakeRateLimit: past the bucket, new connections are refused
// with CONNECTION_REFUSED, and the refusals are logged once per second at
// most with their count.
func TestHandshakeRateLimit(t *testing.T) {
	srv, logs := startLimitedProxy(t, proxy.Config{HandshakesPerSecond: 0.5, HandshakeBurst: 2})
	addr := srv.Addr().String()
	for i := range 2 {
		dialAgent(t, addr, "a"+string(rune('0'+i)))
	}
	refused := 0
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := quic.DialAddr(ctx, addr,
			&tls.Config{InsecureSkipVerify: true, NextProtos: []string{wire.ALPN}}, &quic.Config{})
		cancel()
		var te *quic.TransportError
		if errors.As(err, &te) && te.Remote && te.ErrorCode == quic.ConnectionRefused {
			refused++
			continue
		}
		if err == nil {
			conn.CloseWithError(0, "")
		}
		t.Fatalf("connection over the rate: %v, want CONNECTION_REFUSED", err)
	}
	// Refusals are logged at most once a second, and every one is: the
	// first at once, those after it within the second a second later.
	var lines []string
	waitFor(t, "the 3 refusals logged", func() bool {
		lines = logLines(logs.String(), "agent handshakes refused")
		return sumField(t, lines, "refused") == 3
	})
	if len(lines) > 2 {
		t.Errorf("%d log lines for 3 refusals within about a second, want at most 2:\n%s", len(lines), logs)
	}
	if !strings.Contains(logs.String(), "--limits.agent-handshakes-per-second") {
		t.Errorf("log does not name the flag:\n%s", logs)
	}
	if srv.Agents() != 2 {
		t.Errorf("agents %v", srv.Sessions())
	}
}

// TestHandshakesInFlight: with HandshakesInFlight connections handshaken
// but not authenticated, the next one is refused with CONNECTION_REFUSED
// before its TLS handshake; a place is given back when one of them
// authenticates and when one ends without authenticating.
func TestHandshakesInFlight(t *testing.T) {
	// The connections that do not authenticate keep their places for
	// the whole test, however slow the machine.
	srv, logs := startLimitedProxy(t, proxy.Config{HandshakesInFlight: 2, AuthTimeout: time.Minute})
	addr := srv.Addr().String()
	// Go's default key shares (X25519MLKEM768): the ClientHello spans two
	// Initial packets. The second packet of a refused one, arriving once
	// a place is free again, is refused too (it could never finish).
	tlsConf := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{wire.ALPN}}
	// A dial that gave up would leave the proxy a handshake holding its
	// place until the proxy's own timeout: give up late.
	dial := func() (*quic.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		return quic.DialAddr(ctx, addr, tlsConf, &quic.Config{KeepAlivePeriod: time.Second, HandshakeIdleTimeout: 10 * time.Second})
	}
	// refused: not admitted. quic-go drops a refusal it cannot send at
	// once, so on a busy machine the dial may time out instead.
	refused := func(what string) {
		t.Helper()
		conn, err := dial()
		var te *quic.TransportError
		var idle *quic.IdleTimeoutError
		if errors.As(err, &te) && te.Remote && te.ErrorCode == quic.ConnectionRefused || errors.As(err, &idle) {
			return
		}
		if err == nil {
			conn.CloseWithError(0, "")
		}
		t.Fatalf("%s: %v, want CONNECTION_REFUSED", what, err)
	}
	// Two handshaken, neither authenticated.
	var pending []*quic.Conn
	for range 2 {
		conn, err := dial()
		if err != nil {
			t.Fatal(err)
		}
		defer conn.CloseWithError(0, "")
		pending = append(pending, conn)
	}
	refused("a third connection while two authenticate")

	// The first authenticates: its place is free.
	s, err := pending[0].OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := wire.WriteMessage(s, "first"); err != nil {
		t.Fatal(err)
	}
	if msg, err := wire.ReadMessage(s); err != nil || msg != wire.AuthOK {
		t.Fatalf("auth answer %q, %v", msg, err)
	}
	// The answer may reach us a moment before the proxy gives the place
	// back.
	var third *quic.Conn
	waitFor(t, "a place given back by an authenticated connection", func() bool {
		third, err = dial()
		return err == nil
	})
	defer third.CloseWithError(0, "")
	refused("another while two authenticate again")

	// The second gives up: its place is free too.
	pending[1].CloseWithError(0, "")
	var fourth *quic.Conn
	waitFor(t, "a place given back by a closed connection", func() bool {
		fourth, err = dial()
		return err == nil
	})
	fourth.CloseWithError(0, "")
	waitFor(t, "the authenticated agent registered", func() bool { return srv.Connected("first") })
	if !strings.Contains(logs.String(), `msg="agent handshakes refused"`) {
		t.Errorf("no log line for the refusals:\n%s", logs)
	}
	if !strings.Contains(logs.String(), "--limits.agent-handshakes-in-flight") {
		t.Errorf("log does not name the flag:\n%s", logs)
	}
}

// logLines returns the lines of logs whose msg is msg.
func logLines(logs, msg string) []string {
	var out []string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, `msg="`+msg+`"`) {
			out = append(out, l)
		}
	}
	return out
}

// sumField adds up the integer field name of lines.
func sumField(t *testing.T, lines []string, name string) int {
	t.Helper()
	re := regexp.MustCompile(` ` + name + `=(\d+)`)
	n := 0
	for _, l := range lines {
		m := re.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("no %s= in %s", name, l)
		}
		v, _ := strconv.Atoi(m[1])
		n += v
	}
	return n
}

// TestHandshakeFailures: connections admitted whose TLS handshake fails
// (a QUIC client without our ALPN, a TCP client that speaks no TLS) or
// never finishes (a QUIC client whose packets after its ClientHello are
// lost) are counted as handshake_failed and logged at most once a second,
// with how many and the last one's cause; none registers or holds a
// place.
func TestHandshakeFailures(t *testing.T) {
	m := metrics.New()
	srv, logs := startLimitedProxy(t, proxy.Config{TCPListenAddr: "127.0.0.1:0", HandshakesInFlight: 2,
		AuthTimeout: 500 * time.Millisecond, Metrics: m})
	addr := srv.Addr().String()

	// A QUIC client that offers another protocol.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err := quic.DialAddr(ctx, addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h3"}}, nil)
	cancel()
	if err == nil {
		t.Fatal("a QUIC client offering h3 connected")
	}
	// A TCP client that speaks HTTP instead of TLS.
	c, err := net.Dial("tcp", srv.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	io.Copy(io.Discard, c)
	c.Close()
	// A QUIC client whose packets after its ClientHello are lost: the
	// proxy's half of the handshake times out (AuthTimeout).
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true") // not a *net.UDPConn
	sent := 0
	tr := &quic.Transport{Conn: &lossyConn{PacketConn: udp, pass: func() bool { sent++; return sent <= 2 }}}
	defer tr.Close()
	raddr, _ := net.ResolveUDPAddr("udp", addr)
	// The client may think itself connected: it sent its Finished.
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	tr.Dial(ctx, raddr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{wire.ALPN}}, nil)
	cancel()

	var lines []string
	waitFor(t, "3 failed handshakes logged", func() bool {
		lines = logLines(logs.String(), "agent TLS handshakes failed")
		return sumField(t, lines, "failed") == 3
	})
	all := strings.Join(lines, "\n")
	for _, want := range []string{"last_transport=quic", "last_remote=127.0.0.1:", "last_error="} {
		if !strings.Contains(all, want) {
			t.Errorf("failure lines lack %s:\n%s", want, all)
		}
	}
	var mc dto.Metric
	m.AgentConnections.WithLabelValues("handshake_failed").Write(&mc)
	if v := mc.GetCounter().GetValue(); v != 3 {
		t.Errorf("handshake_failed counted %v, want 3", v)
	}
	// Every place is free again: two agents authenticate at once.
	dialAgent(t, addr, "a")
	dialAgent(t, addr, "b")
	if srv.Agents() != 2 {
		t.Errorf("agents %v", srv.Sessions())
	}
}

// lossyConn is a PacketConn that sends a packet only if pass, called
// for each under a lock, says so, and drops it silently otherwise.
type lossyConn struct {
	net.PacketConn
	mu   sync.Mutex
	pass func() bool
}

func (c *lossyConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	c.mu.Lock()
	pass := c.pass()
	c.mu.Unlock()
	if !pass {
		return len(p), nil
	}
	return c.PacketConn.WriteTo(p, addr)
}
