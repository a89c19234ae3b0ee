package admin_test

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/reverse-http/reverse-http/internal/admin"
	"github.com/reverse-http/reverse-http/internal/front"
	"github.com/reverse-http/reverse-http/internal/metrics"
)

func get(t *testing.T, srv *httptest.Server, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestEndpoints: health, readiness with its reason, metrics, the JSON
// lists with their limit, the page, and no profiler unless asked for.
func TestEndpoints(t *testing.T) {
	var notReady error
	var gotLimit int
	tunnels := []front.Tunnel{{Agent: "4711", Client: "127.0.0.1:5", Destination: "db:5432", Method: "CONNECT", Since: time.Unix(1, 0).UTC()}}
	srv := httptest.NewServer(admin.Handler(admin.Config{
		Role:    "proxy",
		Metrics: metrics.New(),
		Ready:   func() error { return notReady },
		Agents:  func() any { return []map[string]string{{"id": "4711"}} },
		Tunnels: func(limit int) []front.Tunnel { gotLimit = limit; return tunnels },
	}))
	defer srv.Close()

	if code, body := get(t, srv, "/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := get(t, srv, "/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz: %d %q", code, body)
	}
	notReady = errors.New("the route store has not answered for 9s")
	if code, body := get(t, srv, "/readyz"); code != 503 || body != "not ready: the route store has not answered for 9s\n" {
		t.Errorf("/readyz when not ready: %d %q", code, body)
	}
	if code, body := get(t, srv, "/metrics"); code != 200 || !strings.Contains(body, "reverse_http_build_info{") {
		t.Errorf("/metrics: %d, no build info in %.200q", code, body)
	}
	if code, body := get(t, srv, "/agents"); code != 200 || !strings.Contains(body, `"id": "4711"`) {
		t.Errorf("/agents: %d %q", code, body)
	}
	code, body := get(t, srv, "/tunnels")
	var got []front.Tunnel
	if code != 200 || json.Unmarshal([]byte(body), &got) != nil || len(got) != 1 || got[0] != tunnels[0] || gotLimit != admin.DefaultTunnelLimit {
		t.Errorf("/tunnels: %d %q (limit %d)", code, body, gotLimit)
	}
	for _, f := range []string{`"agent"`, `"client"`, `"destination"`, `"method"`, `"since"`, `"bytes_up"`, `"bytes_down"`} {
		if !strings.Contains(body, f) {
			t.Errorf("/tunnels has no field %s: %s", f, body)
		}
	}
	if code, _ := get(t, srv, "/tunnels?limit=5"); code != 200 || gotLimit != 5 {
		t.Errorf("/tunnels?limit=5: %d, limit %d", code, gotLimit)
	}
	for _, bad := range []string{"0", "-1", "x", "99999999999999999999"} {
		if code, body := get(t, srv, "/tunnels?limit="+bad); code != 400 || !strings.Contains(body, "limit") {
			t.Errorf("/tunnels?limit=%s: %d %q, want 400", bad, code, body)
		}
	}
	if code, body := get(t, srv, "/"); code != 200 || !strings.Contains(body, "reverse-http proxy") {
		t.Errorf("/: %d %.100q", code, body)
	}
	if code, _ := get(t, srv, "/debug/pprof/"); code != 404 {
		t.Errorf("/debug/pprof/ without Pprof: %d, want 404", code)
	}
	if code, _ := get(t, srv, "/nothing"); code != 404 {
		t.Errorf("/nothing: %d, want 404", code)
	}
}

// TestNoAgentsOnLB: a role without agents says so on /agents.
func TestNoAgentsOnLB(t *testing.T) {
	srv := httptest.NewServer(admin.Handler(admin.Config{Role: "lb", Metrics: metrics.New()}))
	defer srv.Close()
	if code, body := get(t, srv, "/agents"); code != 404 || !strings.Contains(body, "served by proxies") {
		t.Errorf("/agents on an lb: %d %q", code, body)
	}
}

// TestCmdlineRedacted: with Pprof, the profiler's command line hides
// secrets given inline.
func TestCmdlineRedacted(t *testing.T) {
	const secret = "eyJhbGciOiJFUzI1NiJ9.secret-part.sig"
	old := os.Args
	os.Args = []string{"reverse-http", "agent", "--auth.jwt.token=" + secret}
	defer func() { os.Args = old }()
	srv := httptest.NewServer(admin.Handler(admin.Config{Role: "agent", Metrics: metrics.New(), Pprof: true}))
	defer srv.Close()
	code, body := get(t, srv, "/debug/pprof/cmdline")
	if code != 200 || strings.Contains(body, "secret-part") || body != "reverse-http\x00agent\x00--auth.jwt.token=REDACTED" {
		t.Fatalf("cmdline: %d %q", code, body)
	}
	if code, _ := get(t, srv, "/debug/pprof/"); code != 200 {
		t.Errorf("/debug/pprof/ with Pprof: %d", code)
	}
}
