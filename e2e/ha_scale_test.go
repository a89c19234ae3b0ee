package e2e

// HA at scale: thousands of agents from one load generator (e2e/fleet, the
// real agent code), a memcached a couple of milliseconds away, and proxies
// that die without warning.

import (
	"bufio"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
)

// storeDelay is what the relay in front of memcached adds to every
// request: a scale model of a busy store on another host.
const storeDelay = 2 * time.Millisecond

// delayRelay is a TCP relay that holds every chunk a client sends for
// delay before passing it on.
type delayRelay struct {
	addr   string
	ln     net.Listener
	wg     sync.WaitGroup
	frozen atomic.Bool // pass nothing on: memcached stops answering
	mu     sync.Mutex
	open   map[net.Conn]struct{}
}

func startDelayRelay(t testing.TB, target string, delay time.Duration) *delayRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatalf(t, "%v", err)
	}
	r := &delayRelay{addr: ln.Addr().String(), ln: ln, open: map[net.Conn]struct{}{}}
	r.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.wg.Go(func() { r.serve(c, target, delay) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		for c := range r.open {
			c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

func (r *delayRelay) track(c net.Conn, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if on {
		r.open[c] = struct{}{}
	} else {
		delete(r.open, c)
	}
}

func (r *delayRelay) serve(c net.Conn, target string, delay time.Duration) {
	defer c.Close()
	s, err := net.DialTimeout("tcp", target, 2*time.Second)
	if err != nil {
		return
	}
	defer s.Close()
	r.track(c, true)
	r.track(s, true)
	defer r.track(c, false)
	defer r.track(s, false)
	var wg sync.WaitGroup
	wg.Go(func() {
		io.Copy(c, s)
		c.Close()
	})
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 && !r.frozen.Load() {
			time.Sleep(delay)
			if _, werr := s.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	s.Close()
	wg.Wait()
}

var (
	fleetOnce sync.Once
	fleetPath string
	fleetErr  error
)

// fleetProc is a running e2e/fleet: n agents in one process.
type fleetProc struct {
	*process
	stats string // URL of its stats endpoint
}

type fleetStats struct {
	Connected int            `json:"connected"`
	Messages  map[string]int `json:"messages"`
	Errors    []string       `json:"errors"`
}

// events counts the agents' log lines: each connection that began or
// ended, each refusal, writes one.
func (s fleetStats) events() int {
	n := 0
	for _, c := range s.Messages {
		n += c
	}
	return n
}

// replaced counts the agents' "replaced by another agent with the same ID"
// log lines.
func (s fleetStats) replaced() int {
	n := 0
	for msg, c := range s.Messages {
		if strings.Contains(msg, "same ID") {
			n += c
		}
	}
	return n
}

// startFleet builds e2e/fleet once (without -race: it stands for
// thousands of agent processes) and runs n agents named prefix%05d
// against server, with more fleet flags.
func startFleet(t testing.TB, server string, n int, prefix string, ramp time.Duration, flags ...string) *fleetProc {
	t.Helper()
	fleetOnce.Do(func() {
		root, err := repoRoot()
		if err != nil {
			fleetErr = err
			return
		}
		fleetPath = filepath.Join(filepath.Dir(binPath), "fleet")
		build := exec.Command("go", "build", "-o", fleetPath, "./e2e/fleet")
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			fleetErr = fmt.Errorf("go build ./e2e/fleet: %w\n%s", err, out)
		}
	})
	if fleetErr != nil {
		t.Fatal(fleetErr)
	}
	args := append([]string{"-server", server, "-ca", filepath.Join(certDir, "ca.pem"),
		"-n", fmt.Sprint(n), "-prefix", prefix, "-ramp", ramp.String(), "-duration", "30m"}, flags...)
	p, err := startExternal(t, "fleet", fleetPath, args...)
	if err != nil {
		fatalf(t, "%v", err)
	}
	groupOf(t).add(p)
	f := &fleetProc{process: p}
	err = waitFor(startTimeout, func() error {
		sc := bufio.NewScanner(strings.NewReader(p.log.String()))
		for sc.Scan() {
			if u, ok := strings.CutPrefix(sc.Text(), "stats "); ok {
				f.stats = u
				return nil
			}
		}
		if p.exited() {
			return errors.New("fleet exited")
		}
		return errors.New("no stats line yet")
	})
	if err != nil {
		fatalf(t, "fleet: %v\n%s", err, p.log.String())
	}
	return f
}

// retarget sends the fleet's new connections to addr (with -redirect).
func (f *fleetProc) retarget(t testing.TB, addr string) {
	t.Helper()
	resp, err := http.Post(strings.TrimSuffix(f.stats, "/stats")+"/target?addr="+addr, "", nil)
	if err != nil {
		fatalf(t, "%v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fatalf(t, "retarget: %s", resp.Status)
	}
}

func (f *fleetProc) read() (fleetStats, error) {
	var s fleetStats
	resp, err := http.Get(f.stats)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

// waitConnected waits until all n agents are connected.
func (f *fleetProc) waitConnected(t testing.TB, n int, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var last fleetStats
	var progress []string
	next := start
	err := waitFor(timeout, func() error {
		s, err := f.read()
		if err != nil {
			return err
		}
		last = s
		if time.Since(next) >= 0 {
			progress = append(progress, fmt.Sprintf("%s: %d (%d connections, %d ended)", time.Since(start).Round(time.Second),
				s.Connected, s.Messages["connected to proxy"], s.Messages["connection to proxy ended"]))
			next = next.Add(10 * time.Second)
		}
		if s.Connected < n {
			return fmt.Errorf("%d of %d agents connected", s.Connected, n)
		}
		return nil
	})
	t.Logf("agents connected, every 10s: %s", strings.Join(progress, ", "))
	if err != nil {
		fatalf(t, "fleet: %v; agents' log messages: %v; errors: %q", err, last.Messages, last.Errors)
	}
	if len(last.Errors) > 0 {
		t.Logf("agents' errors while connecting: %q", last.Errors)
	}
	return time.Since(start)
}

// scaleN is the number of agents a scale test runs: def, or the value of
// env (for a quick run on a busy machine; the numbers are the
// defaults).
func scaleN(t testing.TB, env string, def int) int {
	t.Helper()
	if os.Getenv("HA_SCALE") == "" {
		t.Skip("HA scale test: runs alone on the machine with HA_SCALE=1 (make test-scale, part of make test)")
	}
	if v := os.Getenv(env); v != "" {
		var n int
		if _, err := fmt.Sscan(v, &n); err != nil || n < 1 {
			fatalf(t, "%s=%q: want a positive number", env, v)
		}
		return n
	}
	return def
}

func agentIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s%05d", prefix, i)
	}
	return ids
}

// routesOf reads the routes of ids straight from memcached (not through
// the delay relay), 500 keys per request.
func routesOf(t testing.TB, mcAddr string, ids []string) map[string]string {
	t.Helper()
	mc := memcache.New(mcAddr)
	mc.Timeout = 5 * time.Second
	out := make(map[string]string, len(ids))
	for part := range slices.Chunk(ids, 500) {
		items, err := mc.GetMulti(part)
		if err != nil {
			fatalf(t, "memcached get: %v", err)
		}
		for k, it := range items {
			out[k] = string(it.Value)
		}
	}
	return out
}

func writeClusterKey(t testing.TB) string {
	t.Helper()
	b := make([]byte, 32)
	rand.Read(b)
	path := filepath.Join(t.TempDir(), "cluster.key")
	if err := os.WriteFile(path, fmt.Appendf(nil, "%x\n", b), 0o600); err != nil {
		fatalf(t, "%v", err)
	}
	return path
}

// startSlowStoreProxy starts a proxy whose memcached is addr (the relay).
func startSlowStoreProxy(t testing.TB, storeAddr string, extra ...string) *proxyProc {
	t.Helper()
	return startProxyOnFreePorts(t, func(httpAddr string) []string {
		return append([]string{
			"--agent-server.tls.file.cert=" + filepath.Join(certDir, "proxy.pem"),
			"--agent-server.tls.file.key=" + filepath.Join(certDir, "proxy-key.pem"),
			"--store.type=memcached",
			"--store.memcached.address=" + storeAddr,
			"--store.http-proxy-address=" + httpAddr,
		}, extra...)
	})
}

// reachAll GETs the origin through the proxy at addr as every agent in
// ids until each has answered once or deadline passes; it returns when
// each answered (relative to start) and those that never did. Workers
// take agents from a queue; one that failed goes to its end and is tried
// again no sooner than 250ms later.
func reachAll(addr string, ids []string, url string, start, deadline time.Time) (answered map[string]time.Duration, missing []string) {
	type try struct {
		id    string
		after time.Time
	}
	answered = make(map[string]time.Duration, len(ids))
	var mu sync.Mutex
	queue := make(chan try, len(ids))
	for _, id := range ids {
		queue <- try{id: id}
	}
	left := atomic.Int64{}
	left.Store(int64(len(ids)))
	var wg sync.WaitGroup
	for range 48 {
		wg.Go(func() {
			for left.Load() > 0 && time.Now().Before(deadline) {
				var tr try
				select {
				case tr = <-queue:
				case <-time.After(100 * time.Millisecond):
					continue
				}
				if d := time.Until(tr.after); d > 0 {
					time.Sleep(d)
				}
				code, _, err := haGet(addr, tr.id, "noauth", url, time.Second)
				if err == nil && code == http.StatusOK {
					mu.Lock()
					answered[tr.id] = time.Since(start)
					mu.Unlock()
					left.Add(-1)
					continue
				}
				queue <- try{id: tr.id, after: time.Now().Add(250 * time.Millisecond)}
			}
		})
	}
	wg.Wait()
	for _, id := range ids {
		if _, ok := answered[id]; !ok {
			missing = append(missing, id)
		}
	}
	return answered, missing
}

// TestHAFailoverAtScale: 2,000 agents on proxy D, memcached 2ms away, D
// is SIGKILLed. Every agent must be reachable through the surviving proxy
// A within 15s, and none may be closed as "replaced": A takes the dead
// proxy's routes over instead of obeying them.
func TestHAFailoverAtScale(t *testing.T) {
	progs := haNeed(t)
	n := scaleN(t, "HA_FAILOVER_AGENTS", 2000)
	mc := startMemcached(t, progs)
	slow := startDelayRelay(t, mc.addr, storeDelay)
	key := writeClusterKey(t)
	a := startSlowStoreProxy(t, slow.addr, "--store.cluster-key="+key)
	d := startSlowStoreProxy(t, slow.addr, "--store.cluster-key="+key)
	origin := startHTTPOrigin(t, false)

	// 20 agents a socket, to spare the load generator's share of the two
	// cores; the proxies see 2,000 connections either way.
	f := startFleet(t, d.agentAddr, n, "fo-", 5*time.Second, "-redirect", "-per-socket", "20")
	took := f.waitConnected(t, n, 2*time.Minute)
	ids := agentIDs("fo-", n)
	if err := waitFor(30*time.Second, func() error {
		routes := routesOf(t, mc.addr, ids)
		for _, id := range ids {
			if routes[id] != d.httpAddr {
				return fmt.Errorf("route of %s is %q, want %s", id, routes[id], d.httpAddr)
			}
		}
		return nil
	}); err != nil {
		fatalf(t, "%v", err)
	}
	t.Logf("%d agents connected to D in %s; all routes name D", n, took.Round(time.Millisecond))

	// Idle agents, as most are: nothing in flight, only keep-alives.
	f.retarget(t, a.agentAddr)
	start := time.Now()
	d.kill(t)
	// The agents' own view, every 250ms: how many are connected, until
	// every one has connected again (each counts a second "connected to
	// proxy"). Clients start then, so that they do not compete with the
	// reconnecting agents for the machine's two cores; at the latest 10s
	// after the kill, so that one agent slow to come back leaves them
	// time to find the others.
	var timeline []string
	reconnected := time.Duration(0)
	for time.Since(start) < 10*time.Second {
		time.Sleep(250 * time.Millisecond)
		s, err := f.read()
		if err != nil {
			continue
		}
		timeline = append(timeline, fmt.Sprintf("%.1fs:%d", time.Since(start).Seconds(), s.Connected))
		if s.Connected == n && s.Messages["connected to proxy"] >= 2*n {
			reconnected = time.Since(start)
			break
		}
	}
	t.Logf("agents connected after SIGKILL: %s", strings.Join(timeline, " "))
	answered, missing := reachAll(a.httpAddr, ids, origin.url("/hello"), start, start.Add(15*time.Second))
	if len(missing) > 0 {
		failf(t, "%d of %d agents not reachable through A within 15s after D was killed, e.g. %v", len(missing), n, missing[:min(5, len(missing))])
	}
	var times []time.Duration
	for _, d := range answered {
		times = append(times, d)
	}
	slices.Sort(times)
	if len(times) > 0 {
		back := "not all reconnected within 10s"
		if reconnected > 0 {
			back = "all reconnected to A " + reconnected.Round(time.Millisecond).String()
		}
		t.Logf("FIGURES failover of %d agents: %s after SIGKILL; through A, first reachable %s, median %s, p99 %s, last %s",
			n, back, times[0].Round(time.Millisecond), times[len(times)/2].Round(time.Millisecond),
			times[len(times)*99/100].Round(time.Millisecond), times[len(times)-1].Round(time.Millisecond))
	}

	// Two renewals later nobody was closed as replaced, and A holds every
	// route.
	time.Sleep(12 * time.Second)
	s, err := f.read()
	if err != nil {
		fatalf(t, "%v", err)
	}
	if r := s.replaced(); r != 0 {
		failf(t, "%d agents were closed as replaced after the failover", r)
	}
	if c := a.count("agent reconnected to another proxy: closing the stale connection here"); c != 0 {
		failf(t, "A closed %d agents as connected to another proxy", c)
	}
	if s.Connected != n {
		failf(t, "%d of %d agents connected after the failover; agents' log messages: %v; errors: %q", s.Connected, n, s.Messages, s.Errors)
	}
	// Every route names A once the last agents are back (one that failed
	// several attempts during the storm may still be in its backoff).
	if err := waitFor(30*time.Second, func() error {
		routes := routesOf(t, mc.addr, ids)
		wrong := 0
		for _, id := range ids {
			if routes[id] != a.httpAddr {
				wrong++
			}
		}
		if wrong > 0 {
			return fmt.Errorf("%d routes do not name A after the failover", wrong)
		}
		return nil
	}); err != nil {
		failf(t, "%v", err)
	}
}

// whyNoRoute says, for the first few of ids, what their route is and what
// the proxy logged of them.
func whyNoRoute(p *proxyProc, routes map[string]string, ids []string) string {
	var b strings.Builder
	for i, id := range ids {
		if i == 3 {
			fmt.Fprintf(&b, " (and %d more)", len(ids)-i)
			break
		}
		fmt.Fprintf(&b, "route of %s: %q, the proxy logged of it: [", id, routes[id])
		for _, l := range strings.Split(p.log.String(), "\n") {
			if strings.Contains(l, "agent="+id+" ") {
				b.WriteString(l + " | ")
			}
		}
		b.WriteString("] ")
	}
	return b.String()
}

const slowRenewal = "route renewal took over half its period: routes may expire before they are renewed (a slow or overloaded memcached?)"

// TestHARoutesHoldAtScale: 10,000 agents on one proxy, memcached 2ms away.
// For HA_SCALE_HOLD (default 3m) no route may expire or name anything but
// the proxy while its agent stays connected, and clients through an lb
// keep reaching them.
func TestHARoutesHoldAtScale(t *testing.T) {
	progs := haNeed(t)
	hold := 3 * time.Minute
	if v := os.Getenv("HA_SCALE_HOLD"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fatalf(t, "HA_SCALE_HOLD: %v", err)
		}
		hold = d
	}
	n := scaleN(t, "HA_HOLD_AGENTS", 10000)
	mc := startMemcached(t, progs)
	slow := startDelayRelay(t, mc.addr, storeDelay)
	key := writeClusterKey(t)
	// The default stop time: the e2e's 5s is too short to tell 10,000
	// agents to move, release their routes 2ms away and close them on a
	// loaded machine (it exited 1 once, after 5.3s).
	p := startSlowStoreProxy(t, slow.addr, "--store.cluster-key="+key, "--log.level=debug", "--shutdown-timeout=30s")
	lb := startLB(t, &memcached{addr: slow.addr}, "--store.cluster-key="+key)
	origin := startHTTPOrigin(t, false)

	// 50 agents a socket: 10,000 sockets would cost the load generator
	// more than the proxy, on the same two cores. Over 60s: the load
	// generator's own handshakes, on the same two cores, starve its
	// connected agents' keep-alives above about 400 new agents a second
	// (docs/benchmarks.md#reconnect-storms); what is tested here is
	// holding the routes.
	f := startFleet(t, p.agentAddr, n, "hold-", time.Minute, "-per-socket", "50")
	took := f.waitConnected(t, n, 3*time.Minute)
	ids := agentIDs("hold-", n)
	if err := waitFor(time.Minute, func() error {
		routes := routesOf(t, mc.addr, ids)
		if len(routes) < n {
			return fmt.Errorf("%d of %d routes", len(routes), n)
		}
		return nil
	}); err != nil {
		routes := routesOf(t, mc.addr, ids)
		var missing []string
		for _, id := range ids {
			if _, ok := routes[id]; !ok {
				missing = append(missing, id)
			}
		}
		fatalf(t, "%v; %s", err, whyNoRoute(p, routes, missing))
	}
	t.Logf("%d agents connected in %s; all routes written", n, took.Round(time.Millisecond))

	slowBefore := p.count(slowRenewal)
	start := time.Now()
	checks, reached, retried, worst := 0, 0, 0, 0
	before, err := f.read()
	if err != nil {
		fatalf(t, "%v", err)
	}
	prev := before
	for time.Since(start) < hold {
		time.Sleep(2 * time.Second)
		s, err := f.read()
		if err != nil {
			fatalf(t, "%v", err)
		}
		routes := routesOf(t, mc.addr, ids)
		after, err := f.read()
		if err != nil {
			fatalf(t, "%v", err)
		}
		var bad []string
		for _, id := range ids {
			if routes[id] != p.httpAddr {
				bad = append(bad, id)
			}
		}
		checks++
		// Every agent connected throughout must have its route. One
		// whose connection ended or began since the last check (each
		// logs a line) may be between connections, as may one not
		// connected now.
		churn := after.events() - prev.events()
		if allowed := n - min(s.Connected, after.Connected) + churn; len(bad) > allowed {
			failf(t, "after %s: %d routes missing or wrong with %d of %d agents connected and %d connection events since the last check; %s; agents' log messages: %v; errors: %q",
				time.Since(start).Round(time.Second), len(bad), after.Connected, n, churn, whyNoRoute(p, routes, bad), after.Messages, after.Errors)
		}
		worst = max(worst, len(bad))
		prev = after
		// A few clients through the lb; one that fails while agents
		// churn is tried again once.
		for i := range 5 {
			id := ids[(checks*7919+i*104729)%n]
			code, body, err := haGet(lb.httpAddr, id, "noauth", origin.url("/hello"), 5*time.Second)
			if (err != nil || code != http.StatusOK) && churn > 0 {
				time.Sleep(time.Second)
				retried++
				code, body, err = haGet(lb.httpAddr, id, "noauth", origin.url("/hello"), 5*time.Second)
			}
			if err != nil || code != http.StatusOK {
				failf(t, "after %s: GET through the lb as %s: %d %q %v; %s; agents' log messages: %v",
					time.Since(start).Round(time.Second), id, code, body, err, whyNoRoute(p, routes, []string{id}), after.Messages)
				continue
			}
			reached++
		}
	}
	s, _ := f.read()
	if c := p.count("route store unavailable; agents connected here are still served, routes will be renewed when it is back"); c != 0 {
		failf(t, "the proxy found the store unavailable %d times", c)
	}
	var renewTook []time.Duration
	for _, l := range p.lines("routes renewed") {
		if d, err := time.ParseDuration(l["took"]); err == nil && l["agents"] == fmt.Sprint(n) {
			renewTook = append(renewTook, d)
		}
	}
	// The requirement is that no route expires (checked above); a renewal
	// over half its 5s period is still 10s ahead of the 15s lease, and is
	// reported with the figures.
	slowRenewals := p.count(slowRenewal) - slowBefore
	slices.Sort(renewTook)
	renewals := "none logged"
	if k := len(renewTook); k > 0 {
		renewals = fmt.Sprintf("%d renewals of all %d routes took median %s, max %s (period 5s)", k, n,
			renewTook[k/2].Round(time.Millisecond), renewTook[k-1].Round(time.Millisecond))
	}
	t.Logf("FIGURES %d agents, store %s away, %s: %d checks of all routes, worst %d missing, %d agents connected at the end, %d connection events during the hold, %d of %d lb requests answered (%d on a second try); %s; %d renewals logged as slow (over half the period)",
		n, storeDelay, hold, checks, worst, s.Connected, s.events()-before.events(), reached, checks*5, retried, renewals, slowRenewals)
}

// A proxy whose memcached stops answering still exits within
// --shutdown-timeout: the node lease and the routes are released in
// parallel under one deadline, not one store timeout per route.
func TestShutdownWithUnreachableStore(t *testing.T) {
	progs := haNeed(t)
	const n = 200
	mc := startMemcached(t, progs)
	relay := startDelayRelay(t, mc.addr, 0)
	p := startSlowStoreProxy(t, relay.addr, "--store.memcached.timeout=1s", "--shutdown-timeout=3s")
	f := startFleet(t, p.agentAddr, n, "sd-", time.Second)
	f.waitConnected(t, n, time.Minute)
	ids := agentIDs("sd-", n)
	if err := waitFor(30*time.Second, func() error {
		if got := len(routesOf(t, mc.addr, ids)); got < n {
			return fmt.Errorf("%d of %d routes", got, n)
		}
		return nil
	}); err != nil {
		fatalf(t, "%v", err)
	}
	relay.frozen.Store(true)
	start := time.Now()
	if err := p.terminate(4 * time.Second); err != nil {
		fatalf(t, "%v", err)
	}
	took := time.Since(start)
	t.Logf("FIGURES proxy with %d routes and an unreachable memcached exited %s after SIGTERM (--shutdown-timeout=3s)", n, took.Round(time.Millisecond))
	if p.count("routes not all released on shutdown; they expire after the ttl") != 1 {
		failf(t, "no log line about the routes left behind:\n%s", tail(p.log.String(), 4096))
	}
}
