package e2e

// Hostile clients on the HTTP side of a proxy and of an lb node: each is
// answered with a 4xx or a closed connection within a bounded time, a good
// client keeps being served meanwhile, no log line is forged, and the
// node's goroutines and descriptors return to their baseline afterwards.

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Limits of the client-facing server today (internal/front): headers must
// arrive within readHeaderTimeout.
const (
	readHeaderTimeout = 10 * time.Second
	// hostileBound is how long any hostile client may hold the proxy's
	// attention before it gets an answer or a closed connection.
	hostileBound = readHeaderTimeout + 5*time.Second
)

// recOrigin is an origin that records the path of every request it gets,
// to prove which requests reached it.
type recOrigin struct {
	srv  *httptest.Server
	addr string
	mu   sync.Mutex
	seen []string
}

func startRecOrigin(t testing.TB) *recOrigin {
	t.Helper()
	o := &recOrigin{}
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		o.mu.Lock()
		o.seen = append(o.seen, r.Method+" "+r.URL.Path)
		o.mu.Unlock()
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if r.URL.Path == "/hello" {
			io.WriteString(w, "hello\n")
			return
		}
		fmt.Fprintf(w, "%s %s %d %q\n", r.Method, r.URL.Path, len(body), body)
	}))
	t.Cleanup(o.srv.Close)
	o.addr = o.srv.Listener.Addr().String()
	return o
}

func (o *recOrigin) url(path string) string { return "http://" + o.addr + path }

// requests returns how many requests for path (any method) reached o.
func (o *recOrigin) requests(path string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, s := range o.seen {
		if strings.HasSuffix(s, " "+path) {
			n++
		}
	}
	return n
}

// goodClient GETs /hello through the node every 100ms on a fresh
// connection until stopped, and counts what it saw.
type goodClient struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	lastErr    string
	stop       chan struct{}
	done       chan struct{}
}

func startGoodClient(addr, agent string, o *recOrigin) *goodClient {
	g := &goodClient{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(g.done)
		for {
			status, body, err := get(addr, agent, o.url("/hello"))
			if err == nil && status == 200 && body == "hello\n" {
				g.ok.Add(1)
			} else {
				g.failed.Add(1)
				g.mu.Lock()
				g.lastErr = fmt.Sprintf("%d %q %v", status, body, err)
				g.mu.Unlock()
			}
			select {
			case <-g.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return g
}

// finish lets the client make at least atLeast requests (within 30s:
// a loaded machine serves fewer per second, which is not what is
// tested), stops it and checks that it was served every time.
func (g *goodClient) finish(t testing.TB, atLeast int64) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); g.ok.Load()+g.failed.Load() < atLeast && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	close(g.stop)
	<-g.done
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.failed.Load() > 0 || g.ok.Load() < atLeast {
		t.Errorf("good client: %d served, %d failed (last: %s); want none failed and at least %d served",
			g.ok.Load(), g.failed.Load(), g.lastErr, atLeast)
	}
}

// resources are a process's goroutines (from its /metrics) and open
// descriptors (from /proc).
type resources struct{ goroutines, fds int }

func readResources(pid int, metrics string) (resources, error) {
	m, err := scrape(metrics)
	if err != nil {
		return resources{}, err
	}
	g, ok := m["go_goroutines"]
	if !ok {
		return resources{}, errors.New("no go_goroutines in /metrics")
	}
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return resources{}, err
	}
	return resources{goroutines: int(g), fds: len(ents)}, nil
}

// waitBaseline waits until the process is back within margin of base.
func waitBaseline(t testing.TB, pid int, metrics string, base resources, margin int) {
	t.Helper()
	var now resources
	err := waitFor(20*time.Second, func() error {
		var err error
		if now, err = readResources(pid, metrics); err != nil {
			return err
		}
		if now.goroutines > base.goroutines+margin || now.fds > base.fds+margin {
			return fmt.Errorf("goroutines %d, fds %d; baseline %d, %d (margin %d)",
				now.goroutines, now.fds, base.goroutines, base.fds, margin)
		}
		return nil
	})
	if err != nil {
		t.Errorf("resources did not return to baseline: %v", err)
	} else {
		t.Logf("resources: baseline %+v, after %+v", base, now)
	}
}

// hostileBed is a node under attack: its HTTP address and the process
// whose resources and log are checked.
type hostileBed struct {
	addr    string   // the HTTP proxy port under attack
	proc    *process // the process behind it
	metrics string   // its metrics address
	agent   string   // a connected agent
	origin  *recOrigin
	json    bool // its log is JSON
}

