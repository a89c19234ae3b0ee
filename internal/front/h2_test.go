package front_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/reverse-http/reverse-http/internal/allow"
	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/front"
	"github.com/reverse-http/reverse-http/internal/tlsconf"
)

// h2Client speaks HTTP/2 to a TLS proxy: CONNECT requests go to the proxy
// itself as streams of one connection (StrictMaxConcurrentRequests: it
// waits for a stream rather than dialing another connection). dials counts
// the TLS connections it made.
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
	tr := &http.Transport{
		Protocols: &protos,
		HTTP2:     &http.HTTP2Config{StrictMaxConcurrentRequests: true},
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c.dials.Add(1)
			d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}}
			return d.DialContext(ctx, network, addr)
		},
	}
	c.Client = &http.Client{Transport: tr}
	t.Cleanup(tr.CloseIdleConnections)
	return c
}

// connect opens a tunnel to target: the response, and the pipe that is
// the request body (closing it sends END_STREAM).
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
		return nil, nil, fmt.Errorf("CONNECT %s over %s, want HTTP/2", target, resp.Proto)
	}
	return resp, pw, nil
}

// serveH2 serves h over TLS with a self-signed certificate, as the proxy
// does with --http-proxy.tls.enable.
func serveH2(t *testing.T, h *front.Handler) string {
	t.Helper()
	cert, _, err := tlsconf.SelfSigned([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	return serveWatched(t, h, &tls.Config{Certificates: []tls.Certificate{cert}})
}

// TestH2Connect: many CONNECT tunnels as streams of one TLS connection,
// each echoing its own bytes, ended by the client's END_STREAM; each
// logged with its bytes and proto HTTP/2.0.
func TestH2Connect(t *testing.T) {
	h, logs, _ := newFront(t, front.Config{}, "4711")
	echo := echoOrigin(t)
	c := newH2Client(t, serveH2(t, h))
	// One tunnel first: Go's client dials once per request until it has
	// a connection to share.
	if err := echoOnce(c, echo, 1000); err != nil {
		t.Fatal(err)
	}
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- echoOnce(c, echo, 1000+i*517)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if d := c.dials.Load(); d != 1 {
		t.Errorf("%d TLS connections, want 1", d)
	}
	logs.waitLog(t, `msg="tunnel closed"`, "proto=HTTP/2.0", "bytes_up=1000 ", "bytes_down=1000 ", "outcome=ok")
	if !waitUntil(func() bool { return h.OpenTunnels() == 0 }) {
		t.Errorf("%d tunnels still open", h.OpenTunnels())
	}
}

// echoOnce sends size random bytes through a tunnel to an echo origin,
// ends its side and wants the same bytes back, then the end.
func echoOnce(c *h2Client, echo string, size int) error {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	resp, pw, err := c.connect(ctx, echo, basic("4711", "noauth"))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("CONNECT: %s", resp.Status)
	}
	payload := make([]byte, size)
	rand.Read(payload)
	go func() {
		pw.Write(payload)
		pw.Close() // END_STREAM
	}()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("after %d of %d bytes: %v", len(got), size, err)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo of %d bytes: got %d bytes, not the same", size, len(got))
	}
	return nil
}

