package e2e

// The soak test: an HA cluster under a steady mix of clients for
// SOAK_DURATION, through agent restarts, a proxy restart and a memcached
// restart. `make soak` runs it for 10 minutes, CI for 2.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Resource margins: at the end, each proxy's figures must be back within
// these of their value after warm-up. They leave room for what a healthy
// proxy keeps between requests (idle pooled tunnels of absolute-form
// requests, up to 16 per agent for 90s; Go's heap headroom), and none for
// a leak of one goroutine or descriptor per request: the soak makes
// thousands.
const (
	soakGoroutineMargin = 30
	soakFDMargin        = 20
	soakRSSMargin       = 32 << 20 // bytes; and at most +50%
)

// errCorrupt marks a transfer that completed with other bytes than were
// sent: never excused, whatever happened meanwhile.
var errCorrupt = errors.New("CORRUPTED")

// soakEvent is a deliberate disruption: requests in flight between start
// and end (when every agent answered again through every proxy, plus a
// grace period) may fail; they are counted against it.
type soakEvent struct {
	name       string
	agent      string // "" = every agent is affected
	start, end time.Time
	failures   int
}

// soakFailure is one request that failed.
type soakFailure struct {
	kind, agent, entry string
	t0, t1             time.Time
	err                error
}

// soakCounter counts one kind of request.
type soakCounter struct {
	ok, failed atomic.Int64
	up, down   atomic.Int64 // bytes verified
}

// soakResources are a process's figures at one moment.
type soakResources struct {
	goroutines int
	fds        int
	rss        int64 // bytes
}

func (r soakResources) String() string {
	return fmt.Sprintf("%d goroutines, %d fds, %.1f MiB RSS", r.goroutines, r.fds, float64(r.rss)/(1<<20))
}

// soakProxy is one proxy slot of the cluster, with the baseline of the
// process that holds it now.
type soakProxy struct {
	name     string
	proc     *proxyProc
	metrics  string
	base     soakResources
	baseAt   time.Duration // since the start of the soak
	restarts int
}

type soak struct {
	t       *testing.T
	c       *haCluster
	ids     []string
	echoes  map[string]*echoServer
	start   time.Time
	agentMu sync.Mutex
	agents  map[string]*haAgent

	proxyMu sync.Mutex
	proxies []*soakProxy

	// gate: every request holds it for reading; quiesce takes it for
	// writing, so that figures are read with nothing in flight.
	gate sync.RWMutex

	counters map[string]*soakCounter
	mu       sync.Mutex
	failures []soakFailure
	corrupt  []soakFailure
	events   []*soakEvent
}