// TestHostileProxy attacks a proxy's HTTP port; the proxy logs text.
func TestHostileProxy(t *testing.T) {
	t.Parallel()
	o := startRecOrigin(t)
	p := startProxy(t, "--metrics.listen-address=127.0.0.1:0")
	startAgent(t, p, "4711")
	runHostile(t, &hostileBed{addr: p.httpAddr, proc: p.process, metrics: metricsAddr(t, p.process),
		agent: "4711", origin: o})
}

// TestHostileLB attacks an lb node's HTTP port; the agent sits on a proxy
// behind it, found through memcached. The lb logs JSON.
func TestHostileLB(t *testing.T) {
	t.Parallel()
	mc := startMemcached(t, needMemcached(t))
	o := startRecOrigin(t)
	p := startStoreProxy(t, mc)
	startAgent(t, p, "4711")
	mc.waitRoute(t, startTimeout, "4711", p.httpAddr)
	l := startLB(t, mc, "--metrics.listen-address=127.0.0.1:0", "--log.format=json")
	runHostile(t, &hostileBed{addr: l.httpAddr, proc: l.process, metrics: metricsAddrJSON(t, l.process),
		agent: "4711", origin: o, json: true})
	// No client input became a route key: the store holds the agent's
	// route and the proxy's node lease (rh:node:ADDR, which memcached's
	// metadump escapes), nothing else.
	want := []string{"4711", url.QueryEscape("rh:node:" + p.httpAddr)}
	keys, err := mc.keysSeen(want, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(want)
	if !slices.Equal(keys, want) {
		t.Errorf("memcached keys %q, want only %q: the route of 4711 and the proxy's node lease", keys, want)
	}
}

// metricsAddrJSON is metricsAddr for a process that logs JSON.
func metricsAddrJSON(t testing.TB, p *process) string {
	t.Helper()
	var addr string
	err := waitFor(startTimeout, func() error {
		for _, line := range strings.Split(p.log.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "admin listening" {
				addr, _ = m["address"].(string)
				return nil
			}
		}
		return errors.New("no `admin listening` line")
	})
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

func runHostile(t *testing.T, b *hostileBed) {
	// Warm up, then take the baseline with nothing in flight.
	if status, body, err := get(b.addr, b.agent, b.origin.url("/hello")); err != nil || status != 200 {
		t.Fatalf("warm-up GET: %d %q %v", status, body, err)
	}
	base, err := readResources(b.proc.cmd.Process.Pid, b.metrics)
	if err != nil {
		t.Fatal(err)
	}
	good := startGoodClient(b.addr, b.agent, b.origin)

	t.Run("group", func(t *testing.T) {
		t.Run("malformed", func(t *testing.T) { t.Parallel(); hostileMalformed(t, b) })
		t.Run("CONNECT targets", func(t *testing.T) { t.Parallel(); hostileConnectTargets(t, b) })
		t.Run("Proxy-Authorization", func(t *testing.T) { t.Parallel(); hostileProxyAuth(t, b) })
		t.Run("smuggling", func(t *testing.T) { t.Parallel(); hostileSmuggling(t, b) })
		t.Run("slowloris headers", func(t *testing.T) { t.Parallel(); hostileSlowHeaders(t, b) })
		t.Run("slowloris body", func(t *testing.T) { t.Parallel(); hostileSlowBody(t, b) })
		t.Run("5000 idle connections", func(t *testing.T) { t.Parallel(); hostileIdle(t, b, 5000) })
		t.Run("500 idle keep-alive connections", func(t *testing.T) { t.Parallel(); hostileKeepAlive(t, b, 500) })
	})

	good.finish(t, 20)
	waitBaseline(t, b.proc.cmd.Process.Pid, b.metrics, base, 25)
	checkLogIntact(t, b)
}

// answered sends raw on a new connection and returns the status the node
// answered with (0: it closed the connection without one) and the body.
// It fails the test when neither happens within hostileBound.
func answered(t testing.TB, addr, method string, raw []byte) (int, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, clientTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	c.SetDeadline(start.Add(hostileBound))
	if _, err := c.Write(raw); err != nil {
		// The node may close while we still write (an oversized header).
		return 0, ""
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("no answer and no close within %s", hostileBound)
		}
		return 0, ""
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(body)
}

// want4xx checks that the node refused with a 4xx or closed the connection.
func want4xx(t testing.TB, name string, status int, body string) {
	t.Helper()
	if status != 0 && (status < 400 || status > 499) {
		t.Errorf("%s: status %d %q, want a 4xx or a closed connection", name, status, body)
	}
}

func hostileMalformed(t *testing.T, b *hostileBed) {
	auth := "Proxy-Authorization: " + basicAuth(b.agent, "noauth") + "\r\n"
	hello := b.origin.url("/hello")
	big := strings.Repeat("a", 100<<10)
	garbage := make([]byte, 4096)
	io.ReadFull(pattern(7), garbage)
	for _, tc := range []struct {
		name string
		raw  string
		want int // 0: any 4xx or a close
	}{
		{"random bytes", string(garbage), 0},
		{"binary then CRLFs", "\x00\x01\x02\xff\xfe\r\n\r\n", 400},
		{"TLS ClientHello", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + strings.Repeat("\x00", 64), 0},
		{"request line over 64 KiB", "GET " + hello + "?" + big + " HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n", 431},
		{"header over 64 KiB", "GET " + hello + " HTTP/1.1\r\nHost: x\r\n" + auth + "X-Big: " + big + "\r\n\r\n", 431},
		{"many headers over 64 KiB", "GET " + hello + " HTTP/1.1\r\nHost: x\r\n" + auth + strings.Repeat("X-A: "+strings.Repeat("b", 100)+"\r\n", 1000) + "\r\n", 431},
		{"NUL in header value", "GET " + hello + " HTTP/1.1\r\nHost: x\r\n" + auth + "X-A: b\x00c\r\n\r\n", 400},
	} {
		status, body := answered(t, b.addr, "GET", []byte(tc.raw))
		if tc.want != 0 && status != tc.want {
			t.Errorf("%s: status %d %q, want %d", tc.name, status, body, tc.want)
		}
		want4xx(t, tc.name, status, body)
	}
}

func hostileConnectTargets(t *testing.T, b *hostileBed) {
	auth := "Proxy-Authorization: " + basicAuth(b.agent, "noauth") + "\r\n"
	_, port, _ := net.SplitHostPort(b.origin.addr)
	for _, target := range []string{
		"127.0.0.1",                              // no port
		"127.0.0.1:",                             // empty port
		"127.0.0.1:http",                         // named port
		"127.0.0.1:0",                            // port 0
		"127.0.0.1:65536",                        // too big
		"127.0.0.1:-1",                           // negative
		"127.0.0.1:+" + port,                     // signed
		"127.0.0.1: " + port,                     // space in the target
		"127.0.0.1 :" + port,                     // space before the port
		"127.0.0.1:" + port + "\rX-Injected: 1",  // bare CR in the target
		"127.0.0.1%0d%0aX-Injected:%20" + port,   // escaped CRLF
		"127.0.0.1%00:" + port,                   // escaped NUL
		"[::1:" + port,                           // broken IPv6
		":" + port,                               // no host
		"/path",                                  // origin-form
		"http://127.0.0.1:" + port + "/",         // absolute-form
		strings.Repeat("a", 300) + ":" + port,    // host longer than a DNS name
		strings.Repeat("a", 28<<10) + ":" + port, // and target and Host within 64 KiB
	} {
		raw := "CONNECT " + target + " HTTP/1.1\r\nHost: " + strings.NewReplacer("\r", "", "\n", "").Replace(target) + "\r\n" + auth + "\r\n"
		status, body := answered(t, b.addr, "CONNECT", []byte(raw))
		if status != 400 && status != 0 {
			t.Errorf("CONNECT %.100q: status %d %.200q, want 400 or a closed connection", target, status, body)
		}
		if len(body) > 300 {
			t.Errorf("CONNECT %.100q: a %d-byte reason, want a short one", target, len(body))
		}
	}
	// A CRLF in the Host header of a CONNECT whose target is fine: net/http
	// ends the header line there, so X-Injected is a header of the
	// client's own request, not of one the node sends on.
	if n := b.origin.requests("/"); n != 0 {
		t.Errorf("the origin got %d requests for / from CONNECT targets", n)
	}
}

func hostileProxyAuth(t *testing.T, b *hostileBed) {
	forged := "FORGED-" + strconv.Itoa(os.Getpid())
	injection := "x\ntime=2026-01-01T00:00:00Z level=ERROR msg=" + forged
	if b.json {
		injection = "x\n{\"time\":\"2026-01-01T00:00:00Z\",\"level\":\"ERROR\",\"msg\":\"" + forged + "\"}"
	}
	enc := func(s string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, tc := range []struct{ name, value string }{
		{"no colon", enc(b.agent)},
		{"empty user", enc(":noauth")},
		{"empty", ""},
		{"scheme only", "Basic"},
		{"scheme and spaces", "Basic    "},
		{"other scheme", "Digest username=\"4711\""},
		{"invalid base64", "Basic !!!!"},
		{"base64 without padding", "Basic " + base64.RawStdEncoding.EncodeToString([]byte(b.agent+":noauth"))},
		{"URL-safe base64", "Basic " + base64.URLEncoding.EncodeToString([]byte("4711\xfb:noauth"))},
		{"10 KB user", enc(strings.Repeat("u", 10<<10) + ":noauth")},
		{"NUL in user", enc("47\x0011:noauth")},
		{"newline in user", enc(injection + ":noauth")},
		{"CR in user", enc("4711\r" + forged + ":noauth")},
		{"invalid UTF-8 user", enc("47\xff11:noauth")},
		{"user with spaces", enc("get 4711 " + forged + ":noauth")},
	} {
		for _, method := range []string{"CONNECT", "GET"} {
			raw := connectHeader(b.origin.addr, tc.value)
			if method == "GET" {
				raw = "GET " + b.origin.url("/hello") + " HTTP/1.1\r\nHost: " + b.origin.addr + "\r\n"
				if tc.value != "" {
					raw += "Proxy-Authorization: " + tc.value + "\r\n"
				}
				raw += "\r\n"
			}
			status, body := answered(t, b.addr, method, []byte(raw))
			switch tc.name {
			case "user with spaces":
				// A valid (if odd) agent ID that is not connected.
				if status != 503 {
					t.Errorf("%s %s: status %d %q, want 503", method, tc.name, status, body)
				}
			default:
				if status != 407 {
					t.Errorf("%s %s: status %d %q, want 407", method, tc.name, status, body)
				}
			}
			if strings.Contains(body, forged) && strings.Count(body, "\n") > 1 {
				t.Errorf("%s %s: the body repeats the injection on lines of its own: %q", method, tc.name, body)
			}
		}
	}
}

func hostileSmuggling(t *testing.T, b *hostileBed) {
	auth := "Proxy-Authorization: " + basicAuth(b.agent, "noauth") + "\r\n"
	smuggled := "GET /smuggled HTTP/1.1\r\nHost: " + b.origin.addr + "\r\n\r\n"
	for _, tc := range []struct {
		name    string
		headers string
		body    string
	}{
		{"CL then TE", "Content-Length: %d\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n" + smuggled},
		{"TE then CL", "Transfer-Encoding: chunked\r\nContent-Length: %d\r\n", "0\r\n\r\n" + smuggled},
		{"CL shorter than chunked body", "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n" + smuggled},
		{"TE chunked twice", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n" + smuggled},
		{"TE identity, chunked", "Transfer-Encoding: identity, chunked\r\nContent-Length: %d\r\n", "0\r\n\r\n" + smuggled},
		{"TE with space before colon", "Transfer-Encoding : chunked\r\nContent-Length: %d\r\n", "0\r\n\r\n" + smuggled},
		{"TE xchunked", "Transfer-Encoding: xchunked\r\nContent-Length: %d\r\n", "0\r\n\r\n" + smuggled},
		{"two different CLs", "Content-Length: 0\r\nContent-Length: %d\r\n", smuggled},
		{"CL with sign", "Content-Length: +%d\r\n", smuggled},
	} {
		headers := tc.headers
		if strings.Contains(headers, "%d") {
			headers = fmt.Sprintf(headers, len(tc.body))
		}
		raw := "POST " + b.origin.url("/post") + " HTTP/1.1\r\nHost: " + b.origin.addr + "\r\n" + auth + headers + "\r\n" + tc.body
		// Read every answer on the connection: the node may answer the
		// POST and then the bytes behind it as a request of their own.
		c, err := net.DialTimeout("tcp", b.addr, clientTimeout)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(hostileBound))
		c.Write([]byte(raw))
		br := bufio.NewReader(c)
		var statuses []int
		for range 3 {
			resp, err := http.ReadResponse(br, &http.Request{Method: "POST"})
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Errorf("%s: the node neither answered nor closed within %s", tc.name, hostileBound)
				}
				break
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses = append(statuses, resp.StatusCode)
		}
		c.Close()
		// One answer, then the connection closed (RFC 9112 6.1): the
		// bytes behind the body are never read as a request.
		if len(statuses) != 1 || statuses[0] >= 500 && statuses[0] != 501 {
			t.Errorf("%s: statuses %v, want one answer (2xx, 4xx or 501) and the connection closed", tc.name, statuses)
		}
		t.Logf("%s: statuses %v", tc.name, statuses)
	}
	if n := b.origin.requests("/smuggled"); n != 0 {
		t.Errorf("a smuggled request reached the origin %d times", n)
	}
}

// hostileSlowHeaders sends a request's headers one byte per second: the
// node closes the connection when its header timeout ends, and not before
// the client is done being slow for that long.
func hostileSlowHeaders(t *testing.T, b *hostileBed) {
	c, err := net.DialTimeout("tcp", b.addr, clientTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	raw := "GET " + b.origin.url("/hello") + " HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("z", 100)
	closed := make(chan time.Duration, 1)
	go func() {
		buf := make([]byte, 512)
		c.SetReadDeadline(start.Add(hostileBound + 5*time.Second))
		for {
			if _, err := c.Read(buf); err != nil {
				closed <- time.Since(start)
				return
			}
		}
	}()
	for i := 0; i < len(raw); i++ {
		if _, err := c.Write([]byte{raw[i]}); err != nil {
			break
		}
		select {
		case <-closed:
			i = len(raw)
			closed <- time.Since(start) // for the check below
		case <-time.After(time.Second):
		}
	}
	took := <-closed
	if took > hostileBound || took < readHeaderTimeout-time.Second {
		t.Errorf("slow headers: connection closed after %s, want about the %s header timeout", took.Round(time.Millisecond), readHeaderTimeout)
	}
}

// hostileSlowBody sends an absolute-form POST whose body trickles in one
// byte per second: it is slow, not wrong, so it is served, and other
// clients are served meanwhile (the good client checks that).
func hostileSlowBody(t *testing.T, b *hostileBed) {
	c, err := net.DialTimeout("tcp", b.addr, clientTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const body = "trickle"
	c.SetDeadline(time.Now().Add(time.Duration(len(body))*time.Second + hostileBound))
	fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\nContent-Length: %d\r\n\r\n",
		b.origin.url("/slow-body"), b.origin.addr, basicAuth(b.agent, "noauth"), len(body))
	for i := range len(body) {
		time.Sleep(time.Second)
		if _, err := c.Write([]byte{body[i]}); err != nil {
			t.Fatalf("write byte %d of the body: %v", i, err)
		}
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: "POST"})
	if err != nil {
		t.Fatalf("trickled POST: %v", err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("POST /slow-body %d %q\n", len(body), body); resp.StatusCode != 200 || string(got) != want {
		t.Errorf("trickled POST: %s %q, want 200 %q", resp.Status, got, want)
	}
}

// hostileIdle opens n connections that send nothing: the node closes each
// when its header timeout ends, and serves others meanwhile.
func hostileIdle(t *testing.T, b *hostileBed, n int) {
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", b.addr, clientTimeout)
		if err != nil {
			t.Fatalf("idle connection %d: %v (RLIMIT_NOFILE %d)", i, err, fileLimit)
		}
		conns = append(conns, c)
	}
	t.Logf("%d idle connections opened in %s", n, time.Since(start).Round(time.Millisecond))
	// All open at once, and the node still serves.
	if status, body, err := get(b.addr, b.agent, b.origin.url("/hello")); err != nil || status != 200 {
		t.Errorf("GET with %d idle connections open: %d %q %v", n, status, body, err)
	}
	// Each is closed by the node within its header timeout (from when it
	// was accepted, a little after start).
	deadline := start.Add(hostileBound + 5*time.Second)
	var wg sync.WaitGroup
	var notClosed atomic.Int64
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(deadline)
			var buf [1]byte
			_, err := c.Read(buf[:])
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				notClosed.Add(1)
			}
		}()
	}
	wg.Wait()
	if k := notClosed.Load(); k > 0 {
		t.Errorf("%d of %d idle connections still open %s after they were opened", k, n, time.Since(start).Round(time.Millisecond))
	}
}

