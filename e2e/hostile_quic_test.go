package e2e

// Hostile peers on the proxy's QUIC side: connections that never
// authenticate or send broken auth frames, a burst of handshakes, agents
// that answer tunnel requests with garbage, and two agents that share an ID.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/wire"
)

// authTimeout is the proxy's bound on the authentication exchange.
const authTimeout = 10 * time.Second

// startAnsweringAgent connects a fake agent as id (noauth) that answers
// every tunnel request with answer, and waits until the proxy registered it.
func startAnsweringAgent(t testing.TB, p *proxyProc, id string, answer func(s *quic.Stream)) {
	t.Helper()
	before := p.count("agent connected", "agent", id)
	conn := dialQUIC(t, p)
	var msg bytes.Buffer
	wire.WriteMessage(&msg, id)
	if got, err := sendAuth(conn, msg.Bytes()); err != nil || got != wire.AuthOK {
		t.Fatalf("fake agent %s: %q %v", id, got, err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			s, err := conn.AcceptStream(context.Background())
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				br := bufio.NewReader(s)
				if _, err := wire.ReadConnect(br); err != nil {
					s.CancelRead(wire.StreamCodeAbort)
					s.CancelWrite(wire.StreamCodeAbort)
					return
				}
				answer(s)
				io.Copy(io.Discard, s) // until the proxy gives up on it
			}()
		}
	}()
	t.Cleanup(func() {
		conn.CloseWithError(wire.CodeNoError, "test over")
		wg.Wait()
	})
	p.waitLog(t, startTimeout, before+1, "agent connected", "agent", id)
}