// TestSoak runs a cluster of memcached, nginx (UDP, for the agents), two
// proxies with the memcached store and a handful of agents, under a mix of
// clients entering through either proxy: new CONNECT tunnels with small
// echoes, bulk transfers of several MB each way with their sha256
// checked, and absolute-form requests. Spread through the run: agents
// restart, one proxy restarts (SIGTERM, then again on its ports) and
// memcached restarts empty. At the end no transfer that completed may have
// lost or changed a byte, no request may have failed except around a
// deliberate restart (those are counted and reported), and each proxy's
// goroutines, descriptors and RSS must be back near their value after
// warm-up (for the restarted proxy, after its own warm-up).
//
// It runs only when SOAK_DURATION is set (`make soak`, 10m; CI, 2m).
func TestSoak(t *testing.T) {
	d := os.Getenv("SOAK_DURATION")
	if d == "" {
		t.Skip("SOAK_DURATION not set (make soak)")
	}
	dur, err := time.ParseDuration(d)
	if err != nil || dur < time.Minute {
		t.Fatalf("SOAK_DURATION=%q: want a duration of at least 1m", d)
	}
	if dl, ok := t.Deadline(); ok && time.Until(dl) < dur+5*time.Minute {
		t.Fatalf("go test -timeout leaves %s; SOAK_DURATION=%s needs at least %s", time.Until(dl).Round(time.Second), dur, dur+5*time.Minute)
	}
	const agents = 4
	warmup := min(dur/8, time.Minute)

	c := startCluster(t, haConfig{proxies: 2, nginx: true, proxyFlags: []string{"--metrics.listen-address=127.0.0.1:0"}})
	s := &soak{t: t, c: c, echoes: map[string]*echoServer{}, agents: map[string]*haAgent{}, counters: map[string]*soakCounter{}}
	for _, k := range []string{"echo", "bulk", "absolute"} {
		s.counters[k] = &soakCounter{}
	}
	for i, p := range c.proxies {
		s.proxies = append(s.proxies, &soakProxy{name: "proxy" + strconv.Itoa(i+1), proc: p, metrics: metricsAddr(t, p.process)})
	}
	for i := range agents {
		id := strconv.Itoa(4711 + i)
		s.ids = append(s.ids, id)
		s.echoes[id] = startEcho(t)
		s.startAgent(t, id)
	}
	for _, id := range s.ids {
		if err := s.waitReachable(id, startTimeout); err != nil {
			t.Fatal(err)
		}
	}

	s.start = time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	var workers sync.WaitGroup
	for i, w := range []struct {
		n  int
		fn func(*rand.Rand) error
	}{
		{3, s.echoOnce},
		{2, s.bulkOnce},
		{2, s.absoluteOnce},
	} {
		for j := range w.n {
			r := rand.New(rand.NewPCG(uint64(i), uint64(j)))
			workers.Go(func() { s.work(ctx, r, w.fn) })
		}
	}
	defer func() {
		cancel()
		workers.Wait()
	}()

	// The conductor: warm up, read the baselines, then the disruptions at
	// fixed points of the run, each waited out before the next.
	at := func(frac float64) time.Time { return s.start.Add(time.Duration(frac * float64(dur))) }
	sleepUntil := func(when time.Time) { time.Sleep(time.Until(when)) }

	sleepUntil(s.start.Add(warmup))
	s.baseline(t, s.proxies...)

	sleepUntil(at(0.20))
	s.restartAgent(t, s.ids[0])

	sleepUntil(at(0.30))
	restarted := s.restartProxy(t, 1)
	time.Sleep(warmup)
	s.baseline(t, restarted)

	sleepUntil(at(0.55))
	s.restartMemcached(t)

	sleepUntil(at(0.70))
	s.restartAgent(t, s.ids[1])
	sleepUntil(at(0.80))
	s.restartAgent(t, s.ids[2])

	sleepUntil(at(1))
	cancel()
	workers.Wait()
	elapsed := time.Since(s.start)

	// Let go of the client side's idle connections before reading the
	// proxies' figures.
	end := s.settle(t)
	s.report(t, elapsed, end)
	c.alive(t)
}

// work runs fn until ctx ends, recording failures.
func (s *soak) work(ctx context.Context, r *rand.Rand, fn func(*rand.Rand) error) {
	for ctx.Err() == nil {
		s.gate.RLock()
		err := fn(r)
		s.gate.RUnlock()
		if err != nil {
			time.Sleep(100 * time.Millisecond) // a failing entry fails fast: do not spin
		} else {
			time.Sleep(time.Duration(r.IntN(20)) * time.Millisecond)
		}
	}
}

// pick returns a random agent ID and a random live entry proxy address.
func (s *soak) pick(r *rand.Rand) (id, entry string) {
	s.proxyMu.Lock()
	defer s.proxyMu.Unlock()
	return s.ids[r.IntN(len(s.ids))], s.proxies[r.IntN(len(s.proxies))].proc.httpAddr
}

// record files the outcome of one request.
func (s *soak) record(kind, id, entry string, t0 time.Time, up, down int64, err error) error {
	c := s.counters[kind]
	if err == nil {
		c.ok.Add(1)
		c.up.Add(up)
		c.down.Add(down)
		return nil
	}
	c.failed.Add(1)
	f := soakFailure{kind: kind, agent: id, entry: entry, t0: t0, t1: time.Now(), err: err}
	s.mu.Lock()
	defer s.mu.Unlock()
	if errors.Is(err, errCorrupt) {
		s.corrupt = append(s.corrupt, f)
	} else {
		s.failures = append(s.failures, f)
	}
	return err
}

