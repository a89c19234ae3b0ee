package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMetrics checks /healthz and the /metrics counters that
// docs/operations.md lists, on proxy and agent, after a few requests.
func TestMetrics(t *testing.T) {
	t.Parallel()
	web := startHTTPOrigin(t, false)
	e := startEcho(t)
	p := startProxy(t, "--metrics.listen-address=127.0.0.1:0")
	a := startAgent(t, p, "4711", "--metrics.listen-address=127.0.0.1:0")
	proxyMetrics := metricsAddr(t, p.process)
	agentMetrics := metricsAddr(t, a)

	for _, addr := range []string{proxyMetrics, agentMetrics} {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "ok" {
			t.Errorf("%s/healthz: %s %q", addr, resp.Status, body)
		}
	}

	// One CONNECT tunnel with 1000 bytes each way, ended.
	tn := mustConnect(t, p.httpAddr, e.addr, basicAuth("4711", "noauth"))
	echoOnce(t, tn, strings.Repeat("m", 1000))
	tn.Close()
	checkMetrics(t, "proxy", proxyMetrics, map[string]func(float64) bool{
		`reverse_http_agents_connected`:                                 eq(1),
		`reverse_http_agent_connections_total{outcome="authenticated"}`: eq(1),
		`reverse_http_tunnels_total{kind="connect",outcome="ok"}`:       eq(1),
		`reverse_http_tunnels_open`:                                     eq(0),
		`reverse_http_tunnel_bytes_total{direction="up"}`:               eq(1000),
		`reverse_http_tunnel_bytes_total{direction="down"}`:             eq(1000),
		`reverse_http_tunnel_open_seconds_count`:                        eq(1),
		`reverse_http_audit_dropped_total`:                              eq(0),
	})
	checkMetrics(t, "agent", agentMetrics, map[string]func(float64) bool{
		`reverse_http_agents_connected`:                         eq(1),
		`reverse_http_tunnels_total{kind="agent",outcome="ok"}`: eq(1),
		`reverse_http_tunnels_open`:                             eq(0),
		`reverse_http_tunnel_bytes_total{direction="up"}`:       eq(1000),
		`reverse_http_tunnel_bytes_total{direction="down"}`:     eq(1000),
	})

	// An absolute-form request, one for an absent agent, one refused.
	mustGetHello(t, p, "4711", web)
	if status, _, _ := get(p.httpAddr, "nobody", web.url("/hello")); status != 503 {
		t.Errorf("absent agent: %d, want 503", status)
	}
	if resp, _, err := rawRequest(p.httpAddr, "CONNECT", []byte(connectHeader(e.addr, ""))); err != nil || resp.StatusCode != 407 {
		t.Errorf("CONNECT without credentials: %v %v, want 407", resp, err)
	}
	checkMetrics(t, "proxy", proxyMetrics, map[string]func(float64) bool{
		`reverse_http_tunnels_total{kind="forward",outcome="ok"}`:           eq(1),
		`reverse_http_tunnels_total{kind="forward",outcome="offline"}`:      eq(1),
		`reverse_http_tunnels_total{kind="connect",outcome="unauthorized"}`: eq(1),
		`reverse_http_tunnels_total{kind="connect",outcome="ok"}`:           eq(1),
	})
	checkMetrics(t, "agent", agentMetrics, map[string]func(float64) bool{
		`reverse_http_tunnels_total{kind="agent",outcome="ok"}`: eq(2),
	})
}

func eq(want float64) func(float64) bool      { return func(v float64) bool { return v == want } }
func atLeast(want float64) func(float64) bool { return func(v float64) bool { return v >= want } }

// metricsAddr is the address a process logged in `admin listening`.
func metricsAddr(t testing.TB, p *process) string {
	t.Helper()
	p.waitLog(t, startTimeout, 1, "admin listening")
	return p.lines("admin listening")[0]["address"]
}

// checkMetrics polls addr's /metrics until every series satisfies its
// check (tunnels are counted when they end, a moment after the client
// sees them end).
func checkMetrics(t testing.TB, name, addr string, want map[string]func(float64) bool) {
	t.Helper()
	var got map[string]float64
	err := waitFor(10*time.Second, func() error {
		var err error
		if got, err = scrape(addr); err != nil {
			return err
		}
		var bad []string
		for series, ok := range want {
			if v, found := got[series]; !found || !ok(v) {
				bad = append(bad, fmt.Sprintf("%s = %v (present %v)", series, v, found))
			}
		}
		if bad != nil {
			return fmt.Errorf("%s", strings.Join(bad, "; "))
		}
		return nil
	})
	if err != nil {
		t.Errorf("%s metrics: %v", name, err)
	}
}

// scrape reads the Prometheus text format into series -> value.
func scrape(addr string) (map[string]float64, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}
