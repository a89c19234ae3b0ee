package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// replacedMsg is what an agent logs when its proxy closed its connection
// with the "replaced" application error (0x101).
const replacedMsg = "proxy closed this connection: another agent connected with the same ID; waiting before reconnecting"

// TestHAClients checks that clients reach every agent whichever proxy holds
// it: through nginx in front of the lb nodes, through each lb node, and
// through each proxy (which forwards to the one holding the agent), with
// curl and Go's client, CONNECT and absolute-form.
func TestHAClients(t *testing.T) {
	t.Parallel()
	c := startCluster(t, haConfig{
		proxies: 2, lbs: 2, nginx: true,
		lbFlags: []string{"--http-proxy.host-whitelist=127.0.0.1"},
	})
	ids := []string{"4711", "4712", "4713"}
	for _, id := range ids {
		c.startAgent(t, id, "")
	}
	// Each proxy must hold an agent, so that each forwards to the other.
	held := map[*proxyProc][]string{}
	for _, id := range ids {
		p := c.holder(t, id)
		held[p] = append(held[p], id)
	}
	for i, p := range c.proxies {
		if len(held[p]) == 0 {
			id := "4720" + strconv.Itoa(i)
			c.startAgent(t, id, p.agentAddr)
			held[p] = append(held[p], id)
			ids = append(ids, id)
		}
	}
	for i, p := range c.proxies {
		t.Logf("proxy%d (%s) holds %v", i+1, p.httpAddr, held[p])
	}

	for _, e := range c.entries() {
		name, addr := e[0], e[1]
		t.Run(name, func(t *testing.T) {
			for _, id := range ids {
				web := c.origin(id)
				proxy := "http://" + id + ":noauth@" + addr
				status, body, err := haGet(addr, id, "noauth", web.url("/hello"), clientTimeout)
				if err != nil || status != 200 || body != "hello\n" {
					t.Errorf("Go absolute-form as %s: %d %q %v", id, status, body, err)
				}
				status, body, err = haConnectGet(addr, web.addr, basicAuth(id, "noauth"), "/hello", clientTimeout)
				if err != nil || status != 200 || body != "hello\n" {
					t.Errorf("Go CONNECT as %s: %d %q %v", id, status, body, err)
				}
				out, err := curl(t, "-x", proxy, "--write-out", "connect=%{http_connect} status=%{http_code}", web.url("/hello"))
				if want := "hello\nconnect=000 status=200"; err != nil || out != want {
					t.Errorf("curl -x as %s: %q %v, want %q", id, out, err, want)
				}
				out, err = curl(t, "-p", "-x", proxy, "--write-out", "connect=%{http_connect} status=%{http_code}", web.url("/hello"))
				if want := "hello\nconnect=200 status=200"; err != nil || out != want {
					t.Errorf("curl -p -x as %s: %q %v, want %q", id, out, err, want)
				}
			}
			// The request went to the agent named by the credentials:
			// 4711 may not reach 4712's origin.
			status, body, err := haGet(addr, "4711", "noauth", c.origin("4712").url("/hello"), clientTimeout)
			if err != nil || status != 403 || !strings.Contains(body, "agent's allowlist") {
				t.Errorf("as 4711 to 4712's origin: %d %q %v, want 403 from 4711's allowlist", status, body, err)
			}
			// The origin never sees the client's credentials.
			status, body, err = haGet(addr, "4712", "noauth", c.origin("4712").url("/echo-headers"), clientTimeout)
			if err != nil || status != 200 || strings.Contains(strings.ToLower(body), "proxy-authorization") || strings.Contains(body, "noauth") {
				t.Errorf("as 4712 to /echo-headers: %d %s %v (want 200 without Proxy-Authorization)", status, body, err)
			}
		})
	}

	t.Run("refusals", func(t *testing.T) {
		web := c.origin("4711")
		entries := []string{c.lb.tcpAddr, c.lbs[0].httpAddr, c.lbs[1].httpAddr}
		for _, addr := range entries {
			cases := []struct {
				name, auth, target string
				want               int
			}{
				{"no credentials", "", web.addr, 407},
				{"agent not connected", basicAuth("4799", "noauth"), web.addr, 503},
				{"lb allowlist", basicAuth("4711", "noauth"), "localhost:" + strconv.Itoa(web.port), 403},
			}
			for _, tc := range cases {
				for _, method := range []string{"CONNECT", "GET"} {
					raw := connectHeader(tc.target, tc.auth)
					if method == "GET" {
						raw = "GET http://" + tc.target + "/hello HTTP/1.1\r\nHost: " + tc.target + "\r\n"
						if tc.auth != "" {
							raw += "Proxy-Authorization: " + tc.auth + "\r\n"
						}
						raw += "\r\n"
					}
					resp, body, err := rawRequest(addr, method, []byte(raw))
					if err != nil {
						t.Errorf("%s %s via %s: %v", tc.name, method, addr, err)
						continue
					}
					checkRefusal(t, resp, body, tc.want)
					if tc.want == 403 && strings.Contains(string(body), "agent's allowlist") {
						t.Errorf("%s %s via %s: %q: the agent refused, not the lb's --http-proxy.host-whitelist", tc.name, method, addr, body)
					}
				}
			}
		}
	})
	c.alive(t)
}