// soakTimeout bounds one request: a bulk transfer of 8 MiB each way on a
// busy 2-core machine, with room.
const soakTimeout = 60 * time.Second

// echoOnce opens a CONNECT tunnel to the agent's echo server, sends a few
// KB, reads them back, half-closes and expects EOF.
func (s *soak) echoOnce(r *rand.Rand) error {
	id, entry := s.pick(r)
	t0 := time.Now()
	msg := make([]byte, 1+r.IntN(4096))
	for i := range msg {
		msg[i] = byte(r.Uint32())
	}
	err := func() error {
		tn, err := s.connect(entry, s.echoes[id].addr, id)
		if err != nil {
			return err
		}
		defer tn.Close()
		if _, err := tn.Write(msg); err != nil {
			return err
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(tn, got); err != nil {
			return fmt.Errorf("echo: %w", err)
		}
		if !bytes.Equal(got, msg) {
			return fmt.Errorf("%w: echo of %d bytes came back different", errCorrupt, len(msg))
		}
		if err := tn.Conn.(*net.TCPConn).CloseWrite(); err != nil {
			return err
		}
		if rest, err := io.ReadAll(tn); err != nil || len(rest) > 0 {
			return fmt.Errorf("after half-close: %d more bytes, %v; want EOF", len(rest), err)
		}
		return nil
	}()
	return s.record("echo", id, entry, t0, int64(len(msg)), int64(len(msg)), err)
}

// bulkOnce opens a CONNECT tunnel to the agent's HTTP origin and moves
// 2-8 MiB down and 2-8 MiB up in it, each checked byte for byte.
func (s *soak) bulkOnce(r *rand.Rand) error {
	id, entry := s.pick(r)
	t0 := time.Now()
	web := s.c.origin(id)
	down := int64(2+r.IntN(7)) << 20
	up := int64(2+r.IntN(7)) << 20
	seed := r.Uint64()
	err := func() error {
		tn, err := s.connect(entry, web.addr, id)
		if err != nil {
			return err
		}
		defer tn.Close()
		if err := soakDownload(tn.Conn, tn.br, web.addr, down, seed); err != nil {
			return err
		}
		return soakUpload(tn.Conn, tn.br, web.addr, up, seed+1)
	}()
	return s.record("bulk", id, entry, t0, up, down, err)
}

// absoluteOnce sends one absolute-form request through a proxy: a GET of
// 64 KiB-1 MiB or a POST of as much, checked byte for byte.
func (s *soak) absoluteOnce(r *rand.Rand) error {
	id, entry := s.pick(r)
	t0 := time.Now()
	web := s.c.origin(id)
	n := int64(64<<10 + r.IntN(1<<20))
	seed := r.Uint64()
	get := r.IntN(2) == 0
	hc := &http.Client{Timeout: soakTimeout, Transport: &http.Transport{
		Proxy:             http.ProxyURL(proxyURL(entry, id, "noauth")),
		DisableKeepAlives: true,
	}}
	defer hc.CloseIdleConnections()
	err := func() error {
		if get {
			resp, err := hc.Get(fmt.Sprintf("%s?n=%d&seed=%d", web.url("/bytes"), n, seed))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
				return fmt.Errorf("GET /bytes: %s %q", resp.Status, body)
			}
			return checkBody(resp, n, seed)
		}
		h := sha256.New()
		req, _ := http.NewRequest("POST", web.url("/sink"), io.TeeReader(io.LimitReader(pattern(seed), n), h))
		req.ContentLength = n
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		return checkSink(resp, n, hex.EncodeToString(h.Sum(nil)))
	}()
	var up, down int64
	if get {
		down = n
	} else {
		up = n
	}
	return s.record("absolute", id, entry, t0, up, down, err)
}

