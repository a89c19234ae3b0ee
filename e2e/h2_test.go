package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// h2Proxy is a proxy serving its client port over TLS, with HTTP/2.
func h2Proxy(t testing.TB, extra ...string) *proxyProc {
	t.Helper()
	return startProxy(t, append([]string{"--http-proxy.tls.enable",
		"--http-proxy.tls.file.cert=" + filepath.Join(certDir, "proxy.pem"),
		"--http-proxy.tls.file.key=" + filepath.Join(certDir, "proxy-key.pem")}, extra...)...)
}

// h2Roots trusts the local CA.
func h2Roots(t testing.TB) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(certDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	return roots
}

// h2Client is Go's HTTP/2 client pointed at a TLS proxy: a CONNECT goes
// to the proxy itself, as a stream of one connection (it waits for a
// stream rather than dialing another connection). dials counts its TLS
// connections.
type h2Client struct {
	*http.Client
	proxy string
	dials atomic.Int64
}

func newH2Client(t testing.TB, proxy string) *h2Client {
	t.Helper()
	c := &h2Client{proxy: proxy}
	var protos http.Protocols
	protos.SetHTTP2(true)
	roots := h2Roots(t)
	tr := &http.Transport{
		Protocols: &protos,
		HTTP2:     &http.HTTP2Config{StrictMaxConcurrentRequests: true},
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c.dials.Add(1)
			d := tls.Dialer{Config: &tls.Config{RootCAs: roots, NextProtos: []string{"h2"}}}
			return d.DialContext(ctx, network, addr)
		},
	}
	c.Client = &http.Client{Transport: tr}
	t.Cleanup(tr.CloseIdleConnections)
	return c
}

// connect opens a tunnel: the response and the pipe that is the request
// body (closing it sends END_STREAM).
func (c *h2Client) connect(ctx context.Context, target, auth string) (*http.Response, *io.PipeWriter, error) {
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(ctx, http.MethodConnect, "https://"+c.proxy, pr)
	if err != nil {
		return nil, nil, err
	}
	req.Host = target
	if auth != "" {
		req.Header.Set("Proxy-Authorization", auth)
	}
	resp, err := c.Do(req)
	if err != nil {
		pw.Close()
		return nil, nil, err
	}
	if resp.ProtoMajor != 2 {
		pw.Close()
		resp.Body.Close()
		return nil, nil, fmt.Errorf("CONNECT %s answered over %s, want HTTP/2", target, resp.Proto)
	}
	return resp, pw, nil
}

// echo sends size bytes of pattern(seed) through a tunnel to an echo
// origin, ends its side (END_STREAM) and wants them back, then the end.
func (c *h2Client) echo(target, auth string, size int, seed uint64) error {
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	resp, pw, err := c.connect(ctx, target, auth)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		body, _ := io.ReadAll(resp.Body)
		pw.Close()
		return fmt.Errorf("CONNECT %s: %s %q", target, resp.Status, body)
	}
	payload := make([]byte, size)
	io.ReadFull(pattern(seed), payload)
	go func() {
		pw.Write(payload)
		pw.Close()
	}()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("echo: after %d of %d bytes: %w", len(got), size, err)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo: %d bytes sha256 %x, want %d bytes sha256 %x", len(got), sha256.Sum256(got), size, sha256.Sum256(payload))
	}
	return nil
}

