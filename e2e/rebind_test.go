package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
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
	if before.ConnectedAt.IsZero() || time.Since(before.ConnectedAt) > time.Minute {
		t.Fatalf("/agents connected_at %s, want when the agent connected", before.ConnectedAt)
	}
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
	if ups := relay.upstreams(); after.RemoteAddr != ups[len(ups)-1].addr.String() {
		t.Errorf("/agents remote_addr %s after the switches, want the relay's current upstream %s", after.RemoteAddr, ups[len(ups)-1].addr)
	}
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
// (`hash $remote_addr$remote_port consistent`, as deploy/ha/nginx.conf).
// After a rebinding nginx sees a new flow and hashes it anew: to the same
// proxy, which migrates the connection (the tunnel survives), or to the
// other proxy, which does not know the connection. That one, sharing the
// stateless reset key (derived from the same TLS key), resets it when the
// agent has data in flight: the agent reconnects there at once, and the
// tunnel on the old connection is lost. An idle agent's keep-alives are
// too small to be answered with a reset: it reconnects only after its
// idle timeout. The relay switches ports until each case happened.
func TestRebindBehindNginx(t *testing.T) {
	t.Parallel()
	const id = "4711"
	lo := netip.MustParseAddr("127.0.0.1")
	relay := startUDPRelay(t, lo) // first: it closes after the processes
	c := startCluster(t, haConfig{proxies: 2, nginx: true})
	relay.setTarget(c.lb.udpAddr)
	a := c.startAgent(t, id, relay.addr)
	nb := &nginxRebind{c: c, relay: relay, a: a, id: id}
	holder := nb.inFlight(t, a.holder)
	nb.idle(t, holder)
}

// nginxRebind is TestRebindBehindNginx's set-up.
type nginxRebind struct {
	c     *haCluster
	relay *udpRelay
	a     *haAgent
	id    string
}

// maxRebinds is how often a test switches ports to see nginx send a new
// flow to the other of two proxies (each switch does so with about even
// odds).
const maxRebinds = 12

// connected counts each proxy's `agent connected` lines for the agent.
func (nb *nginxRebind) connected() []int {
	n := make([]int, len(nb.c.proxies))
	for i, p := range nb.c.proxies {
		n[i] = p.count("agent connected", "agent", nb.id)
	}
	return n
}

// reconnected returns the proxy that registered the agent since before
// was counted, or nil.
func (nb *nginxRebind) reconnected(before []int) *proxyProc {
	for i, n := range nb.connected() {
		if n > before[i] {
			return nb.c.proxies[i]
		}
	}
	return nil
}

// ended is the cause of the agent's n-th (from 0) lost connection.
func (nb *nginxRebind) ended(t testing.TB, n int) string {
	t.Helper()
	nb.a.waitLog(t, 5*time.Second, n+1, "connection to proxy ended")
	return nb.a.lines("connection to proxy ended")[n]["error"]
}

// inFlight switches the relay's port during downloads through holder
// until nginx sends the agent's packets to the other proxy; it returns
// the proxy the agent reconnected to.
func (nb *nginxRebind) inFlight(t *testing.T, holder *proxyProc) *proxyProc {
	const size = 24 << 20
	c, relay, a, id := nb.c, nb.relay, nb.a, nb.id
	web := c.origin(id)
	lo := netip.MustParseAddr("127.0.0.1")
	survived := 0
	for sw := 1; sw <= maxRebinds; sw++ {
		before := nb.connected()
		ended := a.count("connection to proxy ended")
		tn := mustConnect(t, holder.httpAddr, web.addr, basicAuth(id, "noauth"))
		tn.SetDeadline(time.Now().Add(30 * time.Second))
		var (
			mu         sync.Mutex
			switchedAt time.Time
			up         *relayUpstream
		)
		pr := &progress{at: []int64{size / 4}, fn: func(int) {
			u := relay.mustRebind(lo)
			mu.Lock()
			switchedAt, up = time.Now(), u
			mu.Unlock()
		}}
		result := make(chan error, 1)
		go func() {
			_, err := download(tn.Conn, bufio.NewReader(progressReader{tn, pr}), web.addr, size, uint64(sw))
			result <- err
		}()
		switched := func() (time.Time, *relayUpstream) { mu.Lock(); defer mu.Unlock(); return switchedAt, up }

		// Either the download ends, or the agent connects anew.
		var (
			err       error
			done      bool
			newHolder *proxyProc
			at        time.Time
		)
		werr := waitFor(20*time.Second, func() error {
			if newHolder = nb.reconnected(before); newHolder != nil {
				at = time.Now()
				return nil
			}
			select {
			case err = <-result:
				done = true
				if err != nil {
					return errors.New("the download failed; waiting for the agent to reconnect")
				}
				return nil
			default:
			}
			return errors.New("the download neither ended nor did the agent reconnect")
		})
		if done && err == nil && newHolder == nil {
			// Hashed to the same proxy: it migrated the connection.
			tn.Close()
			when, u := switched()
			if when.IsZero() {
				t.Fatalf("switch %d: the download ended before the relay switched", sw)
			}
			if n := a.count("connection to proxy ended"); n != ended {
				t.Fatalf("switch %d: the download survived, but the agent's connection ended: %v", sw, a.lines("connection to proxy ended"))
			}
			survived++
			t.Logf("in flight, switch %d: relay upstream now %s: nginx kept it on %s, the connection migrated, %d MiB intact",
				sw, u.addr, holder.httpAddr, size>>20)
			continue
		}
		if werr != nil {
			tn.Close()
			t.Fatalf("in flight, switch %d: %v (download: %v)", sw, werr, err)
		}
		// Hashed to the other proxy: a stateless reset, and a reconnect there.
		when, u := switched()
		reconnect := at.Sub(when)
		if newHolder == holder {
			t.Fatalf("switch %d: the agent reconnected to the proxy it was on (%s)", sw, holder.httpAddr)
		}
		cause := nb.ended(t, ended)
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
		lost := time.Since(when)
		tn.Close()
		if err == nil {
			t.Errorf("switch %d: the download through the old connection completed; want it lost", sw)
		}
		holder.waitLog(t, 10*time.Second, 1, "agent disconnected", "agent", id)
		gone := holder.lines("agent disconnected", "agent", id)[0]["cause"]
		t.Logf("in flight, switch %d: relay upstream now %s: nginx sent it to %s instead of %s; the agent got %q and was connected there %s after the switch; the old tunnel's client saw it end after %s (%v); the old proxy closed the connection: %s",
			sw, u.addr, newHolder.httpAddr, holder.httpAddr, cause,
			reconnect.Round(time.Millisecond), lost.Round(time.Millisecond), err, gone)
		t.Logf("in flight: %d rebinding(s) survived on the same proxy before one went to the other", survived)
		return newHolder
	}
	t.Fatalf("in flight: %d rebindings all went to the same proxy: nginx's hash sent no new port elsewhere", maxRebinds)
	return nil
}

