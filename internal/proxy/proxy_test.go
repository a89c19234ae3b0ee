package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/agent"
	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/front"
	"github.com/reverse-http/reverse-http/internal/proxy"
	"github.com/reverse-http/reverse-http/internal/tlsconf"
	"github.com/reverse-http/reverse-http/internal/wire"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func serverTLS(t *testing.T) *tls.Config {
	cert, _, err := tlsconf.SelfSigned([]string{"localhost", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}}
}

// startProxy runs a proxy.Server on a loopback port until the test ends.
func startProxy(t *testing.T, a auth.Authenticator) *proxy.Server {
	t.Helper()
	srv := proxy.New(proxy.Config{
		ListenAddr:  "127.0.0.1:0",
		TLS:         serverTLS(t),
		Auth:        a,
		DialTimeout: 5 * time.Second,
	}, testLogger(t))
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
	})
	return srv
}

func startAgent(t *testing.T, addr, id string, replacedWait time.Duration) {
	t.Helper()
	a := agent.New(agent.Config{
		ServerAddr:   addr,
		TLS:          &tls.Config{InsecureSkipVerify: true},
		Credential:   func() (string, error) { return id, nil },
		ReplacedWait: replacedWait,
	}, testLogger(t).With("agent", id))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// echoServer echoes each connection until the client half-closes.
func echoServer(t *testing.T) string {
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
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return ln.Addr().String()
}

func TestTunnelThroughOurAgent(t *testing.T) {
	srv := startProxy(t, auth.NoAuth())
	startAgent(t, srv.Addr().String(), "4711", 0)
	waitFor(t, "agent 4711", func() bool { return srv.Connected("4711") })
	echo := echoServer(t)

	c, err := srv.Dial(context.Background(), "4711", echo)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := bytes.Repeat([]byte("x"), 100<<10)
	go func() {
		c.Write(msg)
		c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo: got %d bytes, want %d", len(got), len(msg))
	}
}

func TestDialErrors(t *testing.T) {
	srv := startProxy(t, auth.NoAuth())
	startAgent(t, srv.Addr().String(), "4711", 0)
	waitFor(t, "agent 4711", func() bool { return srv.Connected("4711") })

	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()

	for _, tc := range []struct {
		agent, target string
		kind          error
		status        int
	}{
		{"nobody", "127.0.0.1:80", wire.ErrAgentOffline, 503},
		{"4711", closed, wire.ErrUnreachable, 502},
		{"4711", "nonexistent.invalid:80", wire.ErrUnreachable, 502},
	} {
		_, err := srv.Dial(context.Background(), tc.agent, tc.target)
		if !errors.Is(err, tc.kind) || wire.Status(err) != tc.status {
			t.Errorf("Dial(%s, %s) = %v, want kind %v (status %d)", tc.agent, tc.target, err, tc.kind, tc.status)
		}
	}
}

func TestDuplicateAgentIsReplacedAndWaits(t *testing.T) {
	srv := startProxy(t, auth.NoAuth())
	startAgent(t, srv.Addr().String(), "dup", time.Hour)
	waitFor(t, "first agent", func() bool { return srv.Connected("dup") })

	// A second connection with the same ID, made by hand so we can watch
	// the first one's fate through the proxy's agent count and behaviour.
	conn := dialAgent(t, srv.Addr().String(), "dup")
	waitFor(t, "replacement registered", func() bool { return srv.Agents() == 1 })

	// The first agent must not fight back: our connection stays up.
	select {
	case <-conn.Context().Done():
		t.Fatalf("replacement connection closed: %v", context.Cause(conn.Context()))
	case <-time.After(1500 * time.Millisecond):
	}

	// A third connection while this one is alive: the ID is flapping
	// between live agents, so the connected one stays and the newcomer is
	// refused with 0x104 (TestReplacedGetsCodeReplaced has 0x101).
	conn2 := dialAgent(t, srv.Addr().String(), "dup")
	defer conn2.CloseWithError(0, "")
	select {
	case <-conn2.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("third connection not refused")
	}
	var appErr *quic.ApplicationError
	if err := context.Cause(conn2.Context()); !errors.As(err, &appErr) || appErr.ErrorCode != wire.CodeDuplicate {
		t.Fatalf("third connection closed with %v, want application error %#x", err, wire.CodeDuplicate)
	}
	if err := conn.Context().Err(); err != nil {
		t.Fatalf("connected agent closed: %v", context.Cause(conn.Context()))
	}
}

func TestAuthFailureClosesConnection(t *testing.T) {
	pub, key := keys(t)
	srv := startProxy(t, auth.JWT(auth.NewVerifier(pub, "")))
	tok, err := auth.Sign(key, auth.TokenOptions{AgentID: "4711", Role: auth.RoleClient, Duration: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := quic.DialAddr(context.Background(), srv.Addr().String(),
		&tls.Config{InsecureSkipVerify: true, NextProtos: []string{wire.ALPN}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	wire.WriteMessage(s, tok) // a client token is not an agent token
	_, err = wire.ReadMessage(s)
	var appErr *quic.ApplicationError
	if !errors.As(err, &appErr) || appErr.ErrorCode != wire.CodeAuthFailed {
		t.Fatalf("read answer: %v, want application error %d", err, wire.CodeAuthFailed)
	}
	if !strings.Contains(appErr.ErrorMessage, "role") {
		t.Errorf("reason %q does not say why", appErr.ErrorMessage)
	}
	if srv.Agents() != 0 {
		t.Fatal("refused agent registered")
	}
}

func keys(t *testing.T) (crypto.PublicKey, crypto.Signer) {
	t.Helper()
	key, err := auth.GenerateKey("ES256")
	if err != nil {
		t.Fatal(err)
	}
	return key.Public(), key
}

// dialAgent authenticates as id by hand and returns the connection.
func dialAgent(t *testing.T, addr, id string) *quic.Conn {
	t.Helper()
	conn, err := quic.DialAddr(context.Background(), addr,
		&tls.Config{InsecureSkipVerify: true, NextProtos: []string{wire.ALPN}}, &quic.Config{KeepAlivePeriod: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	s, err := conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := wire.WriteMessage(s, id); err != nil {
		t.Fatal(err)
	}
	if msg, err := wire.ReadMessage(s); err != nil || msg != wire.AuthOK {
		t.Fatalf("auth answer %q, %v", msg, err)
	}
	return conn
}

// TestReferenceAgent runs our proxy against an agent that behaves like the
// reference's (gost's HTTP handler): it reads the CONNECT through a
// bufio.Reader it then forgets, so bytes sent with the request are lost, and
// it answers with net/http's Response.Write. Our proxy must not lose the
// client's pipelined bytes with it.
func TestReferenceAgent(t *testing.T) {
	srv := startProxy(t, auth.NoAuth())
	conn := dialAgent(t, srv.Addr().String(), "ref")
	waitFor(t, "reference agent", func() bool { return srv.Connected("ref") })
	go func() {
		for {
			s, err := conn.AcceptStream(context.Background())
			if err != nil {
				return
			}
			go func() {
				req, err := http.ReadRequest(bufio.NewReader(s)) // drops read-ahead bytes, like the reference
				if err != nil {
					s.CancelRead(1)
					s.Close()
					return
				}
				dst, err := net.Dial("tcp", req.Host)
				resp := &http.Response{ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}}
				if err != nil {
					resp.StatusCode = http.StatusServiceUnavailable
					resp.Write(s)
					s.Close()
					return
				}
				resp.StatusCode, resp.Status = 200, "200 Connection established"
				resp.Write(s)
				go func() { io.Copy(dst, s); dst.(*net.TCPConn).CloseWrite() }()
				io.Copy(s, dst)
				s.Close()
			}()
		}
	}()

	echo := echoServer(t)
	hs := httptestServer(t, front.New(front.Config{Auth: auth.NoAuth(), Dialer: srv}, testLogger(t)))
	c, err := net.Dial("tcp", hs)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	payload := bytes.Repeat([]byte("pipelined!"), 1000)
	req := "CONNECT " + echo + " HTTP/1.1\r\nHost: " + echo + "\r\nProxy-Authorization: " + auth.BasicHeader("ref", "noauth") + "\r\n\r\n"
	c.Write(append([]byte(req), payload...))
	c.(*net.TCPConn).CloseWrite()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	got, err := io.ReadAll(br)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo through reference agent: got %d bytes, want %d", len(got), len(payload))
	}

	// The reference agent's 503 for a failed dial is a 502 for the client.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	_, err = srv.Dial(context.Background(), "ref", closed)
	if wire.Status(err) != http.StatusBadGateway {
		t.Fatalf("reference agent dial failure: %v (status %d), want 502", err, wire.Status(err))
	}
}

// TestOurAgentWithReferenceProxy opens a tunnel on our agent the way the
// reference proxy does (gost's HTTP connector: Request.Write with
// Proxy-Connection, then http.ReadResponse).
func TestOurAgentWithReferenceProxy(t *testing.T) {
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{
		Certificates: serverTLS(t).Certificates, NextProtos: []string{wire.ALPN},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	startAgent(t, ln.Addr().String(), "4711", 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	as, err := conn.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id, err := wire.ReadMessage(as)
	if err != nil || id != "4711" {
		t.Fatalf("credential %q, %v", id, err)
	}
	wire.WriteMessage(as, wire.AuthOK)
	as.Close()

	echo := echoServer(t)
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	req := &http.Request{Method: http.MethodConnect, URL: &url.URL{Host: echo}, Host: echo,
		ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{"Proxy-Connection": {"keep-alive"}}}
	if err := req.Write(s); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(s)
	resp, err := http.ReadResponse(br, req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT answer: %v, %v", resp, err)
	}
	s.Write([]byte("hello"))
	s.Close()
	got, err := io.ReadAll(br)
	if err != nil || string(got) != "hello" {
		t.Fatalf("echo %q, %v", got, err)
	}
}

func httptestServer(t *testing.T, h http.Handler) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := front.NewServer("", h, nil, testLogger(t))
	go front.Serve(hs, ln)
	t.Cleanup(func() { hs.Close() })
	return ln.Addr().String()
}

// slowAuth authenticates every agent, but only once release is closed.
type slowAuth struct {
	auth.Authenticator
	entered chan struct{}
	release chan struct{}
}

func (a slowAuth) Agent(cred string) (string, error) {
	close(a.entered)
	<-a.release
	return cred, nil
}

// An agent that finishes authenticating after Run began closing agents is
// refused, and Run returns; it used to be registered and keep Run waiting
// for as long as the agent stayed.
func TestLateHandshakeRefusedOnShutdown(t *testing.T) {
	a := slowAuth{Authenticator: auth.NoAuth(), entered: make(chan struct{}), release: make(chan struct{})}
	srv := proxy.New(proxy.Config{ListenAddr: "127.0.0.1:0", TLS: serverTLS(t), Auth: a}, testLogger(t))
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()

	conn, err := quic.DialAddr(context.Background(), srv.Addr().String(),
		&tls.Config{InsecureSkipVerify: true, NextProtos: []string{wire.ALPN}}, &quic.Config{KeepAlivePeriod: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	s, err := conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	wire.WriteMessage(s, "late")
	<-a.entered
	cancel()
	time.Sleep(200 * time.Millisecond) // Run closes the agents it has
	close(a.release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return: the late agent was registered after shutdown began")
	}
	select {
	case <-conn.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the late agent's connection is still open")
	}
}