// TestHAJWT runs the cluster with --auth.type=jwt: client tokens work
// through nginx, the lb nodes and the proxies (forwarded with the
// client's credentials); bad credentials get 407 at the lb.
func TestHAJWT(t *testing.T) {
	t.Parallel()
	haNeed(t)
	dir := t.TempDir()
	priv := filepath.Join(dir, "priv.pem")
	pub := filepath.Join(dir, "pub.pem")
	otherPriv := filepath.Join(dir, "other-priv.pem")
	runTool(t, "auth", "key", "private", "-o", priv)
	runTool(t, "auth", "key", "public", "-i", priv, "-o", pub)
	runTool(t, "auth", "key", "private", "-o", otherPriv)
	token := func(id, role, audience, key string) (file, tok string) {
		file = filepath.Join(dir, strings.Join([]string{id, role, audience, filepath.Base(key)}, "-")+".b64")
		args := []string{"auth", "jwt", "token", "--agent-id", id, "--role", role, "--duration", "1h", "-i", key, "-o", file}
		if audience != "" {
			args = append(args, "--audience", audience)
		}
		runTool(t, args...)
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		return file, strings.TrimSpace(string(b))
	}
	ids := []string{"4711", "4712", "4799"} // 4799 never connects
	agentFile := map[string]string{}
	agentTok := map[string]string{}
	clientTok := map[string]string{}
	for _, id := range ids {
		agentFile[id], agentTok[id] = token(id, "agent", "e2e", priv)
		_, clientTok[id] = token(id, "client", "e2e", priv)
	}
	_, wrongAud := token("4711", "client", "not-e2e", priv)
	_, otherKey := token("4711", "client", "e2e", otherPriv)

	c := startCluster(t, haConfig{
		proxies: 2, lbs: 2, nginx: true,
		auth: &haAuth{
			flags: []string{"--auth.type=jwt", "--auth.jwt.public-key=" + pub, "--auth.jwt.audience=e2e"},
			agent: func(id string) []string {
				return []string{"--auth.type=jwt", "--auth.jwt.token=file:" + agentFile[id]}
			},
			password: func(id string) string { return clientTok[id] },
		},
	})
	// 4711 through nginx, 4712 straight to the other proxy: each proxy
	// holds one, and forwards to the other with the client's token.
	a := c.startAgent(t, "4711", "")
	other := c.proxies[0]
	if other == a.holder {
		other = c.proxies[1]
	}
	c.startAgent(t, "4712", other.agentAddr)

	for _, e := range c.entries() {
		name, addr := e[0], e[1]
		t.Run(name, func(t *testing.T) {
			for _, id := range []string{"4711", "4712"} {
				if err := c.reach(addr, id, clientTimeout); err != nil {
					t.Errorf("absolute-form: %v", err)
				}
				web := c.origin(id)
				status, body, err := haConnectGet(addr, web.addr, basicAuth(id, clientTok[id]), "/hello", clientTimeout)
				if err != nil || status != 200 || body != "hello\n" {
					t.Errorf("CONNECT as %s: %d %q %v", id, status, body, err)
				}
			}
		})
	}

	t.Run("curl", func(t *testing.T) {
		web := c.origin("4711")
		for _, args := range [][]string{{}, {"--proxytunnel"}} {
			out, err := curl(t, append(args, "--proxy", "http://"+c.lb.tcpAddr, "--proxy-user", "4711:"+clientTok["4711"], web.url("/hello"))...)
			if err != nil || out != "hello\n" {
				t.Errorf("curl %v through nginx: %q %v", args, out, err)
			}
		}
		// The token does not reach the origin.
		status, body, err := haGet(c.lb.tcpAddr, "4711", clientTok["4711"], web.url("/echo-headers"), clientTimeout)
		if err != nil || status != 200 || strings.Contains(body, clientTok["4711"]) || strings.Contains(strings.ToLower(body), "proxy-authorization") {
			t.Errorf("/echo-headers through nginx: %d %s %v (want 200 without the token)", status, body, err)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		web := c.origin("4711")
		cases := []struct {
			name, user, password string
			want                 int
		}{
			{"noauth password", "4711", "noauth", 407},
			{"token for another agent", "4711", clientTok["4712"], 407},
			{"agent-role token", "4711", agentTok["4711"], 407},
			{"wrong audience", "4711", wrongAud, 407},
			{"signed by another key", "4711", otherKey, 407},
			{"absent agent", "4799", clientTok["4799"], 503},
		}
		for _, addr := range []string{c.lb.tcpAddr, c.lbs[0].httpAddr, c.lbs[1].httpAddr} {
			for _, tc := range cases {
				auth := basicAuth(tc.user, tc.password)
				for _, method := range []string{"CONNECT", "GET"} {
					raw := connectHeader(web.addr, auth)
					if method == "GET" {
						raw = "GET " + web.url("/hello") + " HTTP/1.1\r\nHost: " + web.addr + "\r\nProxy-Authorization: " + auth + "\r\n\r\n"
					}
					resp, body, err := rawRequest(addr, method, []byte(raw))
					if err != nil {
						t.Errorf("%s %s via %s: %v", tc.name, method, addr, err)
						continue
					}
					t.Run(tc.name, func(t *testing.T) { checkRefusal(t, resp, body, tc.want) })
				}
			}
		}
	})
	c.alive(t)
}

// failover is what one failover measured, each from the signal.
type failover struct {
	id        string
	reconnect time.Duration // until another proxy logged `agent connected`
	route     time.Duration // until the store named that proxy
	failures  int           // client requests through nginx that failed
	outage    time.Duration // from the first failed request to the next success after the last
	back      time.Duration // until that success (0 without failures)
	firstErr  error         // what the first failed request got
}

// measureFailover polls, for each agent in ids (all held by victim), until
// another live proxy has it, the store names that proxy and a client
// through nginx reaches it, all timed from start, for at most bound.
func measureFailover(t *testing.T, c *haCluster, victim *proxyProc, ids []string, start time.Time, bound time.Duration) []failover {
	t.Helper()
	others := map[*proxyProc]map[string]int{} // `agent connected` counts before
	for _, p := range c.proxies {
		if p != victim && !p.exited() {
			others[p] = map[string]int{}
			for _, id := range ids {
				others[p][id] = p.count("agent connected", "agent", id)
			}
		}
	}
	out := make([]failover, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		out[i].id = id
		// A client asks through nginx all along, until it got an answer
		// after the agent moved.
		wg.Go(func() {
			var firstFail time.Time
			var lastErr error
			for {
				t0 := time.Now()
				err := c.reach(c.lb.tcpAddr, id, haAttempt)
				if err != nil {
					out[i].failures++
					lastErr = err
					if firstFail.IsZero() {
						firstFail = t0
						out[i].firstErr = err
					}
				} else if r, _ := c.mc.route(id); r != "" && r != victim.httpAddr {
					if out[i].failures > 0 {
						out[i].outage = time.Since(firstFail)
						out[i].back = time.Since(start)
					}
					return
				}
				if time.Since(start) > bound {
					t.Errorf("agent %s: no answer through nginx after it moved, %s after the signal: %d requests failed, the last with %v", id, time.Since(start).Round(time.Millisecond), out[i].failures, lastErr)
					return
				}
				time.Sleep(pollInterval)
			}
		})
		wg.Go(func() {
			err := waitFor(bound-time.Since(start), func() error {
				r, err := c.mc.route(id)
				if err != nil {
					return err
				}
				if p := c.proxyAt(r); p == nil || others[p] == nil {
					return fmt.Errorf("route %q names no surviving proxy", r)
				}
				return nil
			})
			if err != nil {
				t.Errorf("agent %s: %s after the signal: %v", id, time.Since(start).Round(time.Millisecond), err)
				return
			}
			out[i].route = time.Since(start)
		})
	}
	wg.Wait()
	for i, id := range ids {
		for p, before := range others {
			lines := p.lines("agent connected", "agent", id)
			if len(lines) <= before[id] {
				continue
			}
			if at, err := time.Parse(time.RFC3339Nano, lines[before[id]]["time"]); err == nil {
				if d := at.Sub(start); out[i].reconnect == 0 || d < out[i].reconnect {
					out[i].reconnect = d
				}
			}
		}
		if out[i].reconnect == 0 {
			t.Errorf("no surviving proxy logged `agent connected` for %s", id)
		}
	}
	return out
}

func logFailover(t *testing.T, how string, fs []failover) {
	t.Helper()
	var back, outage, moved time.Duration
	for _, f := range fs {
		t.Logf("%s: agent %s reconnected to another proxy after %s, route after %s; clients through nginx: %d failed requests, outage %s, answered again after %s",
			how, f.id, f.reconnect.Round(time.Millisecond), f.route.Round(time.Millisecond), f.failures, f.outage.Round(time.Millisecond), f.back.Round(time.Millisecond))
		back = max(back, f.back)
		outage = max(outage, f.outage)
		moved = max(moved, f.reconnect, f.route)
		if f.firstErr != nil {
			t.Logf("%s: agent %s: the first failed request got: %v", how, f.id, f.firstErr)
		}
	}
	t.Logf("%s: every affected agent moved after %s; longest client outage %s, all answered again %s after the signal (target: 10s)", how, moved.Round(time.Millisecond), outage.Round(time.Millisecond), back.Round(time.Millisecond))
}

// TestHAFailover kills the proxy holding idle agents with SIGKILL, then
// stops the next one holding them with SIGTERM, in a cluster of three
// proxies, and measures how long until clients through nginx reach the
// affected agents again. Agents run with default settings. At the end both
// come back on their ports and everything answers everywhere.
func TestHAFailover(t *testing.T) {
	t.Parallel()
	const bound = 30 * time.Second
	c := startCluster(t, haConfig{proxies: 3, lbs: 2, nginx: true})
	ids := []string{"4711", "4712", "4713"}
	for _, id := range ids {
		c.startAgent(t, id, "")
	}
	c.mustReachAll(t, ids...)

	// held returns the agents victim holds.
	held := func(t *testing.T, victim *proxyProc) []string {
		var on []string
		for _, id := range ids {
			if c.holder(t, id) == victim {
				on = append(on, id)
			}
		}
		t.Logf("victim %s holds %v", victim.httpAddr, on)
		return on
	}
	// settled checks, after the victim is gone, that the store names a
	// surviving proxy: the victim removed only routes that were its own.
	settled := func(t *testing.T, victim *proxyProc, on []string) {
		t.Helper()
		for _, id := range on {
			r, err := c.mc.route(id)
			if p := c.proxyAt(r); err != nil || p == nil || p == victim || p.exited() {
				t.Errorf("after the victim exited, route of %s is %q (%v), want a surviving proxy", id, r, err)
			}
		}
	}
	var victims []*proxyProc

	t.Run("SIGKILL", func(t *testing.T) {
		victim := c.holder(t, "4711")
		on := held(t, victim)
		// Idle agents, as most are: nothing in flight, only keep-alives
		// (every 2s). An agent with packets in flight fails over faster:
		// the next proxy answers them with a stateless reset, which it
		// does not for packets as small as a keep-alive.
		time.Sleep(3 * time.Second)
		start := time.Now()
		victim.kill(t)
		victims = append(victims, victim)
		fs := measureFailover(t, c, victim, on, start, bound)
		settled(t, victim, on)
		logFailover(t, "SIGKILL", fs)
	})

	t.Run("SIGTERM", func(t *testing.T) {
		victim := c.holder(t, "4711")
		if victim == nil || victim.exited() {
			t.Fatal("no live proxy holds 4711")
		}
		on := held(t, victim)
		start := time.Now()
		stopped := make(chan error, 1)
		go func() { stopped <- victim.terminate(stopTimeout) }()
		victims = append(victims, victim)
		fs := measureFailover(t, c, victim, on, start, bound)
		if err := <-stopped; err != nil {
			t.Error(err)
		}
		t.Logf("SIGTERM: the victim exited after %s", lastLogLine(victim, start).Round(time.Millisecond))
		settled(t, victim, on)
		logFailover(t, "SIGTERM", fs)
	})

	// Both come back on their ports behind nginx; the restarted processes
	// belong to the whole test.
	for _, v := range victims {
		c.proxies[slices.Index(c.proxies, v)] = restartProxy(t, v)
	}
	c.mustReachAll(t, ids...)
	c.alive(t)
}

// lastLogLine is how long after start p logged its last line.
func lastLogLine(p *proxyProc, start time.Time) time.Duration {
	lines := strings.Split(strings.TrimSpace(p.log.String()), "\n")
	if at, err := time.Parse(time.RFC3339Nano, parseLogLine(lines[len(lines)-1])["time"]); err == nil {
		return at.Sub(start)
	}
	return 0
}

// TestHARouteExpiry checks the routes' leases: renewed while the agent
// stays, gone within the TTL after the proxy holding them is killed (no
// other proxy can claim them: each agent talks to its proxy directly).
func TestHARouteExpiry(t *testing.T) {
	t.Parallel()
	c := startCluster(t, haConfig{})
	def := startStoreProxy(t, c.mc)                    // --store.ttl default (15s)
	fast := startStoreProxy(t, c.mc, "--store.ttl=3s") // the shortest allowed; renews every 1s
	c.proxies = []*proxyProc{def, fast}
	c.startAgent(t, "4711", def.agentAddr)
	c.startAgent(t, "4712", fast.agentAddr)

	for _, tc := range []struct {
		id  string
		ttl int
	}{{"4711", 15}, {"4712", 3}} {
		left, ok, err := c.mc.ttl(routeKey(tc.id))
		if err != nil || !ok || left <= 0 || left > tc.ttl {
			t.Errorf("route of %s: %ds to live (found %v, %v), want 1..%d", tc.id, left, ok, err, tc.ttl)
		}
	}

	// Renewed: 4712's 3s lease outlives three TTLs.
	for start := time.Now(); time.Since(start) < 9*time.Second; time.Sleep(100 * time.Millisecond) {
		if r, err := c.mc.route("4712"); err != nil || r != fast.httpAddr {
			t.Fatalf("%s after the agent connected: route of 4712 is %q (%v), want %q: not renewed", time.Since(start).Round(time.Millisecond), r, err, fast.httpAddr)
		}
	}
	if r, _ := c.mc.route("4711"); r != def.httpAddr {
		t.Fatalf("route of 4711 is %q, want %q", r, def.httpAddr)
	}

	start := time.Now()
	def.kill(t)
	fast.kill(t)
	gone := map[string]time.Duration{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, id := range []string{"4711", "4712"} {
		wg.Go(func() {
			err := waitFor(30*time.Second, func() error {
				v, ok, err := c.mc.get(routeKey(id))
				if err != nil {
					return err
				}
				if ok {
					return fmt.Errorf("route of %s still %q", id, v)
				}
				return nil
			})
			if err != nil {
				t.Errorf("%s after SIGKILL of its proxy: %v", time.Since(start).Round(time.Millisecond), err)
				return
			}
			mu.Lock()
			gone[id] = time.Since(start)
			mu.Unlock()
		})
	}
	wg.Wait()
	t.Logf("route expiry after SIGKILL: default --store.ttl (15s): %s; --store.ttl=3s: %s", gone["4711"].Round(time.Millisecond), gone["4712"].Round(time.Millisecond))
	if d, ok := gone["4712"]; ok && d > 5*time.Second {
		t.Errorf("route with --store.ttl=3s expired %s after SIGKILL, want within ~3s", d.Round(time.Millisecond))
	}
}

// TestHARouteRemoval checks that a route goes at once, not after its
// TTL, when its agent disconnects and when its proxy shuts down
// gracefully.
func TestHARouteRemoval(t *testing.T) {
	t.Parallel()
	c := startCluster(t, haConfig{proxies: 2})
	p1, p2 := c.proxies[0], c.proxies[1]
	a := c.startAgent(t, "4711", p1.agentAddr)
	c.startAgent(t, "4712", p2.agentAddr)

	gone := func(id string, start time.Time) time.Duration {
		t.Helper()
		err := waitFor(5*time.Second, func() error {
			if r, err := c.mc.route(id); err != nil || r != "" {
				return fmt.Errorf("route of %s is still %q (%v)", id, r, err)
			}
			return nil
		})
		if err != nil {
			t.Errorf("%s after: %v (the TTL is 15s: it was not removed)", time.Since(start).Round(time.Millisecond), err)
		}
		return time.Since(start)
	}
	start := time.Now()
	if err := a.terminate(stopTimeout); err != nil {
		t.Error(err)
	}
	agentGone := gone("4711", start)
	start = time.Now()
	if err := p2.terminate(stopTimeout); err != nil {
		t.Error(err)
	}
	proxyGone := gone("4712", start)
	t.Logf("route removed %s after SIGTERM to its agent, %s after SIGTERM to its proxy", agentGone.Round(time.Millisecond), proxyGone.Round(time.Millisecond))
}

// TestHADuplicateAcrossProxies connects two agents with the same ID to two
// proxies directly: one connection wins, the other is closed as replaced
// and stays away, the store names the winner's proxy, and clients reach
// the winner through either proxy and the lb.
func TestHADuplicateAcrossProxies(t *testing.T) {
	t.Parallel()
	c := startCluster(t, haConfig{proxies: 2, lbs: 1})
	p1, p2 := c.proxies[0], c.proxies[1]
	// A short backoff: a replaced agent that ignored the replaced-wait
	// would be back within a second.
	a := c.startAgent(t, "4711", p1.agentAddr, "--agent-client.backoff-max=500ms")
	b := c.startAgentNoWait(t, "4711", p2.agentAddr, "--agent-client.backoff-max=500ms")
	bConnected := time.Now()

	var winner, loser *haAgent
	err := waitFor(30*time.Second, func() error {
		switch na, nb := a.count(replacedMsg), b.count(replacedMsg); {
		case na > 0 && nb > 0:
			return nil
		case na > 0:
			winner, loser = b, a
		case nb > 0:
			winner, loser = a, b
		default:
			return fmt.Errorf("neither agent was told it was replaced")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s after the second agent connected: %v", time.Since(bConnected).Round(time.Millisecond), err)
	}
	if winner == nil {
		t.Fatal("both agents were told they were replaced")
	}
	t.Logf("the agent on %s won after %s", winner.holder.httpAddr, time.Since(bConnected).Round(time.Millisecond))
	if l := loser.lines(replacedMsg)[0]; l["retry_in"] != "30s" {
		t.Errorf("replaced agent: retry_in=%q, want 30s", l["retry_in"])
	}
	c.mc.waitRoute(t, 10*time.Second, "4711", winner.holder.httpAddr)
	loser.holder.waitLog(t, 10*time.Second, 1, "agent reconnected to another proxy: closing the stale connection here", "agent", "4711")

	for _, e := range c.entries() {
		if _, err := c.waitReach(e[1], "4711", 10*time.Second); err != nil {
			t.Errorf("through %s: %v", e[0], err)
		}
	}
	// A tunnel goes through the winner, whichever proxy the client uses.
	web := c.origin("4711")
	for _, p := range []*proxyProc{p1, p2} {
		wn, ln := winner.count("tunnel closed", "destination", web.addr), loser.count("tunnel closed")
		status, body, err := haConnectGet(p.httpAddr, web.addr, basicAuth("4711", "noauth"), "/hello", clientTimeout)
		if err != nil || status != 200 || body != "hello\n" {
			t.Errorf("CONNECT through %s: %d %q %v", p.httpAddr, status, body, err)
			continue
		}
		winner.waitLog(t, 10*time.Second, wn+1, "tunnel closed", "destination", web.addr)
		if n := loser.count("tunnel closed"); n != ln {
			t.Errorf("the replaced agent served a tunnel through %s", p.httpAddr)
		}
	}

	// Stable: the loser waits 30s, the route stays the winner's.
	for time.Since(bConnected) < 8*time.Second {
		if r, err := c.mc.route("4711"); err != nil || r != winner.holder.httpAddr {
			t.Fatalf("%s after the second agent connected: route %q (%v), want %q", time.Since(bConnected).Round(time.Millisecond), r, err, winner.holder.httpAddr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := loser.count(replacedMsg); n != 1 {
		t.Errorf("the replaced agent was replaced %d times, want 1 (it must wait 30s)", n)
	}
	if n := winner.count(replacedMsg); n != 0 {
		t.Errorf("the winner was replaced %d times", n)
	}
	c.alive(t)
}

// TestHAMemcachedOutage kills memcached and starts an empty one on the
// same port: meanwhile the lb nodes answer 503 naming the store and the
// proxies serve their own agents; afterwards the proxies register their
// routes again within one renewal period (ttl/3) and clients through
// nginx get through again.
func TestHAMemcachedOutage(t *testing.T) {
	t.Parallel()
	const renewal = 15 * time.Second / 3 // default --store.ttl / 3
	c := startCluster(t, haConfig{proxies: 2, lbs: 2, nginx: true})
	ids := []string{"4711", "4712", "4713"}
	holders := map[string]*proxyProc{}
	for _, id := range ids {
		holders[id] = c.startAgent(t, id, "").holder
	}
	// CONNECT only: an lb keeps the tunnels of absolute-form requests for
	// reuse, and a pooled one would answer during the outage below.
	for _, id := range ids {
		web := c.origin(id)
		if status, body, err := haConnectGet(c.lb.tcpAddr, web.addr, basicAuth(id, "noauth"), "/hello", clientTimeout); err != nil || status != 200 || body != "hello\n" {
			t.Fatalf("CONNECT as %s through nginx: %d %q %v", id, status, body, err)
		}
	}

	c.mc.kill(t)
	down := time.Now()
	for _, addr := range []string{c.lb.tcpAddr, c.lbs[0].httpAddr, c.lbs[1].httpAddr} {
		web := c.origin("4711")
		for _, method := range []string{"CONNECT", "GET"} {
			raw := connectHeader(web.addr, basicAuth("4711", "noauth"))
			if method == "GET" {
				raw = "GET " + web.url("/hello") + " HTTP/1.1\r\nHost: " + web.addr + "\r\nProxy-Authorization: " + basicAuth("4711", "noauth") + "\r\n\r\n"
			}
			resp, body, err := rawRequest(addr, method, []byte(raw))
			if err != nil {
				t.Errorf("%s via %s with memcached down: %v", method, addr, err)
				continue
			}
			checkRefusal(t, resp, body, 503)
			if b := strings.ToLower(string(body)); !strings.Contains(b, "store") && !strings.Contains(b, "memcached") {
				t.Errorf("%s via %s with memcached down: %q does not mention the store", method, addr, body)
			}
		}
	}
	// A proxy and an lb start while memcached is down, and an agent
	// connects to that proxy.
	p3 := startStoreProxy(t, c.mc)
	c.proxies = append(c.proxies, p3)
	lb3 := startLB(t, c.mc)
	c.startAgentNoWait(t, "4714", p3.agentAddr)
	ids = append(ids, "4714")
	holders["4714"] = p3
	// Longer than one renewal period: the proxies fail to renew and keep
	// serving their own agents all the same.
	for time.Since(down) < renewal+time.Second {
		for _, id := range ids {
			if err := c.reach(holders[id].httpAddr, id, clientTimeout); err != nil {
				t.Fatalf("%s into the memcached outage, directly through its proxy: %v", time.Since(down).Round(time.Millisecond), err)
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	c.alive(t)

	c.mc.restart(t)
	up := time.Now()
	var worst time.Duration
	for _, id := range ids {
		err := waitFor(renewal+5*time.Second-time.Since(up), func() error {
			if r, err := c.mc.route(id); err != nil || r != holders[id].httpAddr {
				return fmt.Errorf("route of %s is %q (%v), want %q", id, r, err, holders[id].httpAddr)
			}
			return nil
		})
		if err != nil {
			t.Errorf("%s after memcached came back: %v", time.Since(up).Round(time.Millisecond), err)
		}
	}
	worst = time.Since(up)
	t.Logf("memcached down for %s; routes back %s after it restarted (renewal period %s)", up.Sub(down).Round(time.Millisecond), worst.Round(time.Millisecond), renewal)
	// Each proxy holding agents said once that the store was gone, and
	// that it is back.
	const downMsg = "route store unavailable; agents connected here are still served, routes will be renewed when it is back"
	for _, p := range holders {
		if n := p.count(downMsg); n != 1 {
			t.Errorf("proxy %s logged %q %d times, want once", p.httpAddr, downMsg, n)
		}
		p.waitLog(t, 5*time.Second, 1, "route store available again")
	}
	for _, id := range ids {
		for _, addr := range []string{c.lb.tcpAddr, lb3.httpAddr} {
			if _, err := c.waitReach(addr, id, 10*time.Second); err != nil {
				t.Errorf("after memcached came back: %v", err)
			}
		}
	}
	c.alive(t)
}

// TestHAStaleRoutes puts routes in memcached that no proxy stands behind
// and checks that every node answers them at once with a one-line 503:
// a proxy that is gone, a proxy that does not hold the agent (forwarding
// takes one hop, never loops), garbage, and a route that names an lb node
// itself, as a proxy whose --store.http-proxy-address wrongly names the
// client-facing address would write.
func TestHAStaleRoutes(t *testing.T) {
	t.Parallel()
	c := startCluster(t, haConfig{proxies: 2, lbs: 1})
	p1, p2, lb := c.proxies[0], c.proxies[1], c.lbs[0]
	// A forwarding loop ends when a node runs out of file descriptors:
	// let that come soon, not after 65,000 connections that slow down
	// every other test.
	if err := limitFiles(lb.cmd.Process.Pid, 1024); err != nil {
		t.Fatal(err)
	}
	c.startAgent(t, "4711", p1.agentAddr)
	web := c.origin("4711")
	routes := []struct{ id, addr, why string }{
		{"4796", net.JoinHostPort("127.0.0.1", strconv.Itoa(closedPort(t))), "a proxy that is gone"},
		{"4797", p1.httpAddr, "a proxy that does not hold the agent"},
		{"4798", "not an address", "garbage"},
		{"4799", lb.httpAddr, "the lb itself"},
	}
	for _, r := range routes {
		if err := c.mc.set(routeKey(r.id), r.addr, 60); err != nil {
			t.Fatal(err)
		}
	}
	const quick = 5 * time.Second
	for _, r := range routes {
		for _, e := range c.entries() {
			for _, method := range []string{"CONNECT", "GET"} {
				raw := connectHeader(web.addr, basicAuth(r.id, "noauth"))
				if method == "GET" {
					raw = "GET " + web.url("/hello") + " HTTP/1.1\r\nHost: " + web.addr + "\r\nProxy-Authorization: " + basicAuth(r.id, "noauth") + "\r\n\r\n"
				}
				start := time.Now()
				resp, body, err := rawRequest(e[1], method, []byte(raw))
				took := time.Since(start)
				if err != nil {
					t.Errorf("%s (route to %s) %s via %s: %v after %s", r.id, r.why, method, e[0], err, took.Round(time.Millisecond))
					continue
				}
				if resp.StatusCode != 503 {
					t.Errorf("%s (route to %s) %s via %s: %s %q after %s, want 503", r.id, r.why, method, e[0], resp.Status, body, took.Round(time.Millisecond))
					continue
				}
				checkRefusal(t, resp, body, 503)
				if took > quick {
					t.Errorf("%s (route to %s) %s via %s: 503 took %s, want under %s", r.id, r.why, method, e[0], took.Round(time.Millisecond), quick)
				}
			}
		}
	}
	// One hop: each node answers each request once. A node that forwards
	// to itself (or to a node that forwards back) answers until it runs
	// out of file descriptors.
	requests := 2 * len(c.entries()) // per agent ID
	for _, p := range []*process{p1.process, p2.process, lb.process} {
		for _, r := range routes {
			n := 0
			for _, msg := range []string{"request refused", "request forwarded", "tunnel closed"} {
				n += p.count(msg, "agent", r.id)
			}
			if n > requests {
				t.Errorf("%s (%s) answered %d requests for %s (route to %s), %d were sent in all: forwarding loops", p.name, p.cmd.Args[2], n, r.id, r.why, requests)
			}
		}
	}
	c.mustReachAll(t, "4711")
	c.alive(t)
}

// TestHATLS runs the proxies' HTTP ports over TLS: lb nodes and proxies
// forward to them with --http-connector.tls.*, and refuse, with a 503
// that says why, a proxy whose certificate they cannot verify.
func TestHATLS(t *testing.T) {
	t.Parallel()
	caFile := filepath.Join(certDir, "ca.pem")
	connector := []string{"--http-connector.tls.enable", "--http-connector.tls.file.root-ca=" + caFile}
	c := startCluster(t, haConfig{
		proxies: 2, lbs: 1,
		proxyFlags: append([]string{"--http-proxy.tls.enable",
			"--http-proxy.tls.file.cert=" + filepath.Join(certDir, "proxy.pem"),
			"--http-proxy.tls.file.key=" + filepath.Join(certDir, "proxy-key.pem"),
		}, connector...),
		lbFlags: connector,
	})
	p1, p2 := c.proxies[0], c.proxies[1]
	c.startAgent(t, "4711", p1.agentAddr)
	c.startAgent(t, "4712", p2.agentAddr)

	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	// viaHTTPS GETs agent id's /hello through the https proxy at addr.
	viaHTTPS := func(addr, id string) error {
		u := proxyURL(addr, id, "noauth")
		u.Scheme = "https"
		hc := &http.Client{Timeout: clientTimeout, Transport: &http.Transport{
			Proxy:             http.ProxyURL(u),
			TLSClientConfig:   &tls.Config{RootCAs: roots},
			DisableKeepAlives: true,
		}}
		resp, err := hc.Get(c.origin(id).url("/hello"))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(body) != "hello\n" {
			return fmt.Errorf("as %s through https://%s: %s %q", id, addr, resp.Status, body)
		}
		return nil
	}
	for _, id := range []string{"4711", "4712"} {
		if err := c.reach(c.lbs[0].httpAddr, id, clientTimeout); err != nil {
			t.Errorf("through the lb: %v", err)
		}
		for _, p := range c.proxies {
			if err := viaHTTPS(p.httpAddr, id); err != nil {
				t.Errorf("through a proxy: %v", err)
			}
		}
		out, err := curl(t, "-p", "--proxy", "https://"+id+":noauth@"+p1.httpAddr, "--proxy-cacert", caFile, c.origin(id).url("/hello"))
		if err != nil || out != "hello\n" {
			t.Errorf("curl -p through https://%s as %s: %q %v", p1.httpAddr, id, out, err)
		}
	}

	skip := startLB(t, c.mc, "--http-connector.tls.enable", "--http-connector.tls.insecure-skip-verify")
	if err := c.reach(skip.httpAddr, "4711", clientTimeout); err != nil {
		t.Errorf("lb with --http-connector.tls.insecure-skip-verify: %v", err)
	}
	for _, tc := range []struct {
		name  string
		flags []string
		want  string // in the 503's reason
	}{
		{"without the CA", []string{"--http-connector.tls.enable"}, "certificate"},
		{"without TLS", nil, "4711"},
	} {
		l := startLB(t, c.mc, tc.flags...)
		web := c.origin("4711")
		resp, body, err := rawRequest(l.httpAddr, "CONNECT", []byte(connectHeader(web.addr, basicAuth("4711", "noauth"))))
		if err != nil {
			t.Errorf("lb %s: %v", tc.name, err)
			continue
		}
		checkRefusal(t, resp, body, 503)
		if !strings.Contains(string(body), tc.want) {
			t.Errorf("lb %s: 503 %q does not mention %q", tc.name, body, tc.want)
		}
	}
	c.alive(t)
}
