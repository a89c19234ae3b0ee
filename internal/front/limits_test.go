package front_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/front"
	"github.com/reverse-http/reverse-http/internal/metrics"
	"github.com/reverse-http/reverse-http/internal/wire"
)

// wait bounds every blocking step of these tests.
const wait = 10 * time.Second

// fakeDialer reaches the destination itself, over loopback TCP, for the
// agents it knows; any other agent is offline.
type fakeDialer struct {
	agents map[string]bool
	dials  atomic.Int64 // successful ones
}

func (d *fakeDialer) Dial(ctx context.Context, agentID, hostport string) (net.Conn, error) {
	if !d.agents[agentID] {
		return nil, wire.Errorf(wire.ErrAgentOffline, "agent "+agentID+" is not connected")
	}
	var nd net.Dialer
	c, err := nd.DialContext(ctx, "tcp", hostport)
	if err != nil {
		return nil, wire.Errorf(wire.ErrUnreachable, err.Error())
	}
	d.dials.Add(1)
	return c, nil
}

// syncBuffer is a log destination the test reads while the handler writes.
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

// waitLog waits until the log has a line containing every part.
func (b *syncBuffer) waitLog(t testing.TB, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		for _, line := range strings.Split(b.String(), "\n") {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(line, p)
			}
			if ok {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q within %s:\n%s", parts, wait, b.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// serveFront runs h behind front.NewServer on a loopback port until the
// test ends and returns its address.
func serveFront(t testing.TB, h *front.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := front.NewServer("", h, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	go front.Serve(hs, ln)
	t.Cleanup(func() { hs.Close() })
	return ln.Addr().String()
}

// newFront is a Handler with a fakeDialer for agents, logging to the
// returned buffer.
func newFront(t testing.TB, cfg front.Config, agents ...string) (*front.Handler, *syncBuffer, *fakeDialer) {
	t.Helper()
	d := &fakeDialer{agents: map[string]bool{}}
	for _, a := range agents {
		d.agents[a] = true
	}
	logs := &syncBuffer{}
	cfg.Auth = auth.NoAuth()
	cfg.Dialer = d
	return front.New(cfg, slog.New(slog.NewTextHandler(logs, nil))), logs, d
}

// origin serves "hello" on every path, and holds a request to /hold until
// release is closed; holding, if not nil, gets a value when one arrives.
func origin(t testing.TB, release <-chan struct{}, holding chan<- struct{}) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			if holding != nil {
				holding <- struct{}{}
			}
			select {
			case <-release:
			case <-time.After(wait):
			}
		}
		io.WriteString(w, "hello")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// TestTransportsOnlyForReachableAgents: absolute-form requests for agents
// that do not exist make no connection pool (the old handler kept one per
// user name, forever); reachable agents get one each, reused, and never
// more than MaxTransports.
func TestTransportsOnlyForReachableAgents(t *testing.T) {
	h, _, d := newFront(t, front.Config{MaxTransports: 2}, "a", "b", "c")
	web := origin(t, nil, nil)
	for i := range 1000 {
		w := serve(t, h, fmt.Sprintf("GET http://%s/ HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\n\r\n",
			web, web, basic(fmt.Sprintf("random-%d", i), "noauth")))
		if w.Code != 503 || !strings.Contains(w.Body.String(), "is not connected") {
			t.Fatalf("request %d: %d %q, want 503", i, w.Code, w.Body.String())
		}
	}
	if n := front.Transports(h); n != 0 {
		t.Fatalf("%d connection pools after 1000 requests for agents that do not exist, want 0", n)
	}

	get := func(agent string) {
		t.Helper()
		w := serve(t, h, fmt.Sprintf("GET http://%s/ HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\n\r\n",
			web, web, basic(agent, "noauth")))
		if w.Code != 200 || w.Body.String() != "hello" {
			t.Fatalf("agent %s: %d %q", agent, w.Code, w.Body.String())
		}
	}
	for range 5 {
		get("a")
	}
	if n := d.dials.Load(); n != 1 {
		t.Errorf("5 requests through agent a dialled %d tunnels, want 1 kept alive", n)
	}
	get("b")
	get("c")
	if n := front.Transports(h); n != 2 {
		t.Fatalf("%d connection pools for 3 agents with MaxTransports 2, want 2", n)
	}
	h.Forget("c")
	if n := front.Transports(h); n != 1 {
		t.Fatalf("%d connection pools after Forget, want 1", n)
	}
}

// TestTunnelsPerClientLimit: past MaxTunnelsPerClient open tunnels and
// requests, a client address gets 429 with a reason naming the flag, for a
// CONNECT and an absolute-form request alike; requests forwarded by another
// node are not counted again; a place is free again once a tunnel ends.
func TestTunnelsPerClientLimit(t *testing.T) {
	m := metrics.New()
	key := []byte("a cluster key of thirty-two bytes")
	h, logs, _ := newFront(t, front.Config{MaxTunnelsPerClient: 2, Metrics: m, ClusterKey: key}, "4711")
	release, holding := make(chan struct{}), make(chan struct{}, 1)
	web := origin(t, release, holding)
	addr := serveFront(t, h)
	auth := basic("4711", "noauth")

	tunnel := func() (net.Conn, *http.Response) {
		t.Helper()
		c, err := net.DialTimeout("tcp", addr, wait)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(wait))
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\n\r\n", web, web, auth)
		resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
		if err != nil {
			t.Fatal(err)
		}
		return c, resp
	}
	// An absolute-form request held by the origin takes one place...
	held := make(chan error, 1)
	go func() {
		resp, err := rawGet(addr, web, "/hold", auth, "")
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("held request: %s", resp.Status)
		}
		held <- err
	}()
	select {
	case <-holding:
	case err := <-held:
		t.Fatalf("held request ended: %v", err)
	}
	// ... a tunnel the other.
	first, resp := tunnel()
	defer first.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("first CONNECT: %s", resp.Status)
	}
	c, third := tunnel()
	c.Close()
	if third.StatusCode != 429 {
		t.Fatalf("CONNECT with both places taken: %s, want 429", third.Status)
	}
	body, _ := io.ReadAll(third.Body)
	if !strings.Contains(string(body), "--limits.tunnels-per-client") || strings.Count(string(body), "\n") != 1 {
		t.Errorf("429 body %q, want one line naming --limits.tunnels-per-client", body)
	}
	resp, err := rawGet(addr, web, "/", auth, "")
	if err != nil || resp.StatusCode != 429 {
		t.Fatalf("absolute-form at the limit: %v %v, want 429", resp, err)
	}
	logs.waitLog(t, `msg="request refused"`, "status=429", "--limits.tunnels-per-client")
	if n := value(m.Tunnels.WithLabelValues("connect", "limited")); n < 1 {
		t.Errorf("reverse_http_tunnels_total{kind=connect,outcome=limited} = %v", n)
	}
	// Forwarded by another node, which signed it with the cluster key:
	// counted there, not here.
	signed := front.SignForwarded(key, "4711", web, time.Now())
	resp, err = rawGet(addr, web, "/", auth, front.ForwardedHeader+": "+signed+"\r\n")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("signed forwarded request at the limit: %v %v, want 200", resp, err)
	}
	// Anyone can send the header: unsigned, or signed for another
	// destination, it is counted like any request.
	for _, v := range []string{"1", front.SignForwarded(key, "4711", "elsewhere:80", time.Now())} {
		resp, err = rawGet(addr, web, "/", auth, front.ForwardedHeader+": "+v+"\r\n")
		if err != nil || resp.StatusCode != 429 {
			t.Fatalf("forwarded header %q at the limit: %v %v, want 429", v, resp, err)
		}
	}
	logs.waitLog(t, "forwarded request not verified", "--limits.tunnels-per-client", `reason="not signed"`)

	close(release)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	first.Close()
	deadline := time.Now().Add(wait)
	for {
		c, resp := tunnel()
		c.Close()
		if resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("CONNECT after the others ended: %s", resp.Status)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rawGet sends one absolute-form GET for path on web through the proxy at
// addr, with extra header lines, and reads the response with its body.
func rawGet(addr, web, path, auth, extra string) (*http.Response, error) {
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(wait))
	fmt.Fprintf(c, "GET http://%s%s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\n%s\r\n", web, path, web, auth, extra)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, err
	}
	_, err = io.ReadAll(resp.Body)
	return resp, err
}