// connect opens a CONNECT tunnel as agent id through entry.
func (s *soak) connect(entry, target, id string) (*tunnel, error) {
	tn, err := dialConnect(entry, target, basicAuth(id, "noauth"), nil)
	if err != nil {
		return nil, err
	}
	tn.SetDeadline(time.Now().Add(soakTimeout))
	if tn.resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(tn.resp.Body, 512))
		tn.Close()
		return nil, fmt.Errorf("CONNECT %s: %s %q", target, tn.resp.Status, body)
	}
	return tn, nil
}

// soakDownload GETs size bytes of pattern(seed) over conn and compares
// them with what was sent, byte for byte and by the origin's sha256.
func soakDownload(conn net.Conn, br *bufio.Reader, host string, size int64, seed uint64) error {
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://%s/bytes?n=%d&seed=%d", host, size, seed), nil)
	if err := req.Write(conn); err != nil {
		return err
	}
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /bytes: %s", resp.Status)
	}
	return checkBody(resp, size, seed)
}

// checkBody reads a /bytes body to its end. A read error is a failed
// transfer; a body that ended cleanly with other bytes than pattern(seed)
// (changed, missing or extra) is corruption.
func checkBody(resp *http.Response, size int64, seed uint64) error {
	want := bufio.NewReaderSize(io.LimitReader(pattern(seed), size), 64<<10)
	h := sha256.New()
	buf := make([]byte, 64<<10)
	exp := make([]byte, 64<<10)
	var n int64
	for {
		k, err := resp.Body.Read(buf)
		if k > 0 {
			h.Write(buf[:k])
			m, _ := io.ReadFull(want, exp[:k])
			if m != k || !bytes.Equal(buf[:k], exp[:k]) {
				// Finish reading: only a body that ends cleanly is a
				// completed transfer.
				if _, rerr := io.Copy(io.Discard, resp.Body); rerr != nil {
					return fmt.Errorf("body differs from byte %d on, then: %w", n, rerr)
				}
				return fmt.Errorf("%w: %d-byte body differs from what the origin sent from byte %d on", errCorrupt, size, n)
			}
			n += int64(k)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("after %d of %d bytes: %w", n, size, err)
		}
	}
	if n != size {
		return fmt.Errorf("%w: body ended cleanly after %d of %d bytes", errCorrupt, n, size)
	}
	if got, sent := hex.EncodeToString(h.Sum(nil)), resp.Trailer.Get("X-Sha256"); got != sent {
		return fmt.Errorf("%w: received sha256 %s, the origin sent %q", errCorrupt, got, sent)
	}
	return nil
}

// soakUpload POSTs size bytes of pattern(seed) to /sink over conn.
func soakUpload(conn net.Conn, br *bufio.Reader, host string, size int64, seed uint64) error {
	h := sha256.New()
	req, _ := http.NewRequest("POST", "http://"+host+"/sink", io.TeeReader(io.LimitReader(pattern(seed), size), h))
	req.ContentLength = size
	bw := bufio.NewWriterSize(conn, 64<<10)
	if err := req.Write(bw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return checkSink(resp, size, hex.EncodeToString(h.Sum(nil)))
}

// checkSink checks /sink's answer: a failed request when the origin did
// not take the whole body, corruption when it did and got other bytes.
func checkSink(resp *http.Response, size int64, sum string) error {
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("POST /sink answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /sink: %s %q", resp.Status, bytes.TrimSpace(body))
	}
	var got sinkResult
	if err := json.Unmarshal(body, &got); err != nil {
		return fmt.Errorf("POST /sink answer %q: %w", body, err)
	}
	if got.Bytes != size || got.SHA256 != sum {
		return fmt.Errorf("%w: origin received %d bytes sha256 %s; sent %d bytes sha256 %s", errCorrupt, got.Bytes, got.SHA256, size, sum)
	}
	return nil
}

