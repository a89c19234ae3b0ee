package transport

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/wire"
)

func testCert(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tcpPair returns an agent-side (client) and a proxy-side (server) Conn
// over loopback TLS.
func tcpPair(t testing.TB, clientCfg, serverCfg TCPConfig) (client, server Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cert := testCert(t)
	type result struct {
		c   Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			ch <- result{nil, err}
			return
		}
		tc := tls.Server(raw, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{ALPNTCP}, MinVersion: tls.VersionTLS13})
		if err := tc.Handshake(); err != nil {
			ch <- result{nil, err}
			return
		}
		c, err := NewTCP(tc, false, serverCfg)
		ch <- result{c, err}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{ALPNTCP}, MinVersion: tls.VersionTLS13})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != ALPNTCP {
		t.Fatalf("ALPN %q", p)
	}
	client, err = NewTCP(tc, true, clientCfg)
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	server = r.c
	t.Cleanup(func() {
		client.CloseWithError(0, "")
		server.CloseWithError(0, "")
		<-client.Context().Done()
		<-server.Context().Done()
		client.(*tcpConn).Wait()
		server.(*tcpConn).Wait()
	})
	return client, server
}

func accept(t testing.TB, c Conn) Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func open(t testing.TB, c Conn) Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestTCPStreamsBothWaysWithHalfClose(t *testing.T) {
	client, server := tcpPair(t, TCPConfig{KeepAlive: time.Second, MaxIncomingStreams: 100}, TCPConfig{})
	for _, dir := range []struct {
		name         string
		opener, peer Conn
	}{{"proxy opens (a tunnel)", server, client}, {"agent opens (auth)", client, server}} {
		t.Run(dir.name, func(t *testing.T) {
			a := open(t, dir.opener)
			payload := bytes.Repeat([]byte("CONNECT x\r\n"), 100_000) // 1.1 MB: past the first window
			go func() {
				a.Write(payload)
				a.Close() // FIN; reading goes on
			}()
			b := accept(t, dir.peer)
			got, err := io.ReadAll(b)
			if err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("read %d bytes, err %v; want %d", len(got), err, len(payload))
			}
			if _, err := b.Write([]byte("answer")); err != nil {
				t.Fatal(err)
			}
			b.Close()
			back, err := io.ReadAll(a)
			if err != nil || string(back) != "answer" {
				t.Fatalf("answer %q, %v", back, err)
			}
		})
	}
}

func TestTCPPeekThenRead(t *testing.T) {
	client, server := tcpPair(t, TCPConfig{MaxIncomingStreams: 10}, TCPConfig{})
	a := open(t, server)
	a.Write([]byte("CONNECT a:1 HTTP/1.1\r\n"))
	b := accept(t, client)
	var p [4]byte
	n, err := b.Peek(p[:])
	if err != nil || n == 0 || !strings.HasPrefix("CONN", string(p[:n])) {
		t.Fatalf("peek %q %v", p[:n], err)
	}
	line := make([]byte, 22)
	if _, err := io.ReadFull(b, line); err != nil || string(line) != "CONNECT a:1 HTTP/1.1\r\n" {
		t.Fatalf("read %q %v", line, err)
	}
}

func wantStreamCode(t *testing.T, err error, code quic.StreamErrorCode) {
	t.Helper()
	var se *quic.StreamError
	if !errors.As(err, &se) || se.ErrorCode != code || !se.Remote {
		t.Fatalf("error %v (%T), want a remote *quic.StreamError with code %d", err, err, code)
	}
}

func TestTCPResetCarriesCode(t *testing.T) {
	client, server := tcpPair(t, TCPConfig{MaxIncomingStreams: 10}, TCPConfig{})
	a := open(t, server)
	a.Write([]byte("CONNECT"))
	b := accept(t, client)
	a.CancelWrite(42)
	_, err := io.ReadAll(b)
	wantStreamCode(t, err, 42)
}

