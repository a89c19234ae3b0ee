package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/tlsconf"
	"github.com/reverse-http/reverse-http/internal/wire"
)

// lockedBuffer is a log sink safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// blackHole is a UDP socket on loopback that reads and drops every packet,
// like a proxy behind a firewall that drops UDP.
func blackHole(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	return pc.LocalAddr().String()
}

func TestHandshakeWithoutAnswer(t *testing.T) {
	addr := blackHole(t)
	logs := &lockedBuffer{}
	a := New(Config{
		ServerAddr:       addr,
		TLS:              &tls.Config{ServerName: "localhost"},
		Credential:       func() (string, error) { return "4711", nil },
		TransportMode:    TransportQUIC,
		HandshakeTimeout: 300 * time.Millisecond,
		BackoffMax:       50 * time.Millisecond,
	}, slog.New(slog.NewTextHandler(logs, nil)))

	start := time.Now()
	_, err := a.session(context.Background(), nil, nil, func(string) {}, func() {})
	var na *noAnswerError
	var idle *quic.IdleTimeoutError
	if !errors.As(err, &na) || !errors.As(err, &idle) {
		t.Fatalf("session: %v (%T), want a no-answer error wrapping quic's IdleTimeoutError", err, err)
	}
	if d := time.Since(start); d > 400*time.Millisecond+300*time.Millisecond {
		t.Errorf("gave up after %s, want about the handshake timeout (300ms)", d)
	}
	want := "no answer from the proxy over UDP within 300ms: is UDP to " + addr + " blocked, or is no proxy listening there?"
	if err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}

	// Run logs it.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q:\n%s", want, logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// selfSignedQUIC listens for QUIC on loopback with a self-signed
// certificate for localhost: an agent that verifies it fails every
// handshake with a proxy that answers; one that skips verification
// connects.
func selfSignedQUIC(t *testing.T) *quic.Listener {
	t.Helper()
	cert, _, err := tlsconf.SelfSigned([]string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{wire.ALPN}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// TestHandshakeAnsweredIsNotNoAnswer: a proxy that answers, here with a
// certificate the agent does not trust, is not reported as unreachable.
func TestHandshakeAnsweredIsNotNoAnswer(t *testing.T) {
	ln := selfSignedQUIC(t)
	go func() {
		for {
			c, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			c.CloseWithError(0, "")
		}
	}()
	a := New(Config{
		ServerAddr:       ln.Addr().String(),
		TLS:              &tls.Config{ServerName: "localhost"}, // system roots: the self-signed certificate is refused
		Credential:       func() (string, error) { return "4711", nil },
		TransportMode:    TransportQUIC,
		HandshakeTimeout: 2 * time.Second,
	}, slog.New(slog.NewTextHandler(&lockedBuffer{}, nil)))
	_, err := a.session(context.Background(), nil, nil, func(string) {}, func() {})
	var na *noAnswerError
	if err == nil || errors.As(err, &na) {
		t.Fatalf("session: %v, want a TLS failure, not a no-answer error", err)
	}
}

// TestAutoFallback: in TransportAuto, a QUIC attempt that got no answer
// (UDP blocked) goes to TCP at once; one the proxy answered but that
// failed (a busy proxy) goes to TCP only after quicFallbackAfter such
// failures in a row.
func TestAutoFallback(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	var tcpDials atomic.Int32
	go func() {
		for {
			c, err := tcp.Accept()
			if err != nil {
				return
			}
			tcpDials.Add(1)
			c.Close() // no TLS: the TCP attempt fails too
		}
	}()
	newAgent := func(server string) *Agent {
		return New(Config{
			ServerAddr: server, TCPServerAddr: tcp.Addr().String(),
			TLS:              &tls.Config{ServerName: "localhost"},
			Credential:       func() (string, error) { return "4711", nil },
			HandshakeTimeout: 300 * time.Millisecond,
		}, slog.New(slog.NewTextHandler(&lockedBuffer{}, nil)))
	}

	a := newAgent(blackHole(t))
	if _, err := a.dialProxy(context.Background()); err == nil {
		t.Fatal("dial succeeded")
	}
	if n := tcpDials.Load(); n != 1 {
		t.Fatalf("no answer over UDP: %d TCP attempts, want 1 at once", n)
	}

	ln := selfSignedQUIC(t)
	a = newAgent(ln.Addr().String())
	tcpDials.Store(0)
	for i := 1; i <= quicFallbackAfter; i++ {
		if _, err := a.dialProxy(context.Background()); err == nil {
			t.Fatal("dial succeeded")
		}
		want := int32(0)
		if i == quicFallbackAfter {
			want = 1
		}
		if n := tcpDials.Load(); n != want {
			t.Fatalf("answered QUIC failure %d: %d TCP attempts, want %d", i, n, want)
		}
	}
}

// TestDrainingRefusalsRetryQuickly: a proxy that refuses the agent because
// it drains (CodeShutdown) is tried again after drainRetryMin to
// drainRetryMax, drainRetries times in a row, so that a load balancer that
// hashes the source port soon sends the agent to another proxy; then the
// exponential backoff resumes where it was, at its start.
func TestDrainingRefusalsRetryQuickly(t *testing.T) {
	ln := selfSignedQUIC(t)
	var refused atomic.Int32
	go func() {
		for {
			c, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			refused.Add(1)
			c.CloseWithError(wire.CodeShutdown, "proxy shutting down: connect to another proxy")
		}
	}()
	logs := &lockedBuffer{}
	a := New(Config{
		ServerAddr:    ln.Addr().String(),
		TLS:           &tls.Config{InsecureSkipVerify: true},
		Credential:    func() (string, error) { return "4711", nil },
		TransportMode: TransportQUIC,
	}, slog.New(slog.NewTextHandler(logs, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.connect(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	quick := regexp.MustCompile(`msg="proxy is draining and refused this connection: trying again soon to reach another proxy" .*retry_in=(\S+) quick_retries_left=(\d+)`)
	backoff := regexp.MustCompile(`msg="connection to proxy ended" .*Application error 0x102 \(remote\).* retry_in=(\S+)`)
	var lines []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		lines = strings.Split(strings.TrimSpace(logs.String()), "\n")
		if backoff.MatchString(logs.String()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no return to the backoff after %d refusals; log:\n%s", refused.Load(), logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	n := 0
	for _, l := range lines {
		if m := quick.FindStringSubmatch(l); m != nil {
			wait, err := time.ParseDuration(m[1])
			if err != nil {
				t.Fatal(err)
			}
			if wait < drainRetryMin || wait > drainRetryMax {
				t.Errorf("quick retry %d waits %s, want %s to %s", n+1, wait, drainRetryMin, drainRetryMax)
			}
			if left := m[2]; left != strconv.Itoa(drainRetries-n-1) {
				t.Errorf("quick retry %d: quick_retries_left=%s, want %d", n+1, left, drainRetries-n-1)
			}
			n++
			continue
		}
		if m := backoff.FindStringSubmatch(l); m != nil {
			if n != drainRetries {
				t.Errorf("backoff resumed after %d quick retries, want %d", n, drainRetries)
			}
			wait, err := time.ParseDuration(m[1])
			if err != nil {
				t.Fatal(err)
			}
			if wait > 201*time.Millisecond {
				t.Errorf("first backoff after the quick retries waits %s, want at most the backoff's base (200ms): quick retries leave it where it was", wait)
			}
			return
		}
	}
	t.Fatalf("log has no return to the backoff:\n%s", logs.String())
}