// TestTunnelIdleTimeout: a CONNECT tunnel that moves no byte for
// TunnelIdleTimeout is closed and logged with outcome "idle timeout"; one
// that keeps moving stays.
func TestTunnelIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	h, logs, _ := newFront(t, front.Config{TunnelIdleTimeout: idle}, "4711")
	echo := echoOrigin(t)
	addr := serveFront(t, h)
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(wait))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\n\r\n", echo, echo, basic("4711", "noauth"))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	buf := make([]byte, 4)
	for range 6 { // 6 × 100ms: twice the timeout, moving
		io.WriteString(c, "ping")
		if _, err := io.ReadFull(br, buf); err != nil {
			t.Fatalf("echo while active: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	start := time.Now()
	if n, err := br.Read(buf); err == nil {
		t.Fatalf("read %q from an idle tunnel, want its end", buf[:n])
	}
	if took := time.Since(start); took > idle+2*time.Second {
		t.Errorf("idle tunnel closed after %s", took)
	}
	logs.waitLog(t, `msg="tunnel closed"`, `outcome="idle timeout"`, "bytes_up=24", "bytes_down=24")
}

// echoOrigin echoes each connection until the peer closes.
func echoOrigin(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// TestWebSocketUpgradeCounted: an absolute-form request the origin
// upgrades (101) is relayed both ways, logged and counted with status 101
// and the bytes each way after the upgrade.
func TestWebSocketUpgradeCounted(t *testing.T) {
	m := metrics.New()
	h, logs, _ := newFront(t, front.Config{Metrics: m}, "4711")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ws := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "want an upgrade", 400)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		// Echo until the client's end, then say goodbye.
		io.Copy(c, brw)
		io.WriteString(c, "bye")
	})}
	go ws.Serve(ln)
	t.Cleanup(func() { ws.Close() })
	web := ln.Addr().String()

	c, err := net.DialTimeout("tcp", serveFront(t, h), wait)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(wait))
	fmt.Fprintf(c, "GET http://%s/ws HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		web, web, basic("4711", "noauth"))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	io.WriteString(c, "hello websocket") // 15 bytes up, echoed down
	buf := make([]byte, 15)
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "hello websocket" {
		t.Fatalf("echo %q, %v", buf, err)
	}
	c.(*net.TCPConn).CloseWrite()
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "bye" {
		t.Fatalf("after the half-close: %q, %v; want bye", rest, err)
	}
	logs.waitLog(t, `msg="request forwarded"`, "status=101", "bytes_up=15", "bytes_down=18")
	if n := value(m.Tunnels.WithLabelValues("forward", "ok")); n != 1 {
		t.Errorf("reverse_http_tunnels_total{kind=forward,outcome=ok} = %v, want 1", n)
	}
	if up, down := value(m.TunnelBytes.WithLabelValues("up")), value(m.TunnelBytes.WithLabelValues("down")); up != 15 || down != 18 {
		t.Errorf("tunnel bytes up %v, down %v; want 15 and 18", up, down)
	}
}