// idle switches the relay's port while the agent is idle on holder until
// nginx sends its keep-alives to the other proxy, and measures how long
// the agent takes to reconnect there.
func (nb *nginxRebind) idle(t *testing.T, holder *proxyProc) {
	relay, a := nb.relay, nb.a
	lo := netip.MustParseAddr("127.0.0.1")
	survived := 0
	for sw := 1; sw <= maxRebinds; sw++ {
		before := nb.connected()
		ended := a.count("connection to proxy ended")
		u := relay.mustRebind(lo)
		switched := time.Now()
		// The same proxy validates the new path, and answers the next
		// keep-alive (every 2s) there. The other one answers nothing: a
		// keep-alive is usually too small to be answered with a stateless reset (a padded loss probe is not).
		err := waitFor(3*time.Second, func() error {
			if u.answers.Load() == 0 {
				return errors.New("no answer on the new port")
			}
			return nil
		})
		if err == nil {
			// The answer may be a stateless reset from the other proxy,
			// drawn by a padded packet (a loss or MTU probe): then the
			// connection ends at once.
			time.Sleep(500 * time.Millisecond)
			if a.count("connection to proxy ended") > ended {
				err = errors.New("answered with a stateless reset")
			}
		}
		if err == nil {
			if p := nb.reconnected(before); p != nil {
				t.Fatalf("idle, switch %d: answers on the new port, and the agent reconnected to %s", sw, p.httpAddr)
			}
			survived++
			t.Logf("idle, switch %d: relay upstream now %s: answered there %s after the switch, the connection migrated",
				sw, u.addr, time.Since(switched).Round(time.Millisecond))
			continue
		}
		var newHolder *proxyProc
		why := err
		if err := waitFor(15*time.Second, func() error {
			if newHolder = nb.reconnected(before); newHolder == nil {
				return errors.New("the agent did not reconnect")
			}
			return nil
		}); err != nil {
			t.Fatalf("idle, switch %d: %v, and %v within 18s", sw, why, err)
		}
		reconnect := time.Since(switched)
		// The old connection ends by its idle timeout, or by a stateless
		// reset when a keep-alive went out padded (a loss probe) and the
		// other proxy could answer it; a failed reconnection attempt may
		// be logged after it.
		nb.ended(t, ended)
		var causes []string
		for _, l := range a.lines("connection to proxy ended")[ended:] {
			causes = append(causes, l["error"])
		}
		if !slices.ContainsFunc(causes, func(c string) bool {
			return strings.Contains(c, "no recent network activity") || strings.Contains(c, "stateless reset")
		}) {
			t.Errorf("idle, switch %d: the agent's connection ended with %q, want its idle timeout or a stateless reset", sw, causes)
		}
		if newHolder == holder {
			t.Errorf("idle, switch %d: the agent reconnected to the proxy it was on (%s)", sw, holder.httpAddr)
		}
		nb.c.mc.waitRoute(t, startTimeout, nb.id, newHolder.httpAddr)
		if err := nb.c.reach(newHolder.httpAddr, nb.id, clientTimeout); err != nil {
			t.Errorf("a new tunnel after the reconnect: %v", err)
		}
		t.Logf("idle, switch %d: relay upstream now %s: nginx sent it to %s instead of %s; the agent's connection ended (%q) and it was connected there %s after the switch",
			sw, u.addr, newHolder.httpAddr, holder.httpAddr, causes, reconnect.Round(time.Millisecond))
		t.Logf("idle: %d rebinding(s) survived on the same proxy before one went to the other", survived)
		return
	}
	t.Fatalf("idle: %d rebindings all went to the same proxy: nginx's hash sent no new port elsewhere", maxRebinds)
}
