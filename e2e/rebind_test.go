package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// progress calls fn(i) once each time the bytes that went through it pass
// at[i]. It wraps the reading or the writing side of a client's tunnel.
type progress struct {
	n  int64
	at []int64
	fn func(i int)
	i  int
}

func (p *progress) add(n int) {
	p.n += int64(n)
	for p.i < len(p.at) && p.n >= p.at[p.i] {
		p.fn(p.i)
		p.i++
	}
}

type progressReader struct {
	io.Reader
	*progress
}

func (r progressReader) Read(b []byte) (int, error) {
	n, err := r.Reader.Read(b)
	r.add(n)
	return n, err
}

type progressConn struct {
	net.Conn
	*progress
}

func (c progressConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.add(n)
	return n, err
}

// fractions returns size*1/(k+1), ..., size*k/(k+1).
func fractions(size int64, k int) []int64 {
	var at []int64
	for i := 1; i <= k; i++ {
		at = append(at, size*int64(i)/int64(k+1))
	}
	return at
}

// agentInfo is an agent as the proxy's /agents lists it.
type agentInfo struct {
	ID          string    `json:"id"`
	RemoteAddr  string    `json:"remote_addr"`
	ConnectedAt time.Time `json:"connected_at"`
}

func adminAgent(t testing.TB, adminAddr, id string) agentInfo {
	t.Helper()
	code, body := adminGet(t, adminAddr, "/agents")
	var agents []agentInfo
	if code != 200 || json.Unmarshal([]byte(body), &agents) != nil {
		t.Fatalf("/agents: %d %s", code, body)
	}
	for _, a := range agents {
		if a.ID == id {
			return a
		}
	}
	t.Fatalf("/agents has no agent %s: %s", id, body)
	return agentInfo{}
}

// canBind reports whether this host can bind a UDP socket on ip (the
// whole of 127.0.0.0/8 is loopback on Linux, not everywhere).
func canBind(ip netip.Addr) bool {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// TestRebindTunnelsSurvive: an agent whose packets start arriving from
// another source port, or another source address, mid-transfer (a NAT
// rebinding, here a relay that switches its upstream socket and drops the
// old one) keeps its QUIC connection, its tunnel and its data. The proxy
// validates the new path and answers there (quic-go's connection
// migration); the agent does not reconnect; a tunnel opened afterwards
// works.
func TestRebindTunnelsSurvive(t *testing.T) {
	t.Parallel()
	lo := netip.MustParseAddr("127.0.0.1")
	for _, tc := range []struct {
		name string
		ips  []netip.Addr // upstream source address of the relay, first and after each switch
	}{
		{"new source port", []netip.Addr{lo, lo, lo, lo, lo, lo, lo, lo, lo}},
		{"new source address", []netip.Addr{lo,
			netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"), lo, netip.MustParseAddr("127.0.0.2"),
			netip.MustParseAddr("127.0.0.3"), lo, netip.MustParseAddr("127.0.0.2"), lo}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, ip := range tc.ips {
				if !canBind(ip) {
					t.Skipf("cannot bind UDP on %s here", ip)
				}
			}
			testRebind(t, tc.ips)
		})
	}
}

