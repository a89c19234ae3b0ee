package e2e

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// get fetches url through the proxy at addr as agent and returns the
// status and body.
func get(addr, agent, url string) (int, string, error) {
	c := proxyClient(addr, agent, "noauth")
	defer c.CloseIdleConnections()
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// post POSTs body to url through the proxy at addr as agent.
func post(addr, agent, url, body string) (int, string, error) {
	c := proxyClient(addr, agent, "noauth")
	defer c.CloseIdleConnections()
	resp, err := c.Post(url, "text/plain", strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out), err
}

// mustGetHello fails the test unless /hello answers through the proxy.
func mustGetHello(t testing.TB, p *proxyProc, agent string, web *httpOrigin) {
	t.Helper()
	status, body, err := get(p.httpAddr, agent, web.url("/hello"))
	if err != nil || status != 200 || body != "hello\n" {
		t.Fatalf("GET /hello through agent %s: %d %q %v", agent, status, body, err)
	}
}

// echoOnce writes msg into the tunnel and reads it back.
func echoOnce(t testing.TB, tn *tunnel, msg string) {
	t.Helper()
	if _, err := io.WriteString(tn, msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(tn, buf); err != nil {
		t.Fatalf("echo of %q: %v", msg, err)
	}
	if string(buf) != msg {
		t.Fatalf("echo %q, want %q", buf, msg)
	}
}

// TestDuplicateAgentID checks that a second agent with the same ID replaces
// the first, and that the replaced one stays away for its replaced-wait
// (30s by default) instead of fighting back.
func TestDuplicateAgentID(t *testing.T) {
	t.Parallel()
	web := startHTTPOrigin(t, false)
	p := startProxy(t)
	// A short backoff: a replaced agent that ignored the replaced-wait
	// would be back within a second.
	a := startAgent(t, p, "4711", "--agent-client.backoff-max=500ms")
	// An absolute-form request leaves an idle tunnel through A in the
	// proxy's pool.
	mustGetHello(t, p, "4711", web)
	b := startAgent(t, p, "4711", "--agent-client.backoff-max=500ms")
	bConnected := time.Now()

	p.waitLog(t, 10*time.Second, 1, "agent connection replaced by a new one with the same ID", "agent", "4711")
	a.waitLog(t, 10*time.Second, 1, "proxy closed this connection: another agent connected with the same ID; waiting before reconnecting", "retry_in", "30s")

	// Requests go through B now, even one that cannot be retried on
	// another connection if the pooled one turned out dead.
	status, out, err := post(p.httpAddr, "4711", web.url("/sink"), "through B")
	if err != nil || status != 200 || !strings.Contains(out, `"bytes":9`) {
		t.Errorf("POST /sink after the replacement: %d %q %v", status, out, err)
	}
	tn := mustConnect(t, p.httpAddr, web.addr, basicAuth("4711", "noauth"))
	io.WriteString(tn, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if all, err := io.ReadAll(tn); err != nil || !strings.HasSuffix(string(all), "hello\n") {
		t.Errorf("GET /hello through the tunnel: %q %v", all, err)
	}
	tn.Close()
	b.waitLog(t, 10*time.Second, 1, "tunnel closed", "destination", web.addr)
	if n := a.count("tunnel closed"); n > 1 {
		t.Errorf("the replaced agent served %d tunnels, want only the first request's", n)
	}

	// A does not come back: 5s of watching, two registrations in all.
	for time.Since(bConnected) < 5*time.Second {
		if n := p.count("agent connected", "agent", "4711"); n != 2 {
			t.Fatalf("%s after B connected: proxy logged %d `agent connected` for 4711, want 2 (A must wait 30s)", time.Since(bConnected).Round(time.Millisecond), n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := p.count("agent connection replaced by a new one with the same ID"); n != 1 {
		t.Errorf("proxy logged %d replacements, want 1", n)
	}
	mustGetHello(t, p, "4711", web)
}

// TestReconnect restarts the proxy on the same ports, gracefully and with
// SIGKILL, and checks that the agent comes back. It logs how long that took.
func TestReconnect(t *testing.T) {
	t.Parallel()
	const bound = 40 * time.Second
	web := startHTTPOrigin(t, false)
	p1 := startProxy(t)
	a := startAgent(t, p1, "4711",
		"--agent-client.idle-timeout=3s", "--agent-client.keep-alive=1s", "--agent-client.backoff-max=1s")
	mustGetHello(t, p1, "4711", web)

	// SIGTERM: the proxy closes the agent's connection (CodeShutdown) and
	// the agent reconnects at once.
	stopped := time.Now()
	if err := p1.terminate(stopTimeout); err != nil {
		t.Fatal(err)
	}
	exited := time.Since(stopped)
	p2 := restartProxy(t, p1)
	up := time.Since(stopped)
	p2.waitLog(t, bound, 1, "agent connected", "agent", "4711")
	back := time.Since(stopped)
	mustGetHello(t, p2, "4711", web)
	t.Logf("graceful restart: proxy exited %s after SIGTERM, new proxy up after %s, agent back after %s, tunnels work after %s",
		exited.Round(time.Millisecond), up.Round(time.Millisecond), back.Round(time.Millisecond), time.Since(stopped).Round(time.Millisecond))

	// SIGKILL: no goodbye; the agent notices by its 3s idle timeout.
	killed := time.Now()
	p2.kill(t)
	p3 := restartProxy(t, p2)
	up = time.Since(killed)
	p3.waitLog(t, bound, 1, "agent connected", "agent", "4711")
	back = time.Since(killed)
	mustGetHello(t, p3, "4711", web)
	t.Logf("SIGKILL restart: new proxy up after %s, agent back after %s, tunnels work after %s (agent idle timeout 3s)",
		up.Round(time.Millisecond), back.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
	if n := a.count("connected to proxy"); n != 3 {
		t.Errorf("agent logged %d connections, want 3", n)
	}
}

// TestShutdownWithOpenTunnel stops each process with SIGTERM while a
// tunnel through it is open: it must exit promptly with status 0 and the
// client's tunnel must end.
func TestShutdownWithOpenTunnel(t *testing.T) {
	t.Parallel()
	const grace = 7 * time.Second // the proxy gives HTTP requests 5s
	for _, role := range []string{"agent", "proxy"} {
		t.Run(role, func(t *testing.T) {
			t.Parallel()
			e := startEcho(t)
			p := startProxy(t)
			a := startAgent(t, p, "4711")
			tn := mustConnect(t, p.httpAddr, e.addr, basicAuth("4711", "noauth"))
			defer tn.Close()
			echoOnce(t, tn, "before shutdown")
			victim := a
			if role == "proxy" {
				victim = p.process
			}
			start := time.Now()
			if err := victim.terminate(grace); err != nil {
				t.Fatalf("%v (tunnel open to %s)", err, e.addr)
			}
			t.Logf("%s exited %s after SIGTERM", role, time.Since(start).Round(time.Millisecond))
			tn.SetDeadline(time.Now().Add(10 * time.Second))
			if n, err := io.Copy(io.Discard, tn); n != 0 || isTimeout(err) {
				t.Errorf("client's tunnel after the %s stopped: read %d bytes, %v; want it ended", role, n, err)
			}
		})
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestShutdownWithRequestInFlight stops the proxy with SIGTERM while an
// absolute-form request waits for its origin. docs/operations.md: the
// proxy "gives HTTP clients 5 seconds to finish"; the answer comes after
// 1.5s, so it must reach the client.
func TestShutdownWithRequestInFlight(t *testing.T) {
	t.Parallel()
	web := startHTTPOrigin(t, false)
	p := startProxy(t)
	startAgent(t, p, "4711")
	type result struct {
		status int
		body   string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		status, body, err := get(p.httpAddr, "4711", web.url("/slow?ms=1500"))
		done <- result{status, body, err}
	}()
	if err := waitFor(10*time.Second, func() error {
		if web.slowStarted.Load() == 0 {
			return errors.New("the origin has not received the request")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := p.terminate(stopTimeout); err != nil {
		t.Error(err)
	}
	t.Logf("proxy exited %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	select {
	case r := <-done:
		if r.err != nil || r.status != 200 || r.body != "slow\n" {
			t.Errorf("request in flight at SIGTERM: %d %q %v; want 200 \"slow\\n\" (the proxy gives clients 5s to finish)", r.status, r.body, r.err)
		}
	case <-time.After(clientTimeout):
		t.Fatal("request in flight at SIGTERM never ended")
	}
}
