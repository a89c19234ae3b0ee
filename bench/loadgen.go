package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/wire"
)

// loadGen connects many agents to one proxy from this process. It speaks
// the agent side of internal/wire: QUIC with ALPN wire.ALPN and TLS 1.3,
// the agent's quic.Config, the agent ID on the first stream, "authenticated"
// back. All connections share one quic.Transport over one UDP socket, so
// 10,000 agents cost one file descriptor. The agents accept no tunnels:
// they sit idle, sending keep-alives as real agents do.
type loadGen struct {
	tr   *quic.Transport
	addr *net.UDPAddr
	tls  *tls.Config

	failed atomic.Int64 // connection attempts that failed

	mu    sync.Mutex
	conns []*quic.Conn
}

func newLoadGen(proxyAddr, certs string) (*loadGen, error) {
	addr, err := net.ResolveUDPAddr("udp", proxyAddr)
	if err != nil {
		return nil, err
	}
	tlsConf, err := clientTLS(certs, wire.ALPN)
	if err != nil {
		return nil, err
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	return &loadGen{tr: &quic.Transport{Conn: udp}, addr: addr, tls: tlsConf}, nil
}

// connect connects and authenticates one agent. Like a real agent it
// tries again after a failure (a proxy refuses connections while its
// accept queue is full), with exponential backoff and full jitter from
// 200ms, up to maxAttempts times; it counts the failed attempts.
func (g *loadGen) connect(ctx context.Context, id string) error {
	const maxAttempts = 8
	var err error
	for attempt := range maxAttempts {
		if err = g.connectOnce(ctx, id); err == nil || ctx.Err() != nil {
			return err
		}
		g.failed.Add(1)
		wait := time.Duration(rand.Int64N(int64(200*time.Millisecond)<<attempt)) + time.Millisecond
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
	return fmt.Errorf("%d attempts: %w", maxAttempts, err)
}

func (g *loadGen) connectOnce(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := g.tr.Dial(ctx, g.addr, g.tls, clientQUICConfig())
	if err != nil {
		return fmt.Errorf("agent %s: connect: %w", id, err)
	}
	if err := authenticate(ctx, conn, id); err != nil {
		conn.CloseWithError(wire.CodeNoError, "")
		return fmt.Errorf("agent %s: %w", id, err)
	}
	g.mu.Lock()
	g.conns = append(g.conns, conn)
	g.mu.Unlock()
	return nil
}

func authenticate(ctx context.Context, conn *quic.Conn, id string) error {
	stream, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return fmt.Errorf("open auth stream: %w", err)
	}
	deadline, _ := ctx.Deadline()
	stream.SetDeadline(deadline)
	if err := wire.WriteMessage(stream, id); err != nil {
		return fmt.Errorf("send ID: %w", err)
	}
	stream.Close()
	answer, err := wire.ReadMessage(stream)
	if err != nil {
		return fmt.Errorf("read auth answer: %w", err)
	}
	if answer != wire.AuthOK {
		return fmt.Errorf("auth answer %q, want %q", answer, wire.AuthOK)
	}
	return nil
}

// alive counts the connections that are still open, and returns why one
// of the others ended.
func (g *loadGen) alive() (n int, cause error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, c := range g.conns {
		if c.Context().Err() == nil {
			n++
		} else if cause == nil {
			cause = context.Cause(c.Context())
		}
	}
	return n, cause
}

// close closes every connection and the transport.
func (g *loadGen) close() {
	g.mu.Lock()
	conns := g.conns
	g.conns = nil
	g.mu.Unlock()
	for _, c := range conns {
		c.CloseWithError(wire.CodeNoError, "bench done")
	}
	g.tr.Close()
}

// agentsRun is one run of the agents10k phase: a fresh proxy, N agents
// connected from this process, the proxy's memory per agent and its CPU
// while they sit idle.
func agentsRun(ctx context.Context, b *bench, r *runRecorder) error {
	n := b.cfg.Agents
	proxy, _, agentAddr, err := b.startProxy(ctx)
	if err != nil {
		return err
	}
	defer proxy.stop(10 * time.Second)
	time.Sleep(200 * time.Millisecond) // let it settle
	before, err := memBytes(proxy.pid, "VmRSS")
	if err != nil {
		return err
	}
	g, err := newLoadGen(agentAddr, b.certs)
	if err != nil {
		return err
	}
	defer g.close()

	drops0, _ := udpDrops()
	start := time.Now()
	failed, firstErr := parallel(ctx, n, b.cfg.Inflight, func(i int) error {
		return g.connect(ctx, fmt.Sprintf("bench-%05d", i))
	})
	took := time.Since(start)
	connected := n - failed
	r.add("agents.connected", fmt.Sprintf("%d agents: connected", n), "count", float64(connected))
	if ctx.Err() != nil {
		return firstErr
	}
	r.add("agents.connect_s", fmt.Sprintf("%d agents: time to connect all", n), "s", took.Seconds())
	r.add("agents.retries", fmt.Sprintf("%d agents: failed attempts, retried", n), "count", float64(g.failed.Load()))
	if connected == 0 {
		return firstErr
	}
	time.Sleep(500 * time.Millisecond) // let the proxy finish registering
	after, err := memBytes(proxy.pid, "VmRSS")
	if err != nil {
		return err
	}
	r.add("agents.proxy_rss_burst", fmt.Sprintf("%d agents: proxy RSS right after connecting", n), "MB", float64(after)/1e6)
	r.add("agents.rss_per_agent_burst", fmt.Sprintf("%d agents: proxy RSS per agent right after connecting", n), "KB", float64(after-before)/1e3/float64(connected))

	self := os.Getpid()
	profiled := b.cpuProfile(ctx, r, "idle", b.cfg.Idle-time.Second, proxy)
	p0, err1 := cpuTicks(proxy.pid)
	s0, err2 := cpuTicks(self)
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-time.After(b.cfg.Idle):
	}
	p1, err3 := cpuTicks(proxy.pid)
	s1, err4 := cpuTicks(self)
	profiled()
	for _, err := range []error{err1, err2, err3, err4} {
		if err != nil {
			return err
		}
	}
	// The steady state: after the idle period, the garbage of the connect
	// burst (handshakes) has had time to be collected.
	idleRSS, err := memBytes(proxy.pid, "VmRSS")
	if err != nil {
		return err
	}
	b.heapProfile(ctx, r, "idle", proxy) // after the RSS: it forces a GC
	r.add("agents.proxy_rss", fmt.Sprintf("%d agents: proxy RSS after idling", n), "MB", float64(idleRSS)/1e6)
	r.add("agents.rss_per_agent", fmt.Sprintf("%d agents: proxy RSS per agent after idling", n), "KB", float64(idleRSS-before)/1e3/float64(connected))
	secs := b.cfg.Idle.Seconds()
	r.add("agents.idle_cpu", fmt.Sprintf("%d agents idle: proxy CPU", n), "% core", 100*float64(p1-p0)/clockTicks/secs)
	r.add("agents.loadgen_cpu", fmt.Sprintf("%d agents idle: load generator CPU", n), "% core", 100*float64(s1-s0)/clockTicks/secs)
	alive, cause := g.alive()
	if drops1, err := udpDrops(); err == nil {
		r.add("agents.udp_drops", fmt.Sprintf("%d agents: UDP receive buffer drops (host)", n), "count", float64(drops1-drops0))
	}
	r.add("agents.alive", fmt.Sprintf("%d agents: still connected after idle", n), "count", float64(alive))
	switch {
	case failed > 0:
		return fmt.Errorf("%d of %d agents did not connect; first error: %w", failed, n, firstErr)
	case alive < connected:
		return fmt.Errorf("%d of %d agents lost their connection while idle; one because: %w", connected-alive, connected, cause)
	}
	return nil
}