func waitUntil(cond func() bool) bool {
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// TestH2Refusals: over HTTP/2 a refusal has the statuses and one-line
// bodies of HTTP/1.1, and ends only its stream: the next tunnel on the same
// connection opens.
func TestH2Refusals(t *testing.T) {
	h, logs, _ := newFront(t, front.Config{}, "4711")
	list, err := allow.Parse([]string{"127.0.0.1:1-65535"})
	if err != nil {
		t.Fatal(err)
	}
	h.SetAllow(list)
	echo := echoOrigin(t)
	c := newH2Client(t, serveH2(t, h))
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for _, tc := range []struct {
		name, target, auth string
		status             int
		reason             string
	}{
		{"no credentials", echo, "", 407, "proxy authentication required"},
		{"allowlist", "192.0.2.1:443", basic("4711", "noauth"), 403, "not allowed by the proxy's allowlist"},
		{"agent offline", echo, basic("nobody", "noauth"), 503, "agent nobody is not connected"},
		{"no port", "127.0.0.1", basic("4711", "noauth"), 400, "CONNECT needs host:port"},
	} {
		resp, pw, err := c.connect(ctx, tc.target, tc.auth)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		pw.Close()
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(body), tc.reason) || strings.Count(string(body), "\n") != 1 {
			t.Errorf("%s: %s %q, want %d and one line with %q", tc.name, resp.Status, body, tc.status, tc.reason)
		}
		if tc.status == 407 && resp.Header.Get("Proxy-Authenticate") != `Basic realm="reverse-http"` {
			t.Errorf("407 without its challenge: %v", resp.Header)
		}
		logs.waitLog(t, `msg="request refused"`, "proto=HTTP/2.0", fmt.Sprintf("status=%d", tc.status))
	}
	if err := echoOnce(c, echo, 10); err != nil {
		t.Errorf("tunnel after the refusals: %v", err)
	}
	if d := c.dials.Load(); d != 1 {
		t.Errorf("%d TLS connections, want 1: a refusal ended the connection", d)
	}
}

// TestH2DestinationFirst: the destination ends its side first. The client
// reads its bytes and a clean end; the destination, whose peer had not
// ended its side, sees a reset rather than a clean end.
func TestH2DestinationFirst(t *testing.T) {
	h, logs, _ := newFront(t, front.Config{}, "4711")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	received := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			received <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(wait))
		io.WriteString(c, "bye\n")
		c.(*net.TCPConn).CloseWrite()
		_, err = io.ReadAll(c)
		received <- err
	}()
	c := newH2Client(t, serveH2(t, h))
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	resp, pw, err := c.connect(ctx, ln.Addr().String(), basic("4711", "noauth"))
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil || string(got) != "bye\n" {
		t.Fatalf("client read %q %v, want \"bye\\n\" and a clean end", got, err)
	}
	select {
	case err := <-received:
		if err == nil {
			t.Error("the destination saw a clean end of a client side that never ended")
		}
	case <-time.After(wait):
		t.Fatal("the destination's read did not end")
	}
	logs.waitLog(t, `msg="tunnel closed"`, "proto=HTTP/2.0", "destination ended first")
}

// TestH2Abort: a client that resets its stream, and a destination that
// resets its connection, end the tunnel as errors on the other side: the
// destination or the client reads an error, never a clean end.
func TestH2Abort(t *testing.T) {
	h, logs, _ := newFront(t, front.Config{}, "4711")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dest := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			dest <- c
		}
	}()
	c := newH2Client(t, serveH2(t, h))
	auth := basic("4711", "noauth")

	t.Run("client resets", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		resp, pw, err := c.connect(ctx, ln.Addr().String(), auth)
		if err != nil {
			t.Fatal(err)
		}
		defer pw.Close()
		defer resp.Body.Close()
		d := <-dest
		defer d.Close()
		d.SetDeadline(time.Now().Add(wait))
		pw.Write([]byte("some"))
		buf := make([]byte, 4)
		if _, err := io.ReadFull(d, buf); err != nil {
			t.Fatal(err)
		}
		// The request body fails: Go's client resets the stream.
		pw.CloseWithError(errors.New("client gave up"))
		if b, err := io.ReadAll(d); err == nil {
			t.Errorf("destination read %q and a clean end after the client reset its stream", b)
		}
		logs.waitLog(t, `msg="tunnel closed"`, "proto=HTTP/2.0", "bytes_up=4 ")
	})

	t.Run("destination resets", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		resp, pw, err := c.connect(ctx, ln.Addr().String(), auth)
		if err != nil {
			t.Fatal(err)
		}
		defer pw.Close()
		defer resp.Body.Close()
		d := <-dest
		io.WriteString(d, "partial")
		buf := make([]byte, 7)
		if _, err := io.ReadFull(resp.Body, buf); err != nil {
			t.Fatal(err)
		}
		d.(*net.TCPConn).SetLinger(0)
		d.Close() // a TCP reset
		if b, err := io.ReadAll(resp.Body); err == nil {
			t.Errorf("client read %q and a clean end after the destination reset", b)
		}
	})
	if d := c.dials.Load(); d != 1 {
		t.Errorf("%d TLS connections, want 1", d)
	}
}