func testRebind(t *testing.T, ips []netip.Addr) {
	const (
		id   = "4711"
		size = 64 << 20
	)
	web := startHTTPOrigin(t, false)
	relay := startUDPRelay(t, ips[0]) // first: it closes after the processes
	p := startProxy(t, "--admin.listen-address=127.0.0.1:0")
	relay.setTarget(p.agentAddr)
	a := startAgentArgs(t, p, id, "agent",
		"--agent-client.server-address="+relay.addr,
		"--agent-client.tls.file.root-ca="+filepath.Join(certDir, "ca.pem"),
		"--auth.noauth.agent-id="+id,
		"--agent-client.host-whitelist="+web.addr)
	pa := metricsAddr(t, p.process)
	before := adminAgent(t, pa, id)
	if want := relay.upstreams()[0].addr.String(); before.RemoteAddr != want {
		t.Fatalf("/agents remote_addr %s, want the relay's upstream %s", before.RemoteAddr, want)
	}

	// Half of the switches while the agent sends (a download: origin ->
	// agent -> proxy -> client), half while the proxy sends (an upload).
	next := ips[1:]
	half := len(next) / 2
	var switches []string
	switchTo := func(ip netip.Addr) {
		u := relay.mustRebind(ip)
		switches = append(switches, u.addr.String())
	}
	tn := mustConnect(t, p.httpAddr, web.addr, basicAuth(id, "noauth"))
	defer tn.Close()
	tn.SetDeadline(time.Now().Add(time.Minute))
	start := time.Now()
	down := &progress{at: fractions(size, half), fn: func(i int) { switchTo(next[i]) }}
	if _, err := download(tn.Conn, bufio.NewReader(progressReader{tn, down}), web.addr, size, 1); err != nil {
		t.Fatalf("download through the tunnel, relay switched to %v: %v", switches, err)
	}
	up := &progress{at: fractions(size, len(next)-half), fn: func(i int) { switchTo(next[half+i]) }}
	if _, err := upload(progressConn{tn.Conn, up}, tn.br, web.addr, size, 2); err != nil {
		t.Fatalf("upload through the tunnel, relay switched to %v: %v", switches, err)
	}
	took := time.Since(start)
	tn.Close()
	if len(switches) != len(next) {
		t.Fatalf("relay switched %d times, want %d", len(switches), len(next))
	}

	// A tunnel opened after the switches works.
	tn2 := mustConnect(t, p.httpAddr, web.addr, basicAuth(id, "noauth"))
	defer tn2.Close()
	if _, err := download(tn2.Conn, tn2.br, web.addr, 1<<20, 3); err != nil {
		t.Fatalf("download through a new tunnel after the switches: %v", err)
	}
	tn2.Close()
	p.waitLog(t, 10*time.Second, 2, "tunnel closed", "agent", id)

	// The same connection carried it all: the proxy answered on every new
	// path (more than the few PATH_CHALLENGEs it sends to validate one),
	// and nobody reconnected.
	for i, u := range relay.upstreams() {
		t.Logf("relay upstream %d %s: %d datagrams to the proxy, %d answers (%d bytes)",
			i, u.addr, u.sent.Load(), u.answers.Load(), u.answeredBytes.Load())
		if i > 0 && u.answers.Load() < 100 {
			t.Errorf("relay upstream %d %s: the proxy sent %d datagrams there, want it to have moved its sending there (>= 100)", i, u.addr, u.answers.Load())
		}
	}
	after := adminAgent(t, pa, id)
	if !after.ConnectedAt.Equal(before.ConnectedAt) {
		t.Errorf("/agents connected_at %s, was %s: the agent reconnected", after.ConnectedAt, before.ConnectedAt)
	}
	if n := p.count("agent connected", "agent", id); n != 1 {
		t.Errorf("proxy logged %d `agent connected`, want 1", n)
	}
	if n := a.count("connected to proxy"); n != 1 {
		t.Errorf("agent logged %d `connected to proxy`, want 1", n)
	}
	if n := a.count("connection to proxy ended"); n != 0 {
		t.Errorf("agent logged %d `connection to proxy ended`, want 0", n)
	}
	t.Logf("%d MiB down and up through one tunnel in %s, relay upstream %s -> %s; /agents remote_addr %s",
		size>>20, took.Round(time.Millisecond), relay.upstreams()[0].addr, strings.Join(switches, " -> "), after.RemoteAddr)
}

