package e2e

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// udpRelay is a NAT in a test: agents send to its downstream socket, and
// it forwards their datagrams to its target (setTarget) from an upstream
// socket of its own, and the answers back to the agent that sent last. rebind replaces
// the upstream socket with a new one (a new source port, or a new source
// address) and closes the old one, as a NAT does when its mapping expired
// and the agent's next packet made a new one: answers to the old port are
// lost.
//
// It serves one agent at a time (the source address it heard from last)
// and stops by itself after its lifetime, or when the test ends. Start it
// before the processes that use it: the test's cleanups run in reverse,
// so the relay then closes after they stopped and can carry their
// goodbyes.
type udpRelay struct {
	t      testing.TB
	addr   string // the downstream address, 127.0.0.1:port
	target atomic.Pointer[net.UDPAddr]
	down   *net.UDPConn
	wg     sync.WaitGroup

	mu    sync.Mutex
	agent *net.UDPAddr // where answers go: the agent's last source address
	up    *relayUpstream
	ups   []*relayUpstream // every upstream so far, the current one last
}

// relayUpstream is one upstream socket: one "NAT mapping".
type relayUpstream struct {
	conn          *net.UDPConn
	addr          netip.AddrPort // its local address: what the proxy sees
	sent          atomic.Int64   // datagrams forwarded to target
	answers       atomic.Int64   // datagrams received from target
	answeredBytes atomic.Int64
}

// relayLifetime bounds a relay: it closes its sockets after this long
// even if the test forgot to.
const relayLifetime = 2 * time.Minute

// startUDPRelay starts a relay whose first upstream socket is bound to
// upstreamIP (port 0). It drops datagrams until setTarget.
func startUDPRelay(t testing.TB, upstreamIP netip.Addr) *udpRelay {
	t.Helper()
	down, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), relayLifetime)
	r := &udpRelay{t: t, addr: down.LocalAddr().String(), down: down}
	if _, err := r.rebind(upstreamIP); err != nil {
		cancel()
		down.Close()
		t.Fatal(err)
	}
	r.wg.Go(r.forwardDown)
	// The lifetime, or the end of the test, closes every socket, which
	// ends the goroutines.
	stop := context.AfterFunc(ctx, func() {
		down.Close()
		r.mu.Lock()
		r.up.conn.Close()
		r.mu.Unlock()
	})
	t.Cleanup(func() {
		cancel()
		stop()
		down.Close()
		r.mu.Lock()
		r.up.conn.Close()
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

// setTarget sets where the relay forwards to, host:port.
func (r *udpRelay) setTarget(addr string) {
	r.t.Helper()
	a, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		r.t.Fatal(err)
	}
	r.target.Store(a)
}

// rebind moves the relay to a new upstream socket on ip, closes the old
// one and returns the new one.
func (r *udpRelay) rebind(ip netip.Addr) (*relayUpstream, error) {
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	if err != nil {
		return nil, err
	}
	u := &relayUpstream{conn: conn, addr: conn.LocalAddr().(*net.UDPAddr).AddrPort()}
	r.mu.Lock()
	old := r.up
	r.up = u
	r.ups = append(r.ups, u)
	r.mu.Unlock()
	if old != nil {
		old.conn.Close()
	}
	r.wg.Go(func() { r.forwardUp(u) })
	return u, nil
}

// mustRebind is rebind that fails the test on an error.
func (r *udpRelay) mustRebind(ip netip.Addr) *relayUpstream {
	r.t.Helper()
	u, err := r.rebind(ip)
	if err != nil {
		r.t.Fatalf("relay: new upstream socket on %s: %v", ip, err)
	}
	return u
}

// upstreams returns every upstream socket so far, the current one last.
func (r *udpRelay) upstreams() []*relayUpstream {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*relayUpstream(nil), r.ups...)
}

// forwardDown forwards the agent's datagrams upstream until the
// downstream socket closes.
func (r *udpRelay) forwardDown() {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := r.down.ReadFromUDP(buf)
		if err != nil {
			return
		}
		r.mu.Lock()
		r.agent = from
		u := r.up
		r.mu.Unlock()
		target := r.target.Load()
		if target == nil {
			continue
		}
		if _, err := u.conn.WriteToUDP(buf[:n], target); err == nil {
			u.sent.Add(1)
		} else if !errors.Is(err, net.ErrClosed) {
			// A full socket buffer: the datagram is lost, as on a network.
			continue
		}
		// Closed by a rebind meanwhile: lost too, as a NAT would lose it.
	}
}

// forwardUp forwards target's answers on u to the agent until u closes.
func (r *udpRelay) forwardUp(u *relayUpstream) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := u.conn.ReadFromUDP(buf)
		if err != nil {
			return
		}
		if target := r.target.Load(); target == nil || from.Port != target.Port || !from.IP.Equal(target.IP) {
			continue
		}
		u.answers.Add(1)
		u.answeredBytes.Add(int64(n))
		r.mu.Lock()
		agent := r.agent
		r.mu.Unlock()
		if agent != nil {
			r.down.WriteToUDP(buf[:n], agent)
		}
	}
}
