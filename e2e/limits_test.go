package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// rssBytes is a process's resident set size, from /proc/PID/status.
func rssBytes(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// absoluteFormLoad sends n absolute-form GETs for url over workers
// keep-alive connections to the proxy at addr; user(i) is request i's
// Basic user name. It returns how many were answered with each status.
func absoluteFormLoad(addr, url string, n, workers int, user func(i int) string) (map[int]int, error) {
	var next atomic.Int64
	type result struct {
		statuses map[int]int
		err      error
	}
	results := make(chan result, workers)
	host := strings.TrimPrefix(url, "http://")
	host, _, _ = strings.Cut(host, "/")
	for range workers {
		go func() {
			r := result{statuses: map[int]int{}}
			defer func() { results <- r }()
			var (
				c  net.Conn
				br *bufio.Reader
			)
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if c == nil {
					if c, r.err = net.DialTimeout("tcp", addr, clientTimeout); r.err != nil {
						return
					}
					br = bufio.NewReader(c)
				}
				c.SetDeadline(time.Now().Add(clientTimeout))
				if _, r.err = fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\n\r\n",
					url, host, basicAuth(user(i), "noauth")); r.err != nil {
					return
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					r.err = fmt.Errorf("request %d: %w", i, err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				r.statuses[resp.StatusCode]++
				if resp.Close {
					c.Close()
					c = nil
				}
			}
		}()
	}
	total := map[int]int{}
	var first error
	for range workers {
		r := <-results
		for s, k := range r.statuses {
			total[s] += k
		}
		if r.err != nil && first == nil {
			first = r.err
		}
	}
	return total, first
}

// TestRandomUserNamesBoundedMemory sends 100,000 absolute-form requests
// with random user names (agents that do not exist, in noauth mode, where
// any name is accepted) and one in a hundred through a real agent, over 32
// keep-alive connections, and checks that the proxy's RSS stays within
// 30 MB of its value after a warm-up. The proxy used to keep one
// connection pool per user name, forever.
func TestRandomUserNamesBoundedMemory(t *testing.T) {
	const (
		warmup  = 10_000
		n       = 100_000
		workers = 32
		margin  = 30 << 20
	)
	if testing.Short() {
		t.Skip("-short: skipping 100,000 requests")
	}
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc/PID/status")
	}
	web := startHTTPOrigin(t, false)
	p := startProxy(t)
	startAgent(t, p, "4711")
	url := web.url("/hello")
	user := func(i int) string {
		if i%100 == 0 {
			return "4711"
		}
		return fmt.Sprintf("random-%016x", rand.Uint64())
	}
	check := func(phase string, statuses map[int]int, err error, total int) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v (answers so far: %v)", phase, err, statuses)
		}
		if statuses[200] != total/100 || statuses[503] != total-total/100 {
			t.Fatalf("%s: answers %v, want %d × 200 and %d × 503", phase, statuses, total/100, total-total/100)
		}
	}

	statuses, err := absoluteFormLoad(p.httpAddr, url, warmup, workers, user)
	check("warm-up", statuses, err, warmup)
	before, err := rssBytes(p.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	statuses, err = absoluteFormLoad(p.httpAddr, url, n, workers, user)
	took := time.Since(start)
	check("load", statuses, err, n)
	after, err := rssBytes(p.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("proxy RSS after %d warm-up requests %.1f MB, after %d more with random user names %.1f MB (%+.1f MB); %d requests in %s (%.0f/s)",
		warmup, float64(before)/(1<<20), n, float64(after)/(1<<20), float64(after-before)/(1<<20),
		n, took.Round(time.Millisecond), float64(n)/took.Seconds())
	if after-before > margin {
		t.Errorf("proxy RSS grew by %.1f MB over %d requests, want at most %d MB", float64(after-before)/(1<<20), n, margin>>20)
	}
	mustGetHello(t, p, "4711", web)
}

// TestLimitFlags runs a proxy with small limits and checks what clients
// and agents see past each one: 429 naming the flag for tunnels through an
// agent and per client address, and QUIC application error 0x110 naming
// the flag for an agent past --limits.agents.
func TestLimitFlags(t *testing.T) {
	t.Parallel()
	e := startEcho(t)
	p := startProxy(t, "--limits.tunnels-per-agent=2", "--limits.tunnels-per-client=3", "--limits.agents=2")
	startAgent(t, p, "a1")
	startAgent(t, p, "a2")
	auth1, auth2 := basicAuth("a1", "noauth"), basicAuth("a2", "noauth")

	// Tunnels through a1: two, then 429.
	var open []*tunnel
	defer func() {
		for _, tn := range open {
			tn.Close()
		}
	}()
	for range 2 {
		tn := mustConnect(t, p.httpAddr, e.addr, auth1)
		open = append(open, tn)
		echoOnce(t, tn, "x")
	}
	refused := func(auth, flag string) { expect429(t, p.httpAddr, e.addr, auth, flag, p.process) }
	refused(auth1, "--limits.tunnels-per-agent")
	// A third tunnel, through a2, is this client's last place.
	tn := mustConnect(t, p.httpAddr, e.addr, auth2)
	open = append(open, tn)
	echoOnce(t, tn, "y")
	refused(auth2, "--limits.tunnels-per-client")

	// A third agent is refused with 0x110 and says why.
	a3 := startProcess(t, "agent a3", append(agentArgs(p), "--auth.noauth.agent-id=a3")...)
	p.waitLog(t, startTimeout, 1, "agent refused", "agent", "a3")
	if err := waitFor(startTimeout, func() error {
		if !strings.Contains(a3.log.String(), "--limits.agents") {
			return fmt.Errorf("agent a3's log does not name --limits.agents")
		}
		return nil
	}); err != nil {
		t.Fatalf("%v:\n%s", err, a3.log.String())
	}

	// A tunnel ends: its places, per agent and per client, are free again.
	open[0].Close()
	if err := waitFor(startTimeout, func() error {
		tn, err := dialConnect(p.httpAddr, e.addr, auth1, nil)
		if err != nil {
			return err
		}
		if tn.resp.StatusCode != 200 {
			tn.Close()
			return fmt.Errorf("CONNECT after a tunnel ended: %s", tn.resp.Status)
		}
		open = append(open, tn)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	echoOnce(t, open[len(open)-1], "z")
}

// TestTunnelIdleTimeoutFlag: with --limits.tunnel-idle-timeout a CONNECT
// tunnel that moves no byte is closed after about that long, and logged
// with outcome "idle timeout".
func TestTunnelIdleTimeoutFlag(t *testing.T) {
	t.Parallel()
	e := startEcho(t)
	p := startProxy(t, "--limits.tunnel-idle-timeout=1s")
	startAgent(t, p, "4711")
	tn := mustConnect(t, p.httpAddr, e.addr, basicAuth("4711", "noauth"))
	defer tn.Close()
	echoOnce(t, tn, "x")
	start := time.Now()
	tn.SetDeadline(time.Now().Add(clientTimeout))
	// The idle tunnel is cut as after an error: both sides get a reset.
	if b, err := io.ReadAll(tn); len(b) != 0 || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("idle tunnel: read %q, %v; want a reset", b, err)
	}
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Errorf("idle tunnel closed after %s, before the 1s timeout", took)
	}
	p.waitLog(t, startTimeout, 1, "tunnel closed", "outcome", "idle timeout", "bytes_up", "1", "bytes_down", "1")
}

// TestLBLimits: an lb passes a proxy's 429 (tunnels per agent, counted on
// the proxy that holds the agent, forwarded tunnels included) on to the
// client with the proxy's reason, and applies --limits.tunnels-per-client
// itself.
func TestLBLimits(t *testing.T) {
	t.Parallel()
	progs := haNeed(t)
	mc := startMemcached(t, progs)
	e := startEcho(t)
	p := startStoreProxy(t, mc, "--limits.tunnels-per-agent=1")
	startAgent(t, p, "a1")
	startAgent(t, p, "a2")
	l := startLB(t, mc, "--limits.tunnels-per-client=2")
	auth1, auth2 := basicAuth("a1", "noauth"), basicAuth("a2", "noauth")

	var open []*tunnel
	defer func() {
		for _, tn := range open {
			tn.Close()
		}
	}()
	// Through the lb as soon as the routes are written.
	for _, auth := range []string{auth1, auth2} {
		var tn *tunnel
		if err := waitFor(startTimeout, func() error {
			var err error
			if tn, err = dialConnect(l.httpAddr, e.addr, auth, nil); err != nil {
				return err
			}
			if tn.resp.StatusCode != 200 {
				tn.Close()
				return fmt.Errorf("CONNECT through the lb: %s", tn.resp.Status)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		open = append(open, tn)
		echoOnce(t, tn, "x")
	}
	refused := func(proc *process, flag string) { expect429(t, l.httpAddr, e.addr, auth1, flag, proc) }
	// The lb's own limit: this client has two tunnels open through it.
	refused(l.process, "--limits.tunnels-per-client")
	// One place free at the lb, but a1 is at its limit on the proxy.
	open[1].Close()
	open = open[:1]
	if err := waitFor(startTimeout, func() error {
		tn, err := dialConnect(l.httpAddr, e.addr, auth1, nil)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(tn.resp.Body)
		tn.Close()
		if !strings.Contains(string(body), "--limits.tunnels-per-agent") {
			return fmt.Errorf("CONNECT through the lb: %s %q", tn.resp.Status, body)
		}
		checkRefusal(t, tn.resp, body, http.StatusTooManyRequests)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	p.waitLog(t, startTimeout, 1, "request refused", "agent", "a1", "status", "429")
}

// expect429 opens a CONNECT to target through the node at addr and wants
// 429 with a reason naming flag, logged by proc (the node that refused).
func expect429(t *testing.T, addr, target, auth, flag string, proc *process) {
	t.Helper()
	tn, err := dialConnect(addr, target, auth, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(tn.resp.Body)
	tn.Close()
	checkRefusal(t, tn.resp, body, http.StatusTooManyRequests)
	if !strings.Contains(string(body), flag) {
		t.Errorf("429 body %q does not name %s", body, flag)
	}
	proc.waitLog(t, startTimeout, 1, "request refused", "status", "429", "reason", strings.TrimSuffix(string(body), "\n"))
}

// TestForwardedCountedOnce: a tunnel an lb forwards is counted against
// --limits.tunnels-per-client at the lb only, when both hold the cluster
// key: the lb signs its Reverse-Http-Forwarded header and the proxy
// verifies it. An lb without the key, and a client that sends the header
// itself, are counted at the proxy like anyone.
func TestForwardedCountedOnce(t *testing.T) {
	t.Parallel()
	progs := haNeed(t)
	mc := startMemcached(t, progs)
	e := startEcho(t)
	key := writeClusterKey(t)
	p := startStoreProxy(t, mc, "--store.cluster-key="+key, "--limits.tunnels-per-client=2")
	startAgent(t, p, "a1")
	signing := startLB(t, mc, "--store.cluster-key="+key)
	unsigned := startLB(t, mc)
	auth := basicAuth("a1", "noauth")

	var open []*tunnel
	defer func() {
		for _, tn := range open {
			tn.Close()
		}
	}()
	through := func(addr string, n int) {
		t.Helper()
		for range n {
			var tn *tunnel
			if err := waitFor(startTimeout, func() error {
				var err error
				if tn, err = dialConnect(addr, e.addr, auth, nil); err != nil {
					return err
				}
				if tn.resp.StatusCode != 200 {
					tn.Close()
					return fmt.Errorf("CONNECT through %s: %s", addr, tn.resp.Status)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			open = append(open, tn)
			echoOnce(t, tn, "x")
		}
	}
	// Every node here has the address 127.0.0.1, so without the
	// signature the third of these would be refused.
	through(signing.httpAddr, 3)
	// Unsigned: the proxy counts the lb's address.
	through(unsigned.httpAddr, 2)
	expect429(t, unsigned.httpAddr, e.addr, auth, "--limits.tunnels-per-client", p.process)
	// A client forging the header is counted too, and logged.
	expect429(t, p.httpAddr, e.addr, auth+"\r\nReverse-Http-Forwarded: 1", "--limits.tunnels-per-client", p.process)
	p.waitLog(t, startTimeout, 1, "forwarded request not verified: counted against its sender's --limits.tunnels-per-client", "reason", "not signed")
}