// TestH2ThousandTunnels opens 1,000 CONNECT tunnels at once as streams of
// ONE TLS connection to the proxy (--http-proxy.tls.enable), through a real
// agent to an echo origin; each echoes its own bytes intact, and the proxy
// logs every tunnel with the same client address and proto HTTP/2.0.
func TestH2ThousandTunnels(t *testing.T) {
	t.Parallel()
	e := startEcho(t)
	p := h2Proxy(t)
	startAgent(t, p, "4711")
	auth := basicAuth("4711", "noauth")
	c := newH2Client(t, p.httpAddr)
	// One tunnel first: Go's client dials for each request until it has
	// a connection to share.
	if err := c.echo(e.addr, auth, 100, 1); err != nil {
		t.Fatal(err)
	}
	const n = 1000
	start := time.Now()
	if err := parallel(n, n, func(i int) error { return c.echo(e.addr, auth, 1000+i, uint64(i)) }); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d tunnels over one connection: %s", n, time.Since(start).Round(time.Millisecond))
	if d := c.dials.Load(); d != 1 {
		t.Errorf("%d TLS connections to the proxy, want 1", d)
	}
	if err := waitFor(startTimeout, func() error {
		if got := p.count("tunnel closed", "proto", "HTTP/2.0", "outcome", "ok"); got < n+1 {
			return fmt.Errorf("proxy logged %d tunnels closed ok over HTTP/2, want %d", got, n+1)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	clients := map[string]int{}
	for _, l := range p.lines("tunnel closed", "proto", "HTTP/2.0") {
		clients[l["client"]]++
	}
	if len(clients) != 1 {
		t.Errorf("tunnels came from %d client addresses, want one connection: %v", len(clients), clients)
	}
}

// TestH2HalfClose: the client's END_STREAM reaches the origin as a FIN
// (it echoes, then ends: the client reads every byte and a clean end); an
// origin that ends its side first ends the stream cleanly for the client,
// and itself sees a reset, not a FIN, for the client side that was still
// open (net/http cannot half-close a stream from the server).
func TestH2HalfClose(t *testing.T) {
	t.Parallel()
	e := startEcho(t)
	p := h2Proxy(t)
	startAgent(t, p, "4711")
	auth := basicAuth("4711", "noauth")
	c := newH2Client(t, p.httpAddr)
	for _, size := range []int{0, 100, 1 << 20} {
		if err := c.echo(e.addr, auth, size, uint64(size)); err != nil {
			t.Errorf("%d bytes then END_STREAM: %v", size, err)
		}
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	received := make(chan error, 1)
	go func() {
		d, err := ln.Accept()
		if err != nil {
			received <- err
			return
		}
		defer d.Close()
		d.SetDeadline(time.Now().Add(clientTimeout))
		io.WriteString(d, "bye\n")
		d.(*net.TCPConn).CloseWrite()
		_, err = io.ReadAll(d)
		received <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	resp, pw, err := c.connect(ctx, ln.Addr().String(), auth)
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Close()
	if got, err := io.ReadAll(resp.Body); err != nil || string(got) != "bye\n" {
		t.Fatalf("origin ends first: client read %q %v, want \"bye\\n\" and a clean end", got, err)
	}
	select {
	case err := <-received:
		if err == nil {
			t.Error("origin saw a clean end of a client side that never ended")
		}
	case <-time.After(clientTimeout):
		t.Fatal("origin's read did not end")
	}
	p.waitLog(t, startTimeout, 1, "tunnel closed", "proto", "HTTP/2.0", "destination", ln.Addr().String())
}

// TestH2Abort: a client that resets its stream mid-transfer makes the
// origin see a reset; an origin that resets makes the client's stream fail.
// Neither is ever a clean end.
func TestH2Abort(t *testing.T) {
	t.Parallel()
	p := h2Proxy(t)
	startAgent(t, p, "4711")
	auth := basicAuth("4711", "noauth")
	c := newH2Client(t, p.httpAddr)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dest := make(chan net.Conn, 2)
	go func() {
		for {
			d, err := ln.Accept()
			if err != nil {
				return
			}
			dest <- d
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()

	// The client resets (its request body fails: Go's client sends
	// RST_STREAM).
	resp, pw, err := c.connect(ctx, ln.Addr().String(), auth)
	if err != nil {
		t.Fatal(err)
	}
	d := <-dest
	d.SetDeadline(time.Now().Add(clientTimeout))
	pw.Write(make([]byte, 64<<10))
	if _, err := io.ReadFull(d, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	pw.CloseWithError(errors.New("client gave up"))
	if b, err := io.ReadAll(d); err == nil {
		t.Errorf("origin read %d bytes and a clean end after the client reset its stream", len(b))
	}
	resp.Body.Close()
	d.Close()

	// The origin resets.
	resp, pw, err = c.connect(ctx, ln.Addr().String(), auth)
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Close()
	defer resp.Body.Close()
	d = <-dest
	io.WriteString(d, "partial")
	if _, err := io.ReadFull(resp.Body, make([]byte, 7)); err != nil {
		t.Fatal(err)
	}
	d.(*net.TCPConn).SetLinger(0)
	d.Close()
	if b, err := io.ReadAll(resp.Body); err == nil {
		t.Errorf("client read %q and a clean end after the origin reset", b)
	}
	if n := c.dials.Load(); n != 1 {
		t.Errorf("%d TLS connections, want 1", n)
	}
}

// TestH2Refusals: 407 (with the Basic challenge) and 403 (the agent's
// allowlist) over HTTP/2, each ending only its stream; absolute-form over
// HTTP/2 (:scheme http, :authority, :path) is forwarded.
func TestH2Refusals(t *testing.T) {
	t.Parallel()
	web := startHTTPOrigin(t, false)
	e := startEcho(t)
	p := h2Proxy(t)
	startAgent(t, p, "4711", "--agent-client.host-whitelist="+web.addr)
	c := newH2Client(t, p.httpAddr)
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	for _, tc := range []struct {
		name, auth string
		status     int
	}{
		{"no credentials", "", 407},
		{"wrong agent", basicAuth("nobody", "noauth"), 503},
		{"agent allowlist", basicAuth("4711", "noauth"), 403},
	} {
		resp, pw, err := c.connect(ctx, e.addr, tc.auth)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		pw.Close()
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		checkRefusal(t, resp, body, tc.status)
	}
	p.waitLog(t, startTimeout, 1, "request refused", "proto", "HTTP/2.0", "status", "403")

	// Absolute-form: Go's client sends :scheme http over TLS only to a
	// server it takes for unencrypted HTTP/2, so the test dials TLS itself.
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	roots := h2Roots(t)
	tr := &http.Transport{
		Protocols: &protos,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			c.dials.Add(1)
			d := tls.Dialer{Config: &tls.Config{RootCAs: roots, NextProtos: []string{"h2"}}}
			return d.DialContext(ctx, network, p.httpAddr)
		},
	}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest("GET", web.url("/hello"), nil)
	req.Header.Set("Proxy-Authorization", basicAuth("4711", "noauth"))
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 || string(body) != "hello\n" {
		t.Errorf("absolute-form over HTTP/2: %s %s %q", resp.Proto, resp.Status, body)
	}
	p.waitLog(t, startTimeout, 1, "request forwarded", "proto", "HTTP/2.0", "url", web.url("/hello"), "status", "200")
}

// TestH2Curl: curl --proxy-http2 (curl 8.1 and later) tunnels through the
// proxy over HTTP/2. Debian 12's curl 7.88.1 has no such option: the test
// says so and skips.
func TestH2Curl(t *testing.T) {
	t.Parallel()
	path, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	help, _ := exec.Command(path, "--help", "all").Output()
	if !strings.Contains(string(help), "--proxy-http2") {
		v, _ := exec.Command(path, "--version").Output()
		first, _, _ := strings.Cut(string(v), "\n")
		t.Skipf("this curl has no --proxy-http2 (it came in curl 8.1.0): %s", first)
	}
	web := startHTTPOrigin(t, false)
	p := h2Proxy(t)
	startAgent(t, p, "4711")
	for _, tunnel := range []bool{true, false} {
		args := []string{"--proxy-http2", "--proxy", "https://4711:noauth@" + p.httpAddr,
			"--proxy-cacert", filepath.Join(certDir, "ca.pem"), "--write-out", " %{http_code}"}
		if tunnel {
			args = append(args, "--proxytunnel")
		}
		out, err := curl(t, append(args, web.url("/hello"))...)
		if err != nil || out != "hello\n 200" {
			t.Errorf("curl --proxy-http2 (tunnel %v): %q %v", tunnel, out, err)
		}
	}
	if n := p.count("tunnel closed", "proto", "HTTP/2.0"); n < 1 {
		t.Errorf("no tunnel over HTTP/2 in the proxy's log")
	}
}