// startAgent starts agent id through nginx, allowed to reach its HTTP
// origin and its echo server, and waits until a proxy registered it.
func (s *soak) startAgent(t *testing.T, id string) {
	t.Helper()
	web, echo := s.c.origin(id), s.echoes[id]
	before := make([]int, len(s.c.proxies))
	s.proxyMu.Lock()
	proxies := slices.Clone(s.c.proxies)
	s.proxyMu.Unlock()
	for i, p := range proxies {
		before[i] = p.count("agent connected", "agent", id)
	}
	a := &haAgent{id: id, process: startProcess(t, "agent "+id, "agent",
		"--agent-client.server-address="+s.c.lb.udpAddr,
		"--agent-client.tls.file.root-ca="+filepath.Join(certDir, "ca.pem"),
		"--agent-client.host-whitelist="+web.addr+","+echo.addr,
		"--auth.noauth.agent-id="+id,
	)}
	err := waitFor(startTimeout, func() error {
		if a.exited() {
			return fmt.Errorf("agent %s exited: %v", id, a.err)
		}
		for i, p := range proxies {
			if p.count("agent connected", "agent", id) > before[i] {
				a.holder = p
				return nil
			}
		}
		return fmt.Errorf("no proxy registered agent %s", id)
	})
	if err != nil {
		t.Fatalf("%v within %s\nagent log:\n%s", err, startTimeout, a.log.String())
	}
	s.agentMu.Lock()
	s.agents[id] = a
	s.agentMu.Unlock()
}

// waitReachable waits until agent id answers through every proxy, both to
// a CONNECT (which looks the route up in the store) and to an
// absolute-form request (which may reuse a pooled tunnel instead).
func (s *soak) waitReachable(id string, timeout time.Duration) error {
	s.proxyMu.Lock()
	proxies := slices.Clone(s.proxies)
	s.proxyMu.Unlock()
	web := s.c.origin(id)
	for _, p := range proxies {
		addr := p.proc.httpAddr
		err := waitFor(timeout, func() error {
			status, body, err := haConnectGet(addr, web.addr, basicAuth(id, "noauth"), "/hello", haAttempt)
			if err != nil {
				return err
			}
			if status != http.StatusOK || body != "hello\n" {
				return fmt.Errorf("CONNECT as %s: %d %q", id, status, body)
			}
			return s.c.reach(addr, id, haAttempt)
		})
		if err != nil {
			return fmt.Errorf("agent %s through %s: %w", id, p.name, err)
		}
	}
	return nil
}

// recoveryTimeout bounds how long the cluster may take to serve every
// agent through every proxy again after a disruption.
const recoveryTimeout = 60 * time.Second

// soakGrace is added to an event's end: a request that started just
// before the cluster answered again may still have gone the old way.
const soakGrace = 2 * time.Second

// disrupt runs do as event name, waits until agents (one, or all when
// agent is "") answer through every proxy again, and records the window.
func (s *soak) disrupt(t *testing.T, name, agent string, do func()) {
	t.Helper()
	ev := &soakEvent{name: name, agent: agent, start: time.Now()}
	do()
	ids := s.ids
	if agent != "" {
		ids = []string{agent}
	}
	for _, id := range ids {
		if err := s.waitReachable(id, recoveryTimeout); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	ev.end = time.Now().Add(soakGrace)
	time.Sleep(soakGrace)
	s.mu.Lock()
	s.events = append(s.events, ev)
	s.mu.Unlock()
	t.Logf("%s at %s: all answered again after %s", name, ev.start.Sub(s.start).Round(time.Second), ev.end.Sub(ev.start).Round(time.Millisecond))
}

func (s *soak) restartAgent(t *testing.T, id string) {
	t.Helper()
	s.disrupt(t, "agent "+id+" restart", id, func() {
		s.agentMu.Lock()
		a := s.agents[id]
		s.agentMu.Unlock()
		if err := a.terminate(stopTimeout); err != nil {
			t.Error(err)
		}
		s.startAgent(t, id)
	})
}

// restartProxy stops proxy slot i with SIGTERM, starts it again on the
// same ports and returns the slot.
func (s *soak) restartProxy(t *testing.T, i int) *soakProxy {
	t.Helper()
	sp := s.proxies[i]
	s.disrupt(t, sp.name+" restart", "", func() {
		if err := sp.proc.terminate(stopTimeout); err != nil {
			t.Error(err)
		}
		p := restartProxy(t, sp.proc)
		s.proxyMu.Lock()
		s.c.proxies[slices.Index(s.c.proxies, sp.proc)] = p
		sp.proc = p
		sp.restarts++
		s.proxyMu.Unlock()
		sp.metrics = metricsAddr(t, p.process)
	})
	return sp
}

func (s *soak) restartMemcached(t *testing.T) {
	t.Helper()
	s.disrupt(t, "memcached restart", "", func() {
		s.c.mc.kill(t)
		s.c.mc.restart(t)
	})
}

// measure reads p's goroutines (its /metrics), open descriptors and RSS
// (/proc).
func measure(p *soakProxy) (soakResources, error) {
	var r soakResources
	m, err := scrape(p.metrics)
	if err != nil {
		return r, err
	}
	g, ok := m["go_goroutines"]
	if !ok {
		return r, fmt.Errorf("%s: no go_goroutines in /metrics", p.name)
	}
	r.goroutines = int(g)
	pid := p.proc.cmd.Process.Pid
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return r, err
	}
	r.fds = len(fds)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return r, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return r, fmt.Errorf("VmRSS %q: %w", rest, err)
			}
			r.rss = kb << 10
		}
	}
	return r, nil
}