// TestHostileQUIC throws broken agents at a proxy while a real agent keeps
// serving a client; afterwards the proxy's goroutines, descriptors and heap
// are back near their baseline.
func TestHostileQUIC(t *testing.T) {
	t.Parallel()
	o := startRecOrigin(t)
	p := startProxy(t, "--metrics.listen-address=127.0.0.1:0", "--agent-server.agent.dial-timeout=3s")
	startAgent(t, p, "4711")
	metrics := metricsAddr(t, p.process)
	// Fake agents whose answers to a tunnel request are not HTTP, or never
	// end their header.
	startAnsweringAgent(t, p, "garbage", func(s *quic.Stream) {
		io.WriteString(s, "\x00\x01 this is not HTTP\r\n\r\n")
	})
	startAnsweringAgent(t, p, "endless", func(s *quic.Stream) {
		io.WriteString(s, "HTTP/1.1 200 OK\r\nX-Endless: ")
		chunk := bytes.Repeat([]byte("a"), 64<<10)
		for range 32 { // 2 MiB, never a CRLF
			if _, err := s.Write(chunk); err != nil {
				return
			}
		}
	})
	if status, body, err := get(p.httpAddr, "4711", o.url("/hello")); err != nil || status != 200 {
		t.Fatalf("warm-up GET: %d %q %v", status, body, err)
	}
	pid := p.cmd.Process.Pid
	base, err := readResources(pid, metrics)
	if err != nil {
		t.Fatal(err)
	}
	baseHeap := heapInuse(t, metrics)
	good := startGoodClient(p.httpAddr, "4711", o)
	sessions := countNonBurst(p)

	t.Run("group", func(t *testing.T) {
		t.Run("no auth stream", func(t *testing.T) {
			t.Parallel()
			conn := dialQUIC(t, p)
			defer conn.CloseWithError(0, "")
			start := time.Now()
			waitClosed(t, conn, authTimeout+5*time.Second, wire.CodeAuthFailed)
			if took := time.Since(start); took < authTimeout-time.Second {
				t.Errorf("closed after %s, want the %s auth timeout", took, authTimeout)
			}
		})
		t.Run("auth frame stalls", func(t *testing.T) {
			t.Parallel()
			conn := dialQUIC(t, p)
			defer conn.CloseWithError(0, "")
			s, err := conn.OpenStreamSync(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			var hdr [4]byte
			binary.BigEndian.PutUint32(hdr[:], wire.MaxAuthLen)
			s.Write(append(hdr[:], "4711"...)) // and nothing more, no FIN
			waitClosed(t, conn, authTimeout+5*time.Second, wire.CodeAuthFailed)
		})
		t.Run("truncated auth frame", func(t *testing.T) {
			t.Parallel()
			conn := dialQUIC(t, p)
			defer conn.CloseWithError(0, "")
			var hdr [4]byte
			binary.BigEndian.PutUint32(hdr[:], 100)
			_, err := sendAuth(conn, append(hdr[:], "4711"...)) // FIN after 4 of 100 bytes
			checkAppError(t, conn, err, wire.CodeAuthFailed)
		})
		t.Run("truncated length", func(t *testing.T) {
			t.Parallel()
			conn := dialQUIC(t, p)
			defer conn.CloseWithError(0, "")
			_, err := sendAuth(conn, []byte{0, 0})
			checkAppError(t, conn, err, wire.CodeAuthFailed)
		})
		t.Run("oversized auth frame", func(t *testing.T) {
			t.Parallel()
			conn := dialQUIC(t, p)
			defer conn.CloseWithError(0, "")
			var hdr [4]byte
			binary.BigEndian.PutUint32(hdr[:], wire.MaxAuthLen+1)
			_, err := sendAuth(conn, append(hdr[:], "4711"...))
			checkAppError(t, conn, err, wire.CodeAuthFailed)
		})
		t.Run("wrong ALPN", func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
			defer cancel()
			conn, err := quic.DialAddr(ctx, p.agentAddr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h3", "reverse-http"}}, nil)
			if err == nil {
				conn.CloseWithError(0, "")
				t.Fatal("handshake with ALPN h3 succeeded, want it refused")
			}
		})
		t.Run("burst of handshakes", func(t *testing.T) {
			t.Parallel()
			hostileBurst(t, p, 300)
		})
		t.Run("garbage tunnel answer", func(t *testing.T) {
			t.Parallel()
			for _, id := range []string{"garbage", "endless"} {
				start := time.Now()
				resp, body, err := rawRequest(p.httpAddr, "CONNECT", []byte(connectHeader(o.addr, basicAuth(id, "noauth"))))
				if err != nil {
					t.Fatalf("%s: %v", id, err)
				}
				checkRefusal(t, resp, body, http.StatusBadGateway)
				if took := time.Since(start); took > 2*time.Second {
					t.Errorf("%s: 502 after %s, want it at once (not at the 3s dial timeout)", id, took)
				}
				status, got, err := get(p.httpAddr, id, o.url("/hello"))
				if err != nil || status != http.StatusBadGateway {
					t.Errorf("%s: GET: %d %q %v, want 502", id, status, got, err)
				}
			}
		})
	})

	good.finish(t, 20)
	// The broken connections never became agents.
	if n := countNonBurst(p); n != sessions {
		t.Errorf("proxy registered %d more agents than the burst's during the attack", n-sessions)
	}
	waitBaseline(t, pid, metrics, base, 25)
	err = waitFor(20*time.Second, func() error {
		if h := heapInuse(t, metrics); h > baseHeap+32<<20 {
			return fmt.Errorf("heap in use %d MiB, baseline %d MiB", h>>20, baseHeap>>20)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

// heapInuse is go_memstats_heap_inuse_bytes of the process at metrics.
func heapInuse(t testing.TB, metrics string) int64 {
	t.Helper()
	m, err := scrape(metrics)
	if err != nil {
		t.Fatal(err)
	}
	return int64(m["go_memstats_heap_inuse_bytes"])
}

// waitClosed waits until the proxy closes conn with code.
func waitClosed(t testing.TB, conn *quic.Conn, within time.Duration, code quic.ApplicationErrorCode) {
	t.Helper()
	select {
	case <-conn.Context().Done():
	case <-time.After(within):
		t.Fatalf("connection still open after %s", within)
	}
	var ae *quic.ApplicationError
	if cause := context.Cause(conn.Context()); !errors.As(cause, &ae) || !ae.Remote || ae.ErrorCode != code {
		t.Errorf("connection ended with %v, want the proxy's %#x", cause, uint64(code))
	}
}

// hostileBurst makes n QUIC handshakes at once: a third authenticate and
// leave, a third claim a 1 MiB credential and stall, a third just connect
// and close. quic-go refuses handshakes past its accept queue (32) with
// CONNECTION_REFUSED, by design; those retry after a short backoff, as
// agents do, and must all get in within a few attempts. Any other failure
// fails the test.
func hostileBurst(t *testing.T, p *proxyProc, n int) {
	var wg sync.WaitGroup
	var failed, refused atomic.Int64
	var errs errorSet
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for attempt := 1; ; attempt++ {
				err := burstOne(p, i)
				var te *quic.TransportError
				if errors.As(err, &te) && te.ErrorCode == quic.ConnectionRefused && attempt < 8 {
					refused.Add(1)
					time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
					continue
				}
				if err != nil {
					failed.Add(1)
					errs.add(err)
				}
				return
			}
		}()
	}
	wg.Wait()
	t.Logf("%d handshakes: %d refusals (CONNECTION_REFUSED) retried", n, refused.Load())
	if f := failed.Load(); f > 0 {
		t.Errorf("%d of %d handshakes or authentications failed: %v", f, n, errs.list())
	}
}

func burstOne(p *proxyProc, i int) error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	conn, err := quic.DialAddr(ctx, p.agentAddr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{wire.ALPN}},
		&quic.Config{HandshakeIdleTimeout: startTimeout})
	if err != nil {
		return err
	}
	defer conn.CloseWithError(0, "")
	switch i % 3 {
	case 0:
		var msg bytes.Buffer
		wire.WriteMessage(&msg, fmt.Sprintf("burst-%d", i))
		if got, err := sendAuth(conn, msg.Bytes()); err != nil || got != wire.AuthOK {
			return fmt.Errorf("auth: %q %w", got, err)
		}
	case 1:
		s, err := conn.OpenStreamSync(ctx)
		if err != nil {
			return err
		}
		var hdr [4]byte
		binary.BigEndian.PutUint32(hdr[:], wire.MaxAuthLen)
		if _, err := s.Write(append(hdr[:], strings.Repeat("x", 1000)...)); err != nil {
			return err
		}
		time.Sleep(time.Second)
	}
	return nil
}

// TestDuplicateAgentFlapping runs two real agents with the same ID. The
// second replaces the first once; when the first comes back the proxy
// sees the two evicting each other, says so once, and keeps the connected
// one while refusing the other with wire.CodeDuplicate. Clients keep
// reaching the agent, and when the connected one stops, the other takes
// over.
func TestDuplicateAgentFlapping(t *testing.T) {
	t.Parallel()
	o := startRecOrigin(t)
	p := startProxy(t)
	// A short replaced-wait: without the fix the two would evict each
	// other every second or so.
	a := startAgent(t, p, "twin", "--agent-client.replaced-wait=1s")
	b := startAgent(t, p, "twin", "--agent-client.replaced-wait=1s")
	// From the one replacement on, while A keeps coming back.
	good := startGoodClient(p.httpAddr, "twin", o)
	const dupMsg = "two live agents use the same ID: keeping the connected one and refusing the other while it stays (logged once per window)"
	p.waitLog(t, 15*time.Second, 1, dupMsg, "agent", "twin")
	a.waitLog(t, 5*time.Second, 1, "proxy refused this connection: another live agent uses the same ID; waiting before trying again", "retry_in", "1s")

	// Watch for a while: no more replacements, one log line, A refused
	// again with a growing wait.
	connected := p.count("agent connected", "agent", "twin")
	a.waitLog(t, 15*time.Second, 2, "proxy refused this connection: another live agent uses the same ID; waiting before trying again")
	if n := p.count("agent connected", "agent", "twin"); n != connected {
		t.Errorf("the twins still take the ID from each other: %d registrations, then %d", connected, n)
	}
	if n := p.count("agent connection replaced by a new one with the same ID", "agent", "twin"); n != 1 {
		t.Errorf("proxy logged %d replacements, want 1 (B replacing A)", n)
	}
	if n := p.count(dupMsg); n != 1 {
		t.Errorf("proxy logged the duplicate %d times, want once per window", n)
	}
	if waits := a.lines("proxy refused this connection: another live agent uses the same ID; waiting before trying again"); waits[1]["retry_in"] != "2s" {
		t.Errorf("second wait %q, want 2s (doubling)", waits[1]["retry_in"])
	}
	good.finish(t, 20)

	// B leaves: A takes the ID over at its next attempt.
	if err := b.terminate(stopTimeout); err != nil {
		t.Fatal(err)
	}
	if n := b.count("tunnel closed"); n == 0 {
		t.Error("B, the connected twin, served no request")
	}
	p.waitLog(t, 15*time.Second, connected+1, "agent connected", "agent", "twin")
	if status, body, err := get(p.httpAddr, "twin", o.url("/hello")); err != nil || status != 200 {
		t.Errorf("GET through A after B left: %d %q %v", status, body, err)
	}
}

// countNonBurst counts the agents p registered, leaving out those of
// hostileBurst, which authenticate properly.
func countNonBurst(p *proxyProc) int {
	n := 0
	for _, l := range p.lines("agent connected") {
		if !strings.HasPrefix(l["agent"], "burst-") {
			n++
		}
	}
	return n
}

// errorSet collects distinct error texts, for a test's message.
type errorSet struct {
	mu   sync.Mutex
	seen map[string]int
}

func (s *errorSet) add(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = map[string]int{}
	}
	s.seen[err.Error()]++
}

func (s *errorSet) list() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen
}