// A stream whose writer sent its FIN and then stopped reading (relay's
// Close) leaves the peer all the bytes and fails the peer's writes, as
// QUIC's STOP_SENDING does.
func TestTCPCancelReadAfterFINKeepsData(t *testing.T) {
	client, server := tcpPair(t, TCPConfig{MaxIncomingStreams: 10}, TCPConfig{})
	a := open(t, server)
	a.Write([]byte("CONNECT and some bytes"))
	a.Close()
	a.CancelRead(wire.StreamCodeAbort)
	b := accept(t, client)
	got, err := io.ReadAll(b)
	if err != nil || string(got) != "CONNECT and some bytes" {
		t.Fatalf("read %q %v", got, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := b.Write([]byte("more"))
		if err != nil {
			wantStreamCode(t, err, wire.StreamCodeAbort)
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("writes to a stream whose reader cancelled still succeed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTCPControlMessage(t *testing.T) {
	client, server := tcpPair(t, TCPConfig{MaxIncomingStreams: 10}, TCPConfig{})
	if err := server.SendControl(wire.ControlMove + "\nproxy draining"); err != nil {
		t.Fatal(err)
	}
	// A tunnel after it is still a tunnel.
	a := open(t, server)
	a.Write([]byte("CONNECT"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	msg, err := client.AcceptControl(ctx)
	if err != nil || msg != wire.ControlMove+"\nproxy draining" {
		t.Fatalf("control %q %v", msg, err)
	}
	b := accept(t, client)
	var p [7]byte
	if _, err := io.ReadFull(b, p[:]); err != nil || string(p[:]) != "CONNECT" {
		t.Fatalf("tunnel %q %v", p, err)
	}
	if err := server.SendControl(strings.Repeat("x", wire.MaxControlLen+1)); err == nil {
		t.Fatal("an oversized control message was sent")
	}
}

// CloseWithError gives the peer the code and the reason, like QUIC's
// CONNECTION_CLOSE, including to a read under way on a stream (the agent
// waiting for its authentication answer).
func TestTCPCloseCarriesCodeAndReason(t *testing.T) {
	client, server := tcpPair(t, TCPConfig{MaxIncomingStreams: 10}, TCPConfig{})
	auth := open(t, client)
	auth.Write([]byte("credential"))
	accept(t, server)
	readErr := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(auth)
		readErr <- err
	}()
	server.CloseWithError(wire.CodeAuthFailed, "token expired")
	var ae *quic.ApplicationError
	select {
	case err := <-readErr:
		if !errors.As(err, &ae) || !ae.Remote || ae.ErrorCode != wire.CodeAuthFailed || ae.ErrorMessage != "token expired" {
			t.Fatalf("read error %v (%T), want the remote close with its reason", err, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the read did not end")
	}
	<-client.Context().Done()
	if cause := context.Cause(client.Context()); !errors.As(cause, &ae) || !ae.Remote || ae.ErrorMessage != "token expired" {
		t.Fatalf("client cause %v", cause)
	}
	<-server.Context().Done()
	if cause := context.Cause(server.Context()); !errors.As(cause, &ae) || ae.Remote || ae.ErrorCode != wire.CodeAuthFailed {
		t.Fatalf("server cause %v", cause)
	}
	if _, err := client.AcceptStream(context.Background()); !errors.As(err, &ae) || ae.ErrorCode != wire.CodeAuthFailed {
		t.Fatalf("accept after close: %v", err)
	}
}

func TestTCPIdleTimeout(t *testing.T) {
	client, server := tcpPair(t, TCPConfig{KeepAlive: 50 * time.Millisecond, IdleTimeout: time.Minute, MaxIncomingStreams: 10},
		TCPConfig{IdleTimeout: 400 * time.Millisecond})
	// The agent's pings keep the connection up well past the timeout.
	time.Sleep(time.Second)
	if server.Context().Err() != nil {
		t.Fatalf("closed although the peer pings: %v", context.Cause(server.Context()))
	}
	_ = client
	silentClient, silentServer := tcpPair(t, TCPConfig{IdleTimeout: time.Minute, MaxIncomingStreams: 10},
		TCPConfig{IdleTimeout: 400 * time.Millisecond})
	select {
	case <-silentServer.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a silent connection was not closed")
	}
	var idle *quic.IdleTimeoutError
	if cause := context.Cause(silentServer.Context()); !errors.As(cause, &idle) {
		t.Fatalf("cause %v, want an idle timeout", cause)
	}
	select {
	case <-silentClient.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the peer of a closed connection stays up")
	}
}

// A closed Conn leaves no goroutine behind.
func TestTCPCloseEndsGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	for range 5 {
		t.Run("pair", func(t *testing.T) {
			client, server := tcpPair(t, TCPConfig{KeepAlive: time.Second, MaxIncomingStreams: 10}, TCPConfig{})
			a := open(t, server)
			a.Write([]byte("CONNECT"))
			accept(t, client)
		})
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

func TestParseClose(t *testing.T) {
	for _, tc := range []struct {
		body   string
		code   quic.ApplicationErrorCode
		reason string
		ok     bool
	}{
		{"260\nproxy shutting down", 0x104, "proxy shutting down", true},
		{"500\n", 500, "", true},
		{"0", 0, "", true},
		{"500\nline one\nline two", 500, "line one\nline two", true},
		{"", 0, "", false},
		{"-1\nx", 0, "", false},
		{"0x104\nx", 0, "", false},
		{"99999999999999999999\nx", 0, "", false},
	} {
		code, reason, err := parseClose(tc.body)
		if (err == nil) != tc.ok || code != tc.code || reason != tc.reason {
			t.Errorf("parseClose(%q) = %d, %q, %v", tc.body, code, reason, err)
		}
	}
	msg := closeMessage(7, strings.Repeat("r", 2*wire.MaxControlLen))
	if len(msg) != wire.MaxControlLen {
		t.Fatalf("close message of %d bytes", len(msg))
	}
	name, body, _ := strings.Cut(msg, "\n")
	if code, _, err := parseClose(body); name != ControlClose || code != 7 || err != nil {
		t.Fatalf("round trip: %q %d %v", name, code, err)
	}
}

func FuzzParseClose(f *testing.F) {
	f.Add("260\nproxy shutting down")
	f.Add("0")
	f.Add("\n\n")
	f.Fuzz(func(t *testing.T, body string) {
		code, reason, err := parseClose(body)
		if err != nil {
			return
		}
		if len(reason) > len(body) {
			t.Fatalf("reason longer than the message")
		}
		again, _, err := parseClose(strings.TrimPrefix(closeMessage(code, reason), ControlClose+"\n"))
		if err != nil || again != code {
			t.Fatalf("round trip of %d: %d %v", code, again, err)
		}
	})
}