// quiesced runs fn with no request in flight.
func (s *soak) quiesced(fn func()) {
	s.gate.Lock()
	defer s.gate.Unlock()
	fn()
}

// baseline reads the figures of each proxy with nothing in flight: the
// lowest of a few samples over 3s, as tunnels that just ended wind down.
func (s *soak) baseline(t *testing.T, ps ...*soakProxy) {
	t.Helper()
	s.quiesced(func() {
		for _, p := range ps {
			var best soakResources
			for i := range 6 {
				time.Sleep(500 * time.Millisecond)
				r, err := measure(p)
				if err != nil {
					t.Fatalf("%s baseline: %v", p.name, err)
				}
				if i == 0 || r.goroutines < best.goroutines {
					best.goroutines = r.goroutines
				}
				if i == 0 || r.fds < best.fds {
					best.fds = r.fds
				}
				best.rss = r.rss
			}
			p.base = best
			p.baseAt = time.Since(s.start)
			t.Logf("%s baseline at %s: %s", p.name, p.baseAt.Round(time.Second), best)
		}
	})
}

// within reports whether end is within the margins of base.
func within(base, end soakResources) bool {
	return end.goroutines <= base.goroutines+soakGoroutineMargin &&
		end.fds <= base.fds+soakFDMargin &&
		end.rss <= base.rss+max(soakRSSMargin, base.rss/2)
}

// settle waits, up to 30s after the clients stopped, until every proxy's
// figures are back within the margins, and returns the last figures.
func (s *soak) settle(t *testing.T) []soakResources {
	t.Helper()
	end := make([]soakResources, len(s.proxies))
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok := true
		for i, p := range s.proxies {
			r, err := measure(p)
			if err != nil {
				t.Fatalf("%s: %v", p.name, err)
			}
			end[i] = r
			ok = ok && within(p.base, r)
		}
		if ok || time.Now().After(deadline) {
			return end
		}
		time.Sleep(time.Second)
	}
}