// TestH2AbsoluteForm: a request that is not a CONNECT, sent over HTTP/2
// as :scheme http, :authority origin, :path, is forwarded like HTTP/1.1's
// absolute-form. Go's client sends :scheme http over TLS only to a server
// it takes for unencrypted HTTP/2, so the test dials TLS itself.
func TestH2AbsoluteForm(t *testing.T) {
	h, logs, _ := newFront(t, front.Config{}, "4711")
	web := origin(t, nil, nil)
	proxy := serveH2(t, h)
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{
		Protocols: &protos,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}}
			return d.DialContext(ctx, network, proxy)
		},
	}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest("GET", "http://"+web+"/x?y=1", nil)
	req.Header.Set("Proxy-Authorization", basic("4711", "noauth"))
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "hello" || resp.ProtoMajor != 2 {
		t.Fatalf("GET through the proxy over HTTP/2: %s %s %q", resp.Proto, resp.Status, body)
	}
	logs.waitLog(t, `msg="request forwarded"`, "proto=HTTP/2.0", `url="http://`+web+`/x?y=1"`, "status=200")

	// :scheme https: the proxy speaks TLS to the origin (whose
	// certificate it does not trust here), never clear text.
	tlsWeb := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer tlsWeb.Close()
	h2 := newH2Client(t, proxy)
	req, _ = http.NewRequest("GET", "https://"+proxy+"/y", nil)
	req.Host = tlsWeb.Listener.Addr().String()
	req.Header.Set("Proxy-Authorization", basic("4711", "noauth"))
	resp, err = h2.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 502 || !strings.Contains(string(body), "certificate") {
		t.Errorf(":scheme https: %s %q, want 502 for the origin's certificate", resp.Status, body)
	}

	// Without credentials: 407, and the connection stays.
	req, _ = http.NewRequest("GET", "http://"+web+"/", nil)
	resp, err = tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 407 {
		t.Errorf("no credentials: %s, want 407", resp.Status)
	}
}