// hostileKeepAlive makes n requests, each on a connection of its own, and
// keeps the connections open and idle. The node keeps them for its idle
// timeout (120s, longer than this test): what must hold is that it keeps
// serving others meanwhile and that their descriptors and goroutines are
// released when the clients close them (runHostile checks the baseline).
func hostileKeepAlive(t *testing.T, b *hostileBed, n int) {
	req := "GET " + b.origin.url("/hello") + " HTTP/1.1\r\nHost: " + b.origin.addr + "\r\nProxy-Authorization: " + basicAuth(b.agent, "noauth") + "\r\n\r\n"
	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 4 {
				c, err := net.DialTimeout("tcp", b.addr, clientTimeout)
				if err != nil {
					failed.Add(1)
					continue
				}
				conns[i] = c
				c.SetDeadline(time.Now().Add(clientTimeout))
				io.WriteString(c, req)
				resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: "GET"})
				if err != nil {
					failed.Add(1)
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != 200 || string(body) != "hello\n" || resp.Close {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d of %d keep-alive requests failed", f, n)
	}
	if status, body, err := get(b.addr, b.agent, b.origin.url("/hello")); err != nil || status != 200 {
		t.Errorf("GET with %d idle keep-alive connections open: %d %q %v", n, status, body, err)
	}
	// Still open (not an error: bounded by the 120s idle timeout).
	open := 0
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		var buf [1]byte
		if _, err := c.Read(buf[:]); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				open++
			}
		}
	}
	t.Logf("%d of %d keep-alive connections still open after their request", open, n)
}

