package e2e

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestTunnels checks that clients reach an origin through proxy and agent:
// CONNECT and absolute-form, from curl and from Go's client.
func TestTunnels(t *testing.T) {
	t.Parallel()
	web := startHTTPOrigin(t, false)
	webTLS := startHTTPOrigin(t, true)
	p := startProxy(t)
	startAgent(t, p, "4711")
	proxy := "http://4711:noauth@" + p.httpAddr

	t.Run("curl CONNECT", func(t *testing.T) {
		t.Parallel()
		out, err := curl(t, "--proxytunnel", "--proxy", proxy, "--write-out", "connect=%{http_connect} status=%{http_code}", web.url("/hello"))
		if err != nil {
			t.Fatal(err)
		}
		if want := "hello\nconnect=200 status=200"; out != want {
			t.Errorf("curl printed %q, want %q", out, want)
		}
	})

	t.Run("curl absolute-form", func(t *testing.T) {
		t.Parallel()
		out, err := curl(t, "--proxy", proxy, "--write-out", "connect=%{http_connect} status=%{http_code}", web.url("/hello?from=curl"))
		if err != nil {
			t.Fatal(err)
		}
		if want := "hello\nconnect=000 status=200"; out != want {
			t.Errorf("curl printed %q, want %q", out, want)
		}
		p.waitLog(t, 10*time.Second, 1, "request forwarded", "agent", "4711", "url", web.url("/hello?from=curl"), "status", "200")
	})

	t.Run("Go CONNECT", func(t *testing.T) {
		t.Parallel()
		roots := x509.NewCertPool()
		roots.AddCert(webTLS.srv.Certificate())
		tr := proxyClient(p.httpAddr, "4711", "noauth").Transport.(*http.Transport)
		tr.TLSClientConfig = &tls.Config{RootCAs: roots}
		c := &http.Client{Transport: tr, Timeout: clientTimeout}
		resp, err := c.Get("https://" + webTLS.addr + "/hello")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || string(body) != "hello\n" {
			t.Fatalf("GET https://%s/hello through the proxy: %v %s %q", webTLS.addr, err, resp.Status, body)
		}
		tr.CloseIdleConnections()
		// The tunnel is logged once it has ended.
		p.waitLog(t, 10*time.Second, 1, "tunnel closed", "agent", "4711", "method", "CONNECT", "destination", webTLS.addr)
	})

	t.Run("Go absolute-form", func(t *testing.T) {
		t.Parallel()
		c := proxyClient(p.httpAddr, "4711", "noauth")
		defer c.CloseIdleConnections()
		resp, err := c.Get(web.url("/hello?from=go"))
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || string(body) != "hello\n" {
			t.Fatalf("GET through the proxy: %v %s %q", err, resp.Status, body)
		}
		p.waitLog(t, 10*time.Second, 1, "request forwarded", "agent", "4711", "url", web.url("/hello?from=go"), "status", "200")
	})

	t.Run("keep-alive", func(t *testing.T) {
		t.Parallel()
		own := startHTTPOrigin(t, false) // counts only this subtest's connections
		c := proxyClient(p.httpAddr, "4711", "noauth")
		defer c.CloseIdleConnections()
		for i := range 2 {
			var reused bool
			trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused }}
			req, _ := http.NewRequest("GET", own.url("/hello"), nil)
			req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("request %d: %s", i+1, resp.Status)
			}
			if want := i == 1; reused != want {
				t.Errorf("request %d: client connection reused = %v, want %v", i+1, reused, want)
			}
		}
		// The proxy keeps its tunnel to the origin alive too.
		if n := own.conns.Load(); n != 1 {
			t.Errorf("origin accepted %d connections for 2 sequential requests, want 1", n)
		}
	})

	t.Run("keep-alive across errors", func(t *testing.T) {
		t.Parallel()
		refused := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(closedPort(t))) + "/"
		c := proxyClient(p.httpAddr, "4711", "noauth")
		defer c.CloseIdleConnections()
		// The proxy's own 502 and the origin's 404 leave the client's
		// connection usable.
		for i, step := range []struct {
			url  string
			want int
		}{
			{refused, 502},
			{web.url("/no-such-page"), 404},
			{web.url("/hello"), 200},
		} {
			var reused bool
			trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused }}
			req, _ := http.NewRequest("GET", step.url, nil)
			resp, err := c.Do(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != step.want {
				t.Errorf("GET %s: %s, want %d", step.url, resp.Status, step.want)
			}
			if i > 0 && !reused {
				t.Errorf("GET %s: a new connection to the proxy, want the previous one reused", step.url)
			}
		}
	})

	t.Run("curl POST", func(t *testing.T) {
		t.Parallel()
		const size = 3 << 20 // big enough for curl to send Expect: 100-continue
		file := filepath.Join(t.TempDir(), "upload")
		data := make([]byte, size)
		io.ReadFull(pattern(3), data)
		if err := os.WriteFile(file, data, 0o600); err != nil {
			t.Fatal(err)
		}
		want := sinkResult{SHA256: fmt.Sprintf("%x", sha256.Sum256(data)), Bytes: size}
		for _, tunnel := range []bool{true, false} {
			args := []string{"--proxy", proxy, "--data-binary", "@" + file, "-H", "Content-Type: application/octet-stream"}
			if tunnel {
				args = append(args, "--proxytunnel")
			}
			out, err := curl(t, append(args, web.url("/sink"))...)
			if err != nil {
				t.Fatal(err)
			}
			var got sinkResult
			if err := json.Unmarshal([]byte(out), &got); err != nil || got != want {
				t.Errorf("curl POST (tunnel %v): origin answered %q, want %+v", tunnel, out, want)
			}
		}
	})

	t.Run("hop-by-hop headers", func(t *testing.T) {
		t.Parallel()
		raw := "GET " + web.url("/echo-headers") + " HTTP/1.1\r\n" +
			"Host: " + web.addr + "\r\n" +
			"Proxy-Authorization: " + basicAuth("4711", "noauth") + "\r\n" +
			"Proxy-Connection: keep-alive\r\n" +
			"Connection: keep-alive, X-Hop\r\n" +
			"X-Hop: client-to-proxy-only\r\n" +
			"Keep-Alive: timeout=5\r\n" +
			"X-End: yes\r\n" +
			"\r\n"
		resp, body, err := rawRequest(p.httpAddr, "GET", []byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %s", resp.Status, body)
		}
		var got echoHeadersResult
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatalf("origin's answer %q: %v", body, err)
		}
		for _, h := range []string{"Proxy-Authorization", "Proxy-Connection", "Connection", "X-Hop", "Keep-Alive"} {
			if v, ok := got.Header[h]; ok {
				t.Errorf("origin saw %s: %q", h, v)
			}
		}
		if v := got.Header.Get("X-End"); v != "yes" {
			t.Errorf("origin saw X-End %q, want yes (end-to-end headers pass)", v)
		}
		if got.Host != web.addr {
			t.Errorf("origin saw Host %q, want %q", got.Host, web.addr)
		}
		if v := resp.Header.Get("X-Resp-Hop"); v != "" {
			t.Errorf("client saw the origin's hop-by-hop response header X-Resp-Hop: %q", v)
		}
		if v := resp.Header.Get("X-Resp-End"); v != "yes" {
			t.Errorf("client saw X-Resp-End %q, want yes", v)
		}
	})

	t.Run("POST body", func(t *testing.T) {
		t.Parallel()
		const size = 8 << 20
		c := proxyClient(p.httpAddr, "4711", "noauth")
		defer c.CloseIdleConnections()
		for _, chunked := range []bool{false, true} {
			h := sha256.New()
			body := io.TeeReader(io.LimitReader(pattern(uint64(size)), size), h)
			req, _ := http.NewRequest("POST", web.url("/sink"), body)
			req.ContentLength = size
			if chunked {
				req.ContentLength = -1 // Go sends Transfer-Encoding: chunked
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			out, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var got sinkResult
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("chunked=%v: %s: %q: %v", chunked, resp.Status, out, err)
			}
			if want := hex.EncodeToString(h.Sum(nil)); got.Bytes != size || got.SHA256 != want {
				t.Errorf("chunked=%v: origin got %d bytes sha256 %s, want %d bytes sha256 %s", chunked, got.Bytes, got.SHA256, size, want)
			}
		}
	})

	t.Run("CONNECT through raw TCP keeps request bytes", func(t *testing.T) {
		t.Parallel()
		tn := mustConnect(t, p.httpAddr, web.addr, basicAuth("4711", "noauth"))
		defer tn.Close()
		io.WriteString(tn, "GET /hello HTTP/1.1\r\nHost: "+web.addr+"\r\nConnection: close\r\n\r\n")
		all, err := io.ReadAll(tn)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(all), "HTTP/1.1 200 OK\r\n") || !strings.HasSuffix(string(all), "\r\n\r\nhello\n") {
			t.Errorf("origin's answer through the tunnel: %q", all)
		}
	})
}

// TestAgentIDs runs agents whose IDs hold spaces, non-ASCII letters and
// the most bytes allowed, and checks that clients reach each by name.
func TestAgentIDs(t *testing.T) {
	t.Parallel()
	web := startHTTPOrigin(t, false)
	p := startProxy(t)
	ids := []string{"büro 7", "host.example-1_2", strings.Repeat("x", 256)}
	for _, id := range ids {
		startAgent(t, p, id)
	}
	for _, id := range ids {
		mustGetHello(t, p, id, web)
	}
	for _, absent := range []string{"büro 8", "BÜRO 7", strings.Repeat("x", 255)} {
		status, body, err := get(p.httpAddr, absent, web.url("/hello"))
		if err != nil || status != 503 {
			t.Errorf("agent %q: %d %q %v, want 503", absent, status, body, err)
		}
	}
	out, err := runExpectFailure(append(agentArgs(p), "--auth.noauth.agent-id="+strings.Repeat("x", 257))...)
	if err != nil {
		t.Error(err)
	} else if !strings.Contains(out, "agent-id") {
		t.Errorf("agent with a 257-byte ID: the error does not name the flag:\n%s", out)
	}
}
