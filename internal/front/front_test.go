package front_test

import (
	"bufio"
	"encoding/base64"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/reverse-http/reverse-http/internal/allow"
	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/front"
	"github.com/reverse-http/reverse-http/internal/proxy"
)

// newHandler is the client side of a proxy that has no agent connected:
// the real proxy.Server as the dialer, so a request that gets as far as
// dialing is answered 503 by the code path a running proxy takes.
func newHandler(t testing.TB, allowlist ...string) *front.Handler {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var list *allow.List
	if len(allowlist) > 0 {
		var err error
		if list, err = allow.Parse(allowlist); err != nil {
			t.Fatal(err)
		}
	}
	srv := proxy.New(proxy.Config{Auth: auth.NoAuth()}, log)
	return front.New(front.Config{Auth: auth.NoAuth(), Allow: list, Dialer: srv}, log)
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// serve parses raw as a client's request and answers it.
func serve(t testing.TB, h http.Handler, raw string) *httptest.ResponseRecorder {
	t.Helper()
	req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
	if err != nil {
		t.Fatalf("ReadRequest(%q): %v", raw, err)
	}
	req.RemoteAddr = "192.0.2.1:5555"
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func TestRefusals(t *testing.T) {
	ok := basic("4711", "noauth")
	for _, c := range []struct {
		name, raw string
		status    int
		body      string // a part of the one-line reason
	}{
		{"origin-form", "GET /x HTTP/1.1\r\nHost: a\r\nProxy-Authorization: " + ok + "\r\n\r\n", 400, "this is a proxy"},
		{"ftp scheme", "GET ftp://a/ HTTP/1.1\r\nHost: a\r\nProxy-Authorization: " + ok + "\r\n\r\n", 400, "unsupported scheme"},
		{"CONNECT without port", "CONNECT a HTTP/1.1\r\nHost: a\r\nProxy-Authorization: " + ok + "\r\n\r\n", 400, "host:port"},
		{"CONNECT port 0", "CONNECT a:0 HTTP/1.1\r\nHost: a:0\r\nProxy-Authorization: " + ok + "\r\n\r\n", 400, "host:port"},
		{"absolute-form bad port", "GET http://a:99999/ HTTP/1.1\r\nHost: a\r\nProxy-Authorization: " + ok + "\r\n\r\n", 400, ""},
		{"no credentials", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 407, "user = agent ID"},
		{"not Basic", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nProxy-Authorization: Bearer x\r\n\r\n", 407, ""},
		{"bad base64", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nProxy-Authorization: Basic !!!\r\n\r\n", 407, ""},
		{"empty agent ID", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nProxy-Authorization: " + basic("", "noauth") + "\r\n\r\n", 407, ""},
		{"agent offline, CONNECT", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nProxy-Authorization: " + ok + "\r\n\r\n", 503, "agent 4711 is not connected"},
		{"agent offline, absolute-form", "GET http://a/ HTTP/1.1\r\nHost: a\r\nProxy-Authorization: " + ok + "\r\n\r\n", 503, "agent 4711 is not connected"},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := serve(t, newHandler(t), c.raw)
			if w.Code != c.status {
				t.Fatalf("status %d, want %d; body %q", w.Code, c.status, w.Body.String())
			}
			body := w.Body.String()
			if strings.Count(body, "\n") != 1 || !strings.HasSuffix(body, "\n") || !strings.Contains(body, c.body) {
				t.Errorf("body %q: want one line containing %q", body, c.body)
			}
			if c.status == 407 && w.Header().Get("Proxy-Authenticate") != `Basic realm="reverse-http"` {
				t.Errorf("407 without Proxy-Authenticate: %v", w.Header())
			}
			if strings.HasPrefix(c.raw, "CONNECT") && w.Header().Get("Connection") != "close" {
				t.Errorf("a refused CONNECT keeps the connection: %v", w.Header())
			}
		})
	}
}

func TestProxyAllowlist(t *testing.T) {
	h := newHandler(t, "*.internal:443")
	ok := basic("4711", "noauth")
	w := serve(t, h, "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nProxy-Authorization: "+ok+"\r\n\r\n")
	if w.Code != 403 || !strings.Contains(w.Body.String(), "proxy's allowlist") {
		t.Fatalf("denied destination: %d %q", w.Code, w.Body.String())
	}
	// Allowed: it gets as far as the (offline) agent.
	w = serve(t, h, "CONNECT db.internal:443 HTTP/1.1\r\nHost: db.internal:443\r\nProxy-Authorization: "+ok+"\r\n\r\n")
	if w.Code != 503 {
		t.Fatalf("allowed destination: %d %q", w.Code, w.Body.String())
	}
}

// FuzzServeHTTP feeds any request net/http would accept to the handler:
// it must answer with one of the documented refusals and a one-line body,
// never panic. (No agent is connected, so nothing is tunnelled.)
func FuzzServeHTTP(f *testing.F) {
	ok := basic("4711", "noauth")
	for _, s := range []string{
		"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nProxy-Authorization: " + ok + "\r\n\r\n",
		"GET http://a/x?y HTTP/1.1\r\nHost: a\r\nProxy-Authorization: " + ok + "\r\n\r\n",
		"GET https://[::1]:8443/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: " + ok + "\r\n\r\n",
		"POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nProxy-Authorization: " + ok + "\r\n\r\nabc",
		"CONNECT [fe80::1%25eth0]:22 HTTP/1.1\r\nHost: x\r\nProxy-Authorization: " + ok + "\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
	} {
		f.Add(s)
	}
	h := newHandler(f, "*.internal:443", "10.0.0.0/8", "a:1-65535")
	documented := map[int]bool{400: true, 403: true, 407: true, 502: true, 503: true, 504: true}
	f.Fuzz(func(t *testing.T, raw string) {
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil {
			return // net/http answers those itself
		}
		req.RemoteAddr = "192.0.2.1:5555"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if !documented[w.Code] {
			t.Fatalf("status %d for %q; body %q", w.Code, raw, w.Body.String())
		}
		if body := w.Body.String(); strings.Count(body, "\n") != 1 {
			t.Fatalf("body %q for %q: want one line", body, raw)
		}
	})
}

// TestClientDestinations: a client's own destinations (here a token's)
// and the node's allowlist must both allow a destination; the reason
// names which refused it.
func TestClientDestinations(t *testing.T) {
	key, err := auth.GenerateKey("ES256")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := auth.Sign(key, auth.TokenOptions{AgentID: "4711", Role: auth.RoleClient, Duration: time.Hour,
		Destinations: []string{"*.internal:443"}})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	list, _ := allow.Parse([]string{"db.internal:443,www.example:443"})
	srv := proxy.New(proxy.Config{Auth: auth.NoAuth()}, log)
	h := front.New(front.Config{Auth: auth.JWT(auth.NewVerifier(key.Public(), "")), Allow: list, Dialer: srv}, log)
	for _, c := range []struct {
		dest, why string
		status    int
	}{
		{"db.internal:443", "not connected", 503},                              // both allow: on to the agent
		{"www.example:443", "is not among the destinations of jwt:jti:", 403},  // the token does not
		{"cache.internal:443", "is not allowed by the proxy's allowlist", 403}, // the node does not
	} {
		w := serve(t, h, "CONNECT "+c.dest+" HTTP/1.1\r\nHost: "+c.dest+"\r\nProxy-Authorization: "+basic("4711", tok)+"\r\n\r\n")
		if w.Code != c.status || !strings.Contains(w.Body.String(), c.why) {
			t.Errorf("%s: %d %q, want %d %q", c.dest, w.Code, w.Body.String(), c.status, c.why)
		}
	}
}