// checkLogIntact checks that every line of the node's log is one well-formed
// record of its format, that none was forged by client input, and that
// none is huge.
func checkLogIntact(t testing.TB, b *hostileBed) {
	t.Helper()
	for i, line := range strings.Split(strings.TrimSuffix(b.proc.log.String(), "\n"), "\n") {
		if len(line) > 4<<10 {
			t.Errorf("log line %d is %d bytes long: %.200s...", i+1, len(line), line)
		}
		if b.json {
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil || m["time"] == nil || m["msg"] == nil {
				t.Errorf("log line %d is not a JSON record: %.300q", i+1, line)
				continue
			}
			if msg, _ := m["msg"].(string); strings.HasPrefix(msg, "FORGED") {
				t.Errorf("log line %d was forged: %.300q", i+1, line)
			}
			continue
		}
		l := parseLogLine(line)
		if !strings.HasPrefix(line, "time=") || l["level"] == "" || l["msg"] == "" {
			t.Errorf("log line %d is not a slog record: %.300q", i+1, line)
		}
		if strings.HasPrefix(l["msg"], "FORGED") {
			t.Errorf("log line %d was forged: %.300q", i+1, line)
		}
	}
}

// keysSeen lists the keys memcached holds, as the union of metadumps
// taken until every key in want was seen or for at most bound. One dump is
// not enough: the crawler skips an item that is locked or referenced at
// the moment it passes (a renewal's set, an lb's get), so a live key can
// be missing from any single dump; a key that is there at all is in every
// dump that did not skip it. The union is sorted.
func (m *memcached) keysSeen(want []string, bound time.Duration) ([]string, error) {
	seen := map[string]bool{}
	deadline := time.Now().Add(bound)
	for {
		keys, err := m.keys()
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			seen[k] = true
		}
		all := true
		for _, k := range want {
			all = all && seen[k]
		}
		if all || time.Now().After(deadline) {
			return slices.Sorted(maps.Keys(seen)), nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// keys lists the keys memcached's LRU crawler saw (`lru_crawler metadump
// all`); see keysSeen for what it may miss.
func (m *memcached) keys() ([]string, error) {
	lines, err := m.command("lru_crawler metadump all", func(l string) bool {
		return l == "END" || strings.HasPrefix(l, "ERROR") || strings.HasPrefix(l, "CLIENT_ERROR") || strings.HasPrefix(l, "BUSY")
	})
	if err != nil {
		return nil, err
	}
	if last := lines[len(lines)-1]; last != "END" {
		return nil, fmt.Errorf("memcached answered %q to metadump", lines)
	}
	var keys []string
	for _, l := range lines[:len(lines)-1] {
		for _, f := range strings.Fields(l) {
			if k, ok := strings.CutPrefix(f, "key="); ok {
				keys = append(keys, k)
			}
		}
	}
	return keys, nil
}

// needMemcached is haNeed for a test that runs memcached but no nginx.
func needMemcached(t testing.TB) haPrograms {
	t.Helper()
	path, err := lookPath("memcached", "/usr/bin/memcached")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%v (CI is set: .ci/run must install memcached)", err)
		}
		t.Skipf("%v (apt-get install memcached)", err)
	}
	return haPrograms{memcached: path}
}