// report prints the figures and fails the test for corruption, failures
// outside the deliberate restarts, and proxies that did not come back to
// their baseline.
func (s *soak) report(t *testing.T, elapsed time.Duration, end []soakResources) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var unexcused []soakFailure
	for _, f := range s.failures {
		var hit *soakEvent
		for _, ev := range s.events {
			if (ev.agent == "" || ev.agent == f.agent) && !f.t0.After(ev.end) && !f.t1.Before(ev.start) {
				hit = ev
				break
			}
		}
		if hit == nil {
			unexcused = append(unexcused, f)
			continue
		}
		hit.failures++
	}

	var b strings.Builder
	fmt.Fprintf(&b, "soak: %s, %d agents, 2 proxies behind nginx (UDP), memcached\n\n", elapsed.Round(time.Second), len(s.ids))
	fmt.Fprintf(&b, "%-10s %9s %9s %11s %11s\n", "requests", "ok", "failed", "MiB up", "MiB down")
	var okAll, failAll int64
	var upAll, downAll int64
	for _, k := range []string{"echo", "bulk", "absolute"} {
		c := s.counters[k]
		fmt.Fprintf(&b, "%-10s %9d %9d %11.1f %11.1f\n", k, c.ok.Load(), c.failed.Load(), float64(c.up.Load())/(1<<20), float64(c.down.Load())/(1<<20))
		okAll += c.ok.Load()
		failAll += c.failed.Load()
		upAll += c.up.Load()
		downAll += c.down.Load()
	}
	fmt.Fprintf(&b, "%-10s %9d %9d %11.1f %11.1f\n\n", "all", okAll, failAll, float64(upAll)/(1<<20), float64(downAll)/(1<<20))
	fmt.Fprintf(&b, "%-28s %8s %8s %s\n", "disruption", "at", "window", "requests failed in it")
	for _, ev := range s.events {
		fmt.Fprintf(&b, "%-28s %8s %8s %d\n", ev.name, ev.start.Sub(s.start).Round(time.Second), ev.end.Sub(ev.start).Round(100*time.Millisecond), ev.failures)
	}
	fmt.Fprintf(&b, "%-28s %8s %8s %d\n", "outside any disruption", "", "", len(unexcused))
	fmt.Fprintf(&b, "%-28s %8s %8s %d\n\n", "corrupted (never allowed)", "", "", len(s.corrupt))
	fmt.Fprintf(&b, "%-8s %-9s %-14s %-14s %-20s\n", "process", "baseline", "goroutines", "open fds", "RSS MiB")
	for i, p := range s.proxies {
		name := p.name
		if p.restarts > 0 {
			name += "*"
		}
		fmt.Fprintf(&b, "%-8s %-9s %-14s %-14s %-20s\n", name, p.baseAt.Round(time.Second),
			fmt.Sprintf("%d → %d", p.base.goroutines, end[i].goroutines),
			fmt.Sprintf("%d → %d", p.base.fds, end[i].fds),
			fmt.Sprintf("%.1f → %.1f", float64(p.base.rss)/(1<<20), float64(end[i].rss)/(1<<20)))
	}
	fmt.Fprintf(&b, "(* restarted: its baseline is after its own warm-up; margins: +%d goroutines, +%d fds, RSS +max(%d MiB, 50%%))", soakGoroutineMargin, soakFDMargin, soakRSSMargin>>20)
	t.Log("\n" + b.String())

	for i, f := range s.corrupt {
		if i == 10 {
			t.Errorf("... %d more corrupted transfers", len(s.corrupt)-10)
			break
		}
		t.Errorf("%s as %s via %s at %s: %v", f.kind, f.agent, f.entry, f.t0.Sub(s.start).Round(time.Millisecond), f.err)
	}
	for i, f := range unexcused {
		if i == 10 {
			last := unexcused[len(unexcused)-1]
			t.Errorf("... %d more failures outside any disruption, the last at %s: %v", len(unexcused)-10, last.t0.Sub(s.start).Round(time.Millisecond), last.err)
			break
		}
		t.Errorf("failed outside any disruption: %s as %s via %s at %s (took %s): %v", f.kind, f.agent, f.entry, f.t0.Sub(s.start).Round(time.Millisecond), f.t1.Sub(f.t0).Round(time.Millisecond), f.err)
	}
	for i, p := range s.proxies {
		if !within(p.base, end[i]) {
			t.Errorf("%s did not come back to its baseline within 30s of the clients stopping: %s, baseline %s", p.name, end[i], p.base)
		}
	}
	for _, k := range []string{"echo", "bulk", "absolute"} {
		if s.counters[k].ok.Load() == 0 {
			t.Errorf("no %s request succeeded", k)
		}
	}
}