// TestHeaderLimits: NewServer applies the Config's header size and header
// read timeout.
func TestHeaderLimits(t *testing.T) {
	h, _, _ := newFront(t, front.Config{MaxHeaderBytes: 1 << 10, ReadHeaderTimeout: 300 * time.Millisecond})
	addr := serveFront(t, h)
	big := "X-Big: " + strings.Repeat("a", 8<<10) + "\r\n"
	resp, err := rawGet(addr, "example.com", "/", basic("4711", "noauth"), big)
	if err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("8 KiB header with a 1 KiB limit: %v %v, want 431", resp, err)
	}
	// The default takes it (and answers 503: no agent).
	dh, _, _ := newFront(t, front.Config{})
	resp, err = rawGet(serveFront(t, dh), "example.com", "/", basic("4711", "noauth"), big)
	if err != nil || resp.StatusCode != 503 {
		t.Fatalf("8 KiB header with the default limit: %v %v, want 503", resp, err)
	}

	// A header that never ends: the connection is closed after the timeout.
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(wait))
	start := time.Now()
	io.WriteString(c, "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n")
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("slow header: %v, want the connection closed", err)
	}
	if took := time.Since(start); took < 250*time.Millisecond || took > 3*time.Second {
		t.Errorf("slow header: closed after %s, want about 300ms", took)
	}
}

// value reads a counter.
func value(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// TestIdleTimeoutCutsStalledRequest: an absolute-form request whose origin
// sends nothing for TunnelIdleTimeout gets 504 naming the flag.
func TestIdleTimeoutCutsStalledRequest(t *testing.T) {
	h, logs, _ := newFront(t, front.Config{TunnelIdleTimeout: 300 * time.Millisecond}, "4711")
	release := make(chan struct{})
	defer close(release)
	web := origin(t, release, nil)
	start := time.Now()
	resp, err := rawGet(serveFront(t, h), web, "/hold", basic("4711", "noauth"), "")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("stalled request: %s, want 504", resp.Status)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("answered after %s", took)
	}
	logs.waitLog(t, `msg="request forwarded"`, "status=504", "--limits.tunnel-idle-timeout")
}