// TestH2StreamLimit: past MaxConcurrentStreams a client waits for a stream
// to end; the tunnel opens then, on the same connection.
func TestH2StreamLimit(t *testing.T) {
	h, _, _ := newFront(t, front.Config{MaxConcurrentStreams: 2}, "4711")
	echo := echoOrigin(t)
	c := newH2Client(t, serveH2(t, h))
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	var pws []*io.PipeWriter
	for range 2 {
		resp, pw, err := c.connect(ctx, echo, basic("4711", "noauth"))
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("CONNECT: %v %v", resp, err)
		}
		defer resp.Body.Close()
		pws = append(pws, pw)
	}
	third := make(chan error, 1)
	go func() { third <- echoOnce(c, echo, 100) }()
	select {
	case err := <-third:
		t.Fatalf("a third stream over a limit of 2 ran at once: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	pws[0].Close()
	if err := <-third; err != nil {
		t.Fatal(err)
	}
	if d := c.dials.Load(); d != 1 {
		t.Errorf("%d TLS connections, want 1", d)
	}
}

// TestH2Drain: Run's shutdown gives an open HTTP/2 tunnel until the
// deadline, then ends it as closed at the deadline: the client's stream is
// reset, not ended, and Run returns with nothing left open.
func TestH2Drain(t *testing.T) {
	h, logs, _ := newFront(t, front.Config{}, "4711")
	echo := echoOrigin(t)
	cert, _, err := tlsconf.SelfSigned([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := front.NewServer("", h, &tls.Config{Certificates: []tls.Certificate{cert}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- front.Run(ctx, hs, ln, 300*time.Millisecond) }()
	c := newH2Client(t, ln.Addr().String())
	rctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	resp, pw, err := c.connect(rctx, echo, basic("4711", "noauth"))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	defer pw.Close()
	pw.Write([]byte("ping"))
	if _, err := io.ReadFull(resp.Body, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	stop()
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Error("the tunnel ended cleanly at the shutdown deadline")
	}
	select {
	case err := <-ran:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatal("Run did not return")
	}
	logs.waitLog(t, `msg="tunnel closed"`, "proto=HTTP/2.0", "shutdown deadline")
	if n := h.OpenTunnels(); n != 0 {
		t.Errorf("%d tunnels open after Run", n)
	}
}

// TestH2RevokeOneStream: two clients' absolute-form requests share one
// HTTP/2 connection; removing one client from the clients file ends its
// request alone (answered 403 with the reason, as nothing was sent yet):
// the other's completes and the connection carries the next request.
func TestH2RevokeOneStream(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "clients.yaml")
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	write := func(names ...string) {
		var b strings.Builder
		b.WriteString("clients:\n")
		for _, n := range names {
			fmt.Fprintf(&b, "  - name: %s\n    secret_hash: %s\n    agents: [\"4711\"]\n", n, hash)
		}
		if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ops", "dev")
	clients, err := auth.OpenClientsFile(file)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	h := front.New(front.Config{Auth: auth.WithClients(auth.NoAuth(), clients), Dialer: &fakeDialer{agents: map[string]bool{"4711": true}}},
		slog.New(slog.NewTextHandler(logs, nil)))
	release := make(chan struct{})
	holding := make(chan struct{}, 2)
	web := origin(t, release, holding)
	proxy := serveH2(t, h)
	// Requests for http:// URLs as HTTP/2 streams of one TLS connection
	// to the proxy (as TestH2AbsoluteForm).
	var dials atomic.Int64
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{
		Protocols: &protos,
		HTTP2:     &http.HTTP2Config{StrictMaxConcurrentRequests: true},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			dials.Add(1)
			d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}}
			return d.DialContext(ctx, network, proxy)
		},
	}
	defer tr.CloseIdleConnections()
	get := func(client, path string) (int, string, error) {
		req, _ := http.NewRequest("GET", "http://"+web+path, nil)
		req.Header.Set("Proxy-Authorization", basic("4711", client+":s3cret"))
		resp, err := tr.RoundTrip(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), err
	}
	type result struct {
		code int
		body string
		err  error
	}
	// One connection first, which both requests then share.
	if code, body, err := get("dev", "/"); err != nil || code != 200 {
		t.Fatalf("GET through the proxy: %d %q %v", code, body, err)
	}
	results := map[string]chan result{"ops": make(chan result, 1), "dev": make(chan result, 1)}
	for name, ch := range results {
		go func() {
			code, body, err := get(name, "/hold")
			ch <- result{code, body, err}
		}()
	}
	for range 2 {
		select {
		case <-holding:
		case <-time.After(wait):
			t.Fatal("the requests did not reach the origin")
		}
	}
	write("dev")
	apply, err := clients.Check()
	if err != nil || apply == nil {
		t.Fatalf("re-reading the clients file: %v", err)
	}
	apply()
	if n := h.Revalidate(); n != 1 {
		t.Errorf("Revalidate ended %d requests, want 1", n)
	}
	select {
	case r := <-results["ops"]:
		if r.err != nil || r.code != http.StatusForbidden || !strings.Contains(r.body, "ops") {
			t.Errorf("revoked client's request: %d %q %v, want 403 naming the client", r.code, r.body, r.err)
		}
	case <-time.After(wait):
		t.Fatal("the revoked client's request was not ended")
	}
	close(release)
	if r := <-results["dev"]; r.err != nil || r.code != 200 || r.body != "hello" {
		t.Errorf("the other client's request on the same connection: %d %q %v", r.code, r.body, r.err)
	}
	if code, body, err := get("dev", "/"); err != nil || code != 200 {
		t.Errorf("a request after the revocation: %d %q %v", code, body, err)
	}
	if d := dials.Load(); d != 1 {
		t.Errorf("%d TLS connections, want 1: the revocation closed the connection", d)
	}
	logs.waitLog(t, `msg="request forwarded"`, "identity=client:ops", "status=403")
}
