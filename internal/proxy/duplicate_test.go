package proxy_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/proxy"
	"github.com/reverse-http/reverse-http/internal/wire"
)

// startDupProxy runs a proxy with a short duplicate probe.
func startDupProxy(t *testing.T, probe time.Duration) *proxy.Server {
	t.Helper()
	srv := proxy.New(proxy.Config{ListenAddr: "127.0.0.1:0", TLS: serverTLS(t), Auth: auth.NoAuth(), DuplicateProbe: probe}, testLogger(t))
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return srv
}

// mustDial authenticates as id over tr (one UDP socket, so one remote
// address for every connection it makes); keepAlive 0 sends no keep-alives.
func mustDial(t *testing.T, tr *quic.Transport, addr, id string, keepAlive time.Duration) *quic.Conn {
	t.Helper()
	udp, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tr.Dial(context.Background(), udp, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{wire.ALPN}},
		&quic.Config{KeepAlivePeriod: keepAlive, MaxIdleTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	s, err := conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	wire.WriteMessage(s, id)
	if msg, err := wire.ReadMessage(s); err != nil || msg != wire.AuthOK {
		t.Fatalf("auth answer %q, %v", msg, err)
	}
	return conn
}

func newTransport(t *testing.T) *quic.Transport {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// closedWith waits up to d for conn to be closed by the proxy and returns
// the code, or -1 if it stayed open.
func closedWith(conn *quic.Conn, d time.Duration) int64 {
	select {
	case <-conn.Context().Done():
	case <-time.After(d):
		return -1
	}
	var ae *quic.ApplicationError
	if errors.As(context.Cause(conn.Context()), &ae) && ae.Remote {
		return int64(ae.ErrorCode)
	}
	return -2
}

// The first replacement of a live connection is the newest one winning, as
// always: the old one gets 0x101.
func TestReplacedGetsCodeReplaced(t *testing.T) {
	srv := startDupProxy(t, 0)
	addr := srv.Addr().String()
	a := mustDial(t, newTransport(t), addr, "x", time.Second)
	mustDial(t, newTransport(t), addr, "x", time.Second)
	if code := closedWith(a, 5*time.Second); code != int64(wire.CodeReplaced) {
		t.Fatalf("replaced connection: code %#x, want %#x", code, wire.CodeReplaced)
	}
}

// Legitimate reconnects win at once even while the ID is flapping: from the
// same address as the connected one, or after the connected one closed.
func TestDuplicateLegitReconnects(t *testing.T) {
	const probe = 2 * time.Second
	t.Run("same address", func(t *testing.T) {
		srv := startDupProxy(t, probe)
		addr := srv.Addr().String()
		mustDial(t, newTransport(t), addr, "x", time.Second)
		tr := newTransport(t)
		b := mustDial(t, tr, addr, "x", time.Second) // replaces a: flapping from now on
		start := time.Now()
		mustDial(t, tr, addr, "x", time.Second) // b's own socket reconnecting
		if took := time.Since(start); took > probe/2 {
			t.Errorf("reconnect from the same address took %s: it was probed", took)
		}
		if code := closedWith(b, 5*time.Second); code != int64(wire.CodeReplaced) {
			t.Fatalf("the older connection from that address: code %#x, want %#x", code, wire.CodeReplaced)
		}
	})
	t.Run("predecessor closed", func(t *testing.T) {
		srv := startDupProxy(t, probe)
		addr := srv.Addr().String()
		mustDial(t, newTransport(t), addr, "x", time.Second)
		b := mustDial(t, newTransport(t), addr, "x", time.Second)
		b.CloseWithError(0, "bye")
		waitFor(t, "b gone", func() bool { return !srv.Connected("x") })
		c := mustDial(t, newTransport(t), addr, "x", time.Second)
		if code := closedWith(c, probe+time.Second); code != -1 {
			t.Fatalf("reconnect after the agent left: closed with %#x", code)
		}
	})
	t.Run("predecessor silent", func(t *testing.T) {
		srv := startDupProxy(t, probe)
		addr := srv.Addr().String()
		mustDial(t, newTransport(t), addr, "x", time.Second)
		// b sends no keep-alives: to the proxy it looks like an agent
		// whose host died and whose connection has not timed out yet.
		b := mustDial(t, newTransport(t), addr, "x", 0)
		time.Sleep(500 * time.Millisecond) // let the handshake's last packets settle
		c := mustDial(t, newTransport(t), addr, "x", time.Second)
		if code := closedWith(b, probe+3*time.Second); code != int64(wire.CodeReplaced) {
			t.Fatalf("silent predecessor: code %#x, want %#x", code, wire.CodeReplaced)
		}
		if code := closedWith(c, time.Second); code != -1 {
			t.Fatalf("newcomer replacing a silent agent: closed with %#x", code)
		}
	})
	t.Run("predecessor alive", func(t *testing.T) {
		srv := startDupProxy(t, probe)
		addr := srv.Addr().String()
		mustDial(t, newTransport(t), addr, "x", time.Second)
		b := mustDial(t, newTransport(t), addr, "x", 500*time.Millisecond)
		c := mustDial(t, newTransport(t), addr, "x", time.Second)
		if code := closedWith(c, probe+3*time.Second); code != int64(wire.CodeDuplicate) {
			t.Fatalf("newcomer while the ID flaps: code %#x, want %#x", code, wire.CodeDuplicate)
		}
		if code := closedWith(b, 100*time.Millisecond); code != -1 {
			t.Fatalf("connected agent closed with %#x", code)
		}
	})
}
