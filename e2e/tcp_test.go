package e2e

import (
	"bufio"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// agentTransport returns the transport /agents lists for id.
func agentTransport(t testing.TB, adminAddr, id string) string {
	t.Helper()
	code, body := adminGet(t, adminAddr, "/agents")
	var agents []struct {
		ID        string `json:"id"`
		Transport string `json:"transport"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &agents) != nil {
		t.Fatalf("/agents: %d %s", code, body)
	}
	for _, a := range agents {
		if a.ID == id {
			return a.Transport
		}
	}
	return ""
}

// TestAgentOverTCP: an agent on --agent-client.transport=tcp reaches the
// proxy's default TCP listener (the QUIC port, on TCP) and carries
// tunnels both ways intact; a refusal's reason crosses the TCP variant as
// it crosses QUIC.
func TestAgentOverTCP(t *testing.T) {
	t.Parallel()
	const id = "4711"
	web := startHTTPOrigin(t, false)
	p := startProxy(t, "--admin.listen-address=127.0.0.1:0", "--limits.agents=1")
	a := startAgent(t, p, id, "--agent-client.transport=tcp")
	if p.count("agent connected", "agent", id, "transport", "tcp") != 1 {
		t.Fatalf("proxy did not log the agent as connected over tcp:\n%s", p.log.String())
	}
	if a.count("connected to proxy", "transport", "tcp") != 1 {
		t.Fatalf("agent did not log its tcp connection:\n%s", a.log.String())
	}
	pa := metricsAddr(t, p.process)
	if tr := agentTransport(t, pa, id); tr != "tcp" {
		t.Fatalf("/agents transport %q, want tcp", tr)
	}

	const size = 64 << 20
	tn := mustConnect(t, p.httpAddr, web.addr, basicAuth(id, "noauth"))
	defer tn.Close()
	tn.SetDeadline(time.Now().Add(time.Minute))
	if _, err := download(tn.Conn, tn.br, web.addr, size, 1); err != nil {
		t.Fatalf("download over tcp: %v", err)
	}
	if _, err := upload(tn.Conn, tn.br, web.addr, size, 2); err != nil {
		t.Fatalf("upload over tcp: %v", err)
	}
	tn.Close()

	// Concurrent tunnels, each with its own bytes.
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range 50 {
		wg.Go(func() {
			tn, err := dialConnect(p.httpAddr, web.addr, basicAuth(id, "noauth"), nil)
			if err != nil {
				failed.Add(1)
				t.Log(err)
				return
			}
			defer tn.Close()
			tn.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := download(tn.Conn, tn.br, web.addr, 256<<10, uint64(10+i)); err != nil {
				failed.Add(1)
				t.Log(err)
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of 50 concurrent tunnels over tcp failed", n)
	}

	// The proxy's refusal reaches a second agent with its reason.
	b := startProcess(t, "agent 4712", append(agentArgs(p), "--auth.noauth.agent-id=4712", "--agent-client.transport=tcp")...)
	b.waitLog(t, 15*time.Second, 1, "connection to proxy ended")
	if line := b.lines("connection to proxy ended")[0]["error"]; !strings.Contains(line, "this proxy holds 1 agents, its limit (--limits.agents)") {
		t.Fatalf("agent over tcp refused without the proxy's reason: %s", line)
	}
}

// TestAgentFallsBackToTCP: an agent in the default transport mode (auto)
// whose UDP is blocked (here a relay that drops every datagram) connects
// over TCP within 10 s; when UDP is allowed again it moves back to QUIC,
// make-before-break: a download under way on the TCP connection finishes
// intact, and a client opening a tunnel every 50 ms meanwhile sees no
// failure.
func TestAgentFallsBackToTCP(t *testing.T) {
	t.Parallel()
	const id = "4711"
	web := startHTTPOrigin(t, false)
	relay := startUDPRelay(t, netip.MustParseAddr("127.0.0.1")) // no target yet: UDP is blocked
	p := startProxy(t, "--admin.listen-address=127.0.0.1:0")
	start := time.Now()
	a := startAgentArgs(t, p, id, "agent",
		"--agent-client.server-address="+relay.addr,
		"--agent-client.tcp-server-address="+p.agentAddr,
		"--agent-client.tls.file.root-ca="+filepath.Join(certDir, "ca.pem"),
		"--auth.noauth.agent-id="+id,
		"--agent-client.quic-probe-interval=2s")
	fallback := time.Since(start)
	if p.count("agent connected", "agent", id, "transport", "tcp") != 1 {
		t.Fatalf("agent did not connect over tcp:\n%s\nagent:\n%s", p.log.String(), a.log.String())
	}
	if fallback > 10*time.Second {
		t.Fatalf("agent connected over tcp %s after it started, want within 10s", fallback)
	}
	t.Logf("UDP blocked: the agent was connected over TCP %s after it started", fallback.Round(time.Millisecond))
	pa := metricsAddr(t, p.process)

	// A client opens a short tunnel every 50 ms throughout.
	stop := make(chan struct{})
	var ok, failed atomic.Int64
	var loop sync.WaitGroup
	loop.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := uint64(100); ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			tn, err := dialConnect(p.httpAddr, web.addr, basicAuth(id, "noauth"), nil)
			if err == nil {
				tn.SetDeadline(time.Now().Add(10 * time.Second))
				_, err = download(tn.Conn, tn.br, web.addr, 32<<10, i)
				tn.Close()
			}
			if err != nil {
				failed.Add(1)
				t.Logf("tunnel %d: %v", i, err)
				continue
			}
			ok.Add(1)
		}
	})

	// A download on the TCP connection; a third of the way in, UDP is
	// allowed and the reader pauses until the agent is back on QUIC.
	const size = 100 << 20
	tn := mustConnect(t, p.httpAddr, web.addr, basicAuth(id, "noauth"))
	defer tn.Close()
	tn.SetDeadline(time.Now().Add(2 * time.Minute))
	var moved time.Duration
	pause := &progress{at: []int64{size / 3}, fn: func(int) {
		allowed := time.Now()
		relay.setTarget(p.agentAddr)
		if err := p.waitLogErr(15*time.Second, 1, "agent connected", "agent", id, "transport", "quic"); err != nil {
			t.Errorf("agent did not move back to quic: %v\nagent log:\n%s", err, a.log.String())
			return
		}
		moved = time.Since(allowed)
	}}
	if _, err := download(tn.Conn, bufio.NewReader(progressReader{tn, pause}), web.addr, size, 1); err != nil {
		t.Fatalf("download on the tcp connection while the agent moved to quic: %v", err)
	}
	tn.Close()
	// A few more tunnels on the QUIC connection, then stop the client.
	time.Sleep(500 * time.Millisecond)
	close(stop)
	loop.Wait()
	if t.Failed() {
		return
	}
	t.Logf("UDP allowed: the agent was connected over QUIC %s later (probe interval 2s)", moved.Round(time.Millisecond))

	if tr := agentTransport(t, pa, id); tr != "quic" {
		t.Fatalf("/agents transport %q after the move, want quic", tr)
	}
	if a.count("QUIC connects again: moving back from TCP; tunnels on the TCP connection go on until they end") != 1 {
		t.Errorf("agent did not log its move back to QUIC:\n%s", a.log.String())
	}
	// The TCP connection closed once its download ended.
	p.waitLog(t, 10*time.Second, 1, "agent disconnected", "agent", id, "transport", "tcp")
	if n := failed.Load(); n > 0 || ok.Load() < 20 {
		t.Fatalf("new tunnels while the agent moved: %d ok, %d failed; want none failed (and at least 20 ok)", ok.Load(), n)
	}
	t.Logf("new tunnels during the move: %d ok, 0 failed; the %d MiB download on the TCP connection finished intact", ok.Load(), size>>20)
}