// TestRebindBehindNginx: an agent behind a NAT that rebinds, in front of
// nginx's UDP balancer, which routes by the source address and port
// (`hash $remote_addr$remote_port consistent`). After a rebinding nginx
// sees a new flow and hashes it anew: to the same proxy, which migrates
// the connection (the tunnel survives), or to another proxy, which does
// not know the connection and, sharing the stateless reset key, resets
// it: the agent reconnects at once, there, and the tunnel on the old
// connection is lost. The relay switches ports during transfers until the
// second happens.
func TestRebindBehindNginx(t *testing.T) {
	t.Parallel()
	const (
		id          = "4711"
		size        = 24 << 20
		maxSwitches = 12
	)
	lo := netip.MustParseAddr("127.0.0.1")
	relay := startUDPRelay(t, lo) // first: it closes after the processes
	c := startCluster(t, haConfig{proxies: 2, nginx: true})
	relay.setTarget(c.lb.udpAddr)
	a := c.startAgent(t, id, relay.addr)
	web := c.origin(id)
	holder := a.holder
	count := func(msg string, kv ...string) []int {
		n := make([]int, len(c.proxies))
		for i, p := range c.proxies {
			n[i] = p.count(msg, kv...)
		}
		return n
	}
	survived := 0
	for sw := 1; sw <= maxSwitches; sw++ {
		connected := count("agent connected", "agent", id)
		ended := a.count("connection to proxy ended")
		tn := mustConnect(t, holder.httpAddr, web.addr, basicAuth(id, "noauth"))
		tn.SetDeadline(time.Now().Add(30 * time.Second))
		var switchedAt time.Time
		var mu sync.Mutex
		pr := &progress{at: []int64{size / 4}, fn: func(int) {
			relay.mustRebind(lo)
			mu.Lock()
			switchedAt = time.Now()
			mu.Unlock()
		}}
		result := make(chan error, 1)
		go func() {
			_, err := download(tn.Conn, bufio.NewReader(progressReader{tn, pr}), web.addr, size, uint64(sw))
			result <- err
		}()
		when := func() time.Time { mu.Lock(); defer mu.Unlock(); return switchedAt }

		// Either the download ends, or the agent connects anew.
		var (
			err       error
			done      bool
			newHolder *proxyProc
			at        time.Time
		)
		werr := waitFor(20*time.Second, func() error {
			select {
			case err = <-result:
				done = true
				return nil
			default:
			}
			for i, n := range count("agent connected", "agent", id) {
				if n > connected[i] {
					newHolder, at = c.proxies[i], time.Now()
					return nil
				}
			}
			return fmt.Errorf("switch %d: the download neither ended nor did the agent reconnect", sw)
		})
		if werr != nil {
			tn.Close()
			t.Fatal(werr)
		}
		if done && err == nil {
			// Hashed to the same proxy: it migrated the connection.
			tn.Close()
			if when().IsZero() {
				t.Fatalf("switch %d: the download ended before the relay switched", sw)
			}
			if n := a.count("connection to proxy ended"); n != ended {
				t.Fatalf("switch %d: the download survived, but the agent's connection ended: %v", sw, a.lines("connection to proxy ended"))
			}
			survived++
			t.Logf("switch %d: relay upstream now %s: nginx kept it on %s, the connection migrated, %d MiB intact",
				sw, relay.upstreams()[sw].addr, holder.httpAddr, size>>20)
			continue
		}
		if done {
			// The tunnel broke before any proxy registered the agent again:
			// wait for the reconnect.
			holderErr := err
			werr = waitFor(10*time.Second, func() error {
				for i, n := range count("agent connected", "agent", id) {
					if n > connected[i] {
						newHolder, at = c.proxies[i], time.Now()
						return nil
					}
				}
				return fmt.Errorf("switch %d: download failed (%v) and the agent did not reconnect", sw, holderErr)
			})
			if werr != nil {
				t.Fatal(werr)
			}
		}
		// Hashed to the other proxy: a stateless reset, and a reconnect there.
		reconnect := at.Sub(when())
		if newHolder == holder {
			t.Fatalf("switch %d: the agent reconnected to the proxy it was on (%s)", sw, holder.httpAddr)
		}
		a.waitLog(t, 5*time.Second, ended+1, "connection to proxy ended")
		cause := a.lines("connection to proxy ended")[ended]["error"]
		if !strings.Contains(cause, "stateless reset") {
			t.Errorf("switch %d: the agent's connection ended with %q, want a stateless reset", sw, cause)
		}
		// Well within the agent's idle timeout (6s), which it would wait
		// out without the reset.
		if reconnect > 2*time.Second {
			t.Errorf("switch %d: the agent reconnected %s after the switch, want at once (< 2s)", sw, reconnect)
		}
		c.mc.waitRoute(t, startTimeout, id, newHolder.httpAddr)
		if err := c.reach(newHolder.httpAddr, id, clientTimeout); err != nil {
			t.Errorf("a new tunnel after the reconnect: %v", err)
		}
		// The tunnel on the old connection is lost: its client sees it end
		// once the old proxy gives the connection up.
		if !done {
			select {
			case err = <-result:
			case <-time.After(20 * time.Second):
				t.Fatal("the download through the old connection did not end within 20s")
			}
		}
		lost := time.Since(when())
		tn.Close()
		if err == nil {
			t.Errorf("switch %d: the download through the old connection completed; want it lost", sw)
		}
		t.Logf("switch %d: relay upstream now %s: nginx sent it to %s instead of %s; the agent got %q and was connected there %s after the switch; the old tunnel's client saw it end after %s (%v)",
			sw, relay.upstreams()[sw].addr, newHolder.httpAddr, holder.httpAddr, cause,
			reconnect.Round(time.Millisecond), lost.Round(time.Millisecond), err)
		t.Logf("%d rebinding(s) survived on the same proxy before one went to another", survived)
		return
	}
	t.Fatalf("%d rebindings all went to the same proxy: nginx's hash sent no new port elsewhere", maxSwitches)
}
