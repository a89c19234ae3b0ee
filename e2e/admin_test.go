package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// adminGet fetches path from an admin endpoint.
func adminGet(t testing.TB, addr, path string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: clientTimeout}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s%s: %v", addr, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitStatus polls path until it answers want.
func waitStatus(t testing.TB, addr, path string, want int) string {
	t.Helper()
	var body string
	if err := waitFor(startTimeout, func() error {
		var code int
		code, body = adminGet(t, addr, path)
		if code != want {
			return &statusError{path, code, body}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return body
}

type statusError struct {
	path string
	code int
	body string
}

func (e *statusError) Error() string { return e.path + ": " + http.StatusText(e.code) + ": " + e.body }

// TestAdminEndpoints: the admin endpoint of a proxy and of its agent,
// with an open tunnel: health, readiness, /agents and /tunnels with their
// fields, the profiler only with --admin.pprof, and readiness that follows
// the agent's connection.
func TestAdminEndpoints(t *testing.T) {
	t.Parallel()
	e := startEcho(t)
	p := startProxy(t, "--admin.listen-address=127.0.0.1:0", "--admin.pprof")
	a := startAgent(t, p, "4711", "--admin.listen-address=127.0.0.1:0")
	pa, aa := metricsAddr(t, p.process), metricsAddr(t, a)

	for _, addr := range []string{pa, aa} {
		if code, body := adminGet(t, addr, "/healthz"); code != 200 || body != "ok\n" {
			t.Errorf("%s/healthz: %d %q", addr, code, body)
		}
		waitStatus(t, addr, "/readyz", 200)
	}
	tn := mustConnect(t, p.httpAddr, e.addr, basicAuth("4711", "noauth"))
	defer tn.Close()
	echoOnce(t, tn, strings.Repeat("x", 100))

	var agents []map[string]any
	code, body := adminGet(t, pa, "/agents")
	if code != 200 || json.Unmarshal([]byte(body), &agents) != nil || len(agents) != 1 {
		t.Fatalf("/agents: %d %s", code, body)
	}
	for _, f := range []string{"id", "remote_addr", "connected_at", "tunnels_open", "tunnels_total", "bytes_up", "bytes_down", "rtt_ms"} {
		if _, ok := agents[0][f]; !ok {
			t.Errorf("/agents has no %q: %s", f, body)
		}
	}
	if agents[0]["id"] != "4711" || agents[0]["tunnels_open"] != 1.0 || agents[0]["tunnels_total"] != 1.0 ||
		agents[0]["bytes_up"] != 100.0 || agents[0]["bytes_down"] != 100.0 {
		t.Errorf("/agents: %s", body)
	}
	if at, err := time.Parse(time.RFC3339, agents[0]["connected_at"].(string)); err != nil || time.Since(at) > time.Minute {
		t.Errorf("connected_at %v (%v): want when the agent connected", agents[0]["connected_at"], err)
	}
	if agents[0]["transport"] != "quic" {
		t.Errorf("/agents transport %v, want quic", agents[0]["transport"])
	}
	for _, addr := range []string{pa, aa} {
		var tunnels []map[string]any
		code, body := adminGet(t, addr, "/tunnels")
		if code != 200 || json.Unmarshal([]byte(body), &tunnels) != nil || len(tunnels) != 1 {
			t.Fatalf("%s/tunnels: %d %s", addr, code, body)
		}
		tu := tunnels[0]
		if tu["agent"] != "4711" || tu["destination"] != e.addr || tu["method"] != "CONNECT" || tu["bytes_up"] != 100.0 || tu["bytes_down"] != 100.0 {
			t.Errorf("%s/tunnels: %s", addr, body)
		}
	}
	if code, _ := adminGet(t, pa, "/debug/pprof/"); code != 200 {
		t.Errorf("proxy /debug/pprof/ with --admin.pprof: %d", code)
	}
	if code, _ := adminGet(t, aa, "/debug/pprof/"); code != 404 {
		t.Errorf("agent /debug/pprof/ without --admin.pprof: %d, want 404", code)
	}
	checkMetrics(t, "proxy", pa, map[string]func(float64) bool{
		`reverse_http_tunnels_open`: eq(1),
	})
	if _, body := adminGet(t, pa, "/metrics"); !strings.Contains(body, `reverse_http_build_info{`) {
		t.Error("no reverse_http_build_info in /metrics")
	}

	// The proxy goes away: the agent is no longer ready, and says why.
	tn.Close()
	p.stop(t)
	body = waitStatus(t, aa, "/readyz", 503)
	if !strings.Contains(body, "not connected to the proxy") {
		t.Errorf("agent /readyz without a proxy: %q", body)
	}
}

// TestAdminLBReadiness: an lb is ready while memcached answers, and not
// while it does not.
func TestAdminLBReadiness(t *testing.T) {
	t.Parallel()
	progs := haNeed(t)
	mc := startMemcached(t, progs)
	l := startLB(t, mc, "--admin.listen-address=127.0.0.1:0")
	addr := metricsAddr(t, l.process)
	waitStatus(t, addr, "/readyz", 200)
	if code, body := adminGet(t, addr, "/agents"); code != 404 || !strings.Contains(body, "served by proxies") {
		t.Errorf("lb /agents: %d %q", code, body)
	}
	mc.kill(t)
	body := waitStatus(t, addr, "/readyz", 503)
	if !strings.Contains(body, "route store unreachable") {
		t.Errorf("lb /readyz without memcached: %q", body)
	}
	mc.restart(t)
	waitStatus(t, addr, "/readyz", 200)
}

// TestStatusPageInChromium: the admin status page, loaded in headless
// Chromium, shows the connected agent and the open tunnel.
func TestStatusPageInChromium(t *testing.T) {
	t.Parallel()
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is not installed (apt-get install chromium)")
		}
		t.Skip("chromium is not installed")
	}
	e := startEcho(t)
	p := startProxy(t, "--admin.listen-address=127.0.0.1:0")
	startAgent(t, p, "agent-<b>7</b>")
	pa := metricsAddr(t, p.process)
	tn := mustConnect(t, p.httpAddr, e.addr, basicAuth("agent-<b>7</b>", "noauth"))
	defer tn.Close()
	echoOnce(t, tn, "x")

	var dom string
	if err := waitFor(startTimeout, func() error {
		cmd := exec.Command(chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
			"--user-data-dir="+t.TempDir(), "--virtual-time-budget=5000", "--dump-dom", "http://"+pa+"/")
		out, err := cmd.Output()
		dom = string(out)
		if err != nil {
			return err
		}
		for _, want := range []string{
			"<td>agent-&lt;b&gt;7&lt;/b&gt;</td>", // the ID shown as text, not markup
			"<td>" + e.addr + "</td>",             // the tunnel's destination
			`<span id="ready" class="ok">ready</span>`,
		} {
			if !strings.Contains(dom, want) {
				return &statusError{"/ in chromium", 0, "no " + want}
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\n%s", err, dom)
	}
}
