package e2e

// The HA harness: a real memcached, a real nginx with the stream module
// (a UDP load balancer in front of the proxies' agent ports and a TCP one
// in front of the lb nodes), proxies with a memcached route store, lb
// nodes and agents, all plain processes on 127.0.0.1 with kernel-chosen
// ports, as docs/ tells an operator to run them.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// haAttempt bounds one client attempt while the tests poll: short, so that
// an attempt stuck on a dead proxy does not hide the moment it works again.
const haAttempt = 3 * time.Second

// haPrograms are the paths of the programs the HA tests run besides the
// binary.
type haPrograms struct {
	memcached string
	nginx     string
	stream    string // load_module path of the stream module; "" when built in
}

var (
	haProgramsOnce sync.Once
	haProgs        haPrograms
	haProgsErr     error
)

// haNeed returns the programs the HA tests need. When one is missing it
// fails the test under CI (CI is set: .ci/run installs them) and skips it
// otherwise. It also fails when the binary has no `lb` role or no
// --store.ttl: this suite tests those.
func haNeed(t testing.TB) haPrograms {
	t.Helper()
	haProgramsOnce.Do(func() { haProgs, haProgsErr = findHAPrograms() })
	if haProgsErr != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("HA e2e tests: %v (CI is set: .ci/run must install memcached, nginx-light and libnginx-mod-stream)", haProgsErr)
		}
		t.Skipf("HA e2e tests: %v (apt-get install memcached nginx-light libnginx-mod-stream)", haProgsErr)
	}
	haBinaryOnce.Do(func() { haBinaryErr = checkHABinary() })
	if haBinaryErr != nil {
		t.Fatal(haBinaryErr)
	}
	return haProgs
}

func findHAPrograms() (haPrograms, error) {
	var p haPrograms
	var err error
	if p.memcached, err = lookPath("memcached", "/usr/bin/memcached"); err != nil {
		return p, err
	}
	if p.nginx, err = lookPath("nginx", "/usr/sbin/nginx"); err != nil {
		return p, err
	}
	for _, dir := range []string{"/usr/lib/nginx/modules", "/usr/share/nginx/modules", "/usr/lib64/nginx/modules"} {
		if f := filepath.Join(dir, "ngx_stream_module.so"); fileExists(f) {
			p.stream = f
			return p, nil
		}
	}
	// No module file: the stream module may be compiled in.
	out, _ := exec.Command(p.nginx, "-V").CombinedOutput()
	for _, f := range strings.Fields(string(out)) {
		if f == "--with-stream" {
			return p, nil
		}
	}
	return p, errors.New("nginx has no stream module (ngx_stream_module.so not found, not built in)")
}

// lookPath finds name in PATH, or at fallback (sbin is not always in PATH).
func lookPath(name, fallback string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if fileExists(fallback) {
		return fallback, nil
	}
	return "", fmt.Errorf("%s not installed", name)
}

func fileExists(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir()
}

var (
	haBinaryOnce sync.Once
	haBinaryErr  error
)

// checkHABinary reports whether the binary has the HA interface.
func checkHABinary() error {
	for _, args := range [][]string{{"lb", "--help"}, {"proxy", "--help"}} {
		cmd := exec.Command(binPath, args...)
		cmd.Env = childEnv()
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("reverse-http %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		if args[0] == "proxy" && !bytes.Contains(out, []byte("--store.ttl")) {
			return errors.New("reverse-http proxy --help has no --store.ttl")
		}
	}
	return nil
}

// startExternal starts a program that is not reverse-http. It is not in
// the test's process group: the caller stops it. Its output is kept in
// p.log.
func startExternal(t testing.TB, name, path string, args ...string) (*process, error) {
	p := &process{name: name, log: &logBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	p.cmd.Env = childEnv()
	p.cmd.Stdout = p.log
	p.cmd.Stderr = p.log
	p.cmd.SysProcAttr = childSysProcAttr()
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// stopExternal ends p with SIGTERM (SIGKILL after stopTimeout). Programs
// like memcached die of SIGTERM instead of exiting 0; that is fine here.
func stopExternal(t testing.TB, p *process) {
	t.Helper()
	p.mu.Lock()
	p.stopping = true
	p.mu.Unlock()
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		t.Errorf("%s (pid %d) did not exit within %s of SIGTERM; killed it", p.name, p.cmd.Process.Pid, stopTimeout)
	}
}

// memcached is a running memcached server. It can be killed and started
// again on the same port.
type memcached struct {
	t    testing.TB
	path string
	addr string // 127.0.0.1:port
	port int

	mu   sync.Mutex
	proc *process
	old  []*process // the killed ones, for the logs
}

// startMemcached starts `memcached -l 127.0.0.1 -p PORT -U 0 -m 64` on a
// free port. It is stopped when the test ends, after the reverse-http
// processes if it was started before them.
func startMemcached(t testing.TB, progs haPrograms) *memcached {
	t.Helper()
	m := &memcached{t: t, path: progs.memcached}
	var last error
	for attempt := 0; attempt < 5; attempt++ {
		m.port = freePort(t, "tcp")
		m.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(m.port))
		p, err := m.start()
		if err == nil {
			m.proc = p
			t.Cleanup(func() {
				m.mu.Lock()
				p := m.proc
				m.mu.Unlock()
				stopExternal(t, p)
				if t.Failed() {
					m.dumpLogs(t)
				}
			})
			return m
		}
		last = err
	}
	t.Fatal(last)
	return nil
}

func (m *memcached) args() []string {
	args := []string{"-l", "127.0.0.1", "-p", strconv.Itoa(m.port), "-U", "0", "-m", "64"}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root") // memcached refuses root without -u
	}
	return args
}

// start runs memcached on m.port and waits until it answers `version`.
func (m *memcached) start() (*process, error) {
	p, err := startExternal(m.t, "memcached", m.path, m.args()...)
	if err != nil {
		return nil, err
	}
	err = waitFor(startTimeout, func() error {
		if p.exited() {
			return nil
		}
		return m.version()
	})
	if p.exited() {
		return nil, fmt.Errorf("memcached on %s exited: %v\n%s", m.addr, p.err, p.log.String())
	}
	if err != nil {
		stopExternal(m.t, p)
		return nil, fmt.Errorf("memcached on %s does not answer: %v\n%s", m.addr, err, p.log.String())
	}
	return p, nil
}

// kill ends memcached with SIGKILL: every route is lost.
func (m *memcached) kill(t testing.TB) {
	t.Helper()
	m.mu.Lock()
	p := m.proc
	m.mu.Unlock()
	p.kill(t)
}

// restart starts a new, empty memcached on the same port after kill. The
// port was just released; a bind failure is retried for a while.
func (m *memcached) restart(t testing.TB) {
	t.Helper()
	m.mu.Lock()
	old := m.proc
	m.mu.Unlock()
	if !old.exited() {
		t.Fatal("memcached restart: the old one is still running")
	}
	deadline := time.Now().Add(startTimeout)
	for {
		p, err := m.start()
		if err == nil {
			m.mu.Lock()
			m.old = append(m.old, old)
			m.proc = p
			m.mu.Unlock()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("restart memcached on %s: %v", m.addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (m *memcached) dumpLogs(t testing.TB) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range append(m.old, m.proc) {
		t.Logf("memcached (pid %d): %s\n%s", p.cmd.Process.Pid, strings.Join(p.cmd.Args, " "), tail(p.log.String(), 16<<10))
	}
}

// command sends one text-protocol command and reads the answer up to a
// line for which last returns true.
func (m *memcached) command(cmd string, last func(line string) bool) ([]string, error) {
	c, err := net.DialTimeout("tcp", m.addr, time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, cmd+"\r\n"); err != nil {
		return nil, err
	}
	br := bufio.NewReader(c)
	var lines []string
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return lines, fmt.Errorf("memcached %q: %w after %q", cmd, err, lines)
		}
		line = strings.TrimSuffix(line, "\r\n")
		lines = append(lines, line)
		if last(line) {
			return lines, nil
		}
	}
}

func (m *memcached) version() error {
	lines, err := m.command("version", func(string) bool { return true })
	if err != nil {
		return err
	}
	if !strings.HasPrefix(lines[0], "VERSION ") {
		return fmt.Errorf("memcached answered %q to version", lines[0])
	}
	return nil
}

// get reads key with a raw `get KEY`: its value, and whether it exists.
func (m *memcached) get(key string) (string, bool, error) {
	lines, err := m.command("get "+key, func(l string) bool {
		return l == "END" || strings.HasPrefix(l, "ERROR") || strings.HasPrefix(l, "CLIENT_ERROR") || strings.HasPrefix(l, "SERVER_ERROR")
	})
	if err != nil {
		return "", false, err
	}
	switch {
	case len(lines) == 1 && lines[0] == "END":
		return "", false, nil
	case len(lines) == 3 && strings.HasPrefix(lines[0], "VALUE "+key+" "):
		return lines[1], true, nil
	}
	return "", false, fmt.Errorf("memcached answered %q to get %s", lines, key)
}

// ttl returns the seconds key has left to live (-1: never expires), with
// the meta command `mg KEY t`.
func (m *memcached) ttl(key string) (int, bool, error) {
	lines, err := m.command("mg "+key+" t", func(string) bool { return true })
	if err != nil {
		return 0, false, err
	}
	f := strings.Fields(lines[0])
	switch {
	case len(f) == 1 && f[0] == "EN":
		return 0, false, nil
	case len(f) == 2 && (f[0] == "HD" || f[0] == "VA") && strings.HasPrefix(f[1], "t"):
		n, err := strconv.Atoi(f[1][1:])
		return n, err == nil, err
	}
	return 0, false, fmt.Errorf("memcached answered %q to mg %s t", lines[0], key)
}

// set stores key=value for ttl seconds with a raw `set`.
func (m *memcached) set(key, value string, ttl int) error {
	lines, err := m.command(fmt.Sprintf("set %s 0 %d %d\r\n%s", key, ttl, len(value), value), func(string) bool { return true })
	if err != nil {
		return err
	}
	if lines[0] != "STORED" {
		return fmt.Errorf("memcached answered %q to set %s", lines[0], key)
	}
	return nil
}

// routeKey is the memcached key of an agent's route.
func routeKey(agentID string) string { return agentID }

// route returns the HTTP proxy address that the store names for agentID,
// "" when there is none.
func (m *memcached) route(agentID string) (string, error) {
	v, _, err := m.get(routeKey(agentID))
	return v, err
}

// waitRoute waits until the route of agentID is want ("" = gone).
func (m *memcached) waitRoute(t testing.TB, timeout time.Duration, agentID, want string) {
	t.Helper()
	var got string
	err := waitFor(timeout, func() error {
		var err error
		if got, err = m.route(agentID); err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("route of %s is %q, want %q", agentID, got, want)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("after %s: %v", timeout, err)
	}
}

// nginxLB is nginx with the stream module: a UDP load balancer in front of
// the proxies' agent servers and, with lb nodes, a TCP one in front of
// their HTTP ports.
type nginxLB struct {
	udpAddr string // agents connect here
	// agentTCPAddr is where agents connect over TCP (the TCP variant),
	// balanced over the proxies' agent ports on TCP.
	agentTCPAddr string
	tcpAddr      string // clients connect here; "" without lb nodes
	dir          string
	proc         *process
}

// startNginx starts nginx with a UDP upstream of agentUpstreams and a TCP
// upstream of httpUpstreams (none: no TCP server).
func startNginx(t testing.TB, progs haPrograms, agentUpstreams, httpUpstreams []string) *nginxLB {
	t.Helper()
	var last error
	for attempt := 0; attempt < 5; attempt++ {
		n := &nginxLB{dir: t.TempDir()}
		n.udpAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t, "udp")))
		n.agentTCPAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t, "tcp")))
		if len(httpUpstreams) > 0 {
			n.tcpAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t, "tcp")))
		}
		conf := nginxConfig(n, progs.stream, agentUpstreams, httpUpstreams)
		confPath := filepath.Join(n.dir, "nginx.conf")
		if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		errorLog := filepath.Join(n.dir, "error.log")
		p, err := startExternal(t, "nginx", progs.nginx, "-p", n.dir, "-e", errorLog, "-c", confPath, "-g", "daemon off;")
		if err != nil {
			t.Fatal(err)
		}
		n.proc = p
		err = waitFor(startTimeout, func() error {
			if p.exited() {
				return nil
			}
			if !bytes.Contains(readFile(errorLog), []byte("start worker process")) {
				return errors.New("no worker started yet")
			}
			if n.tcpAddr == "" {
				return nil
			}
			c, err := net.DialTimeout("tcp", n.tcpAddr, time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err == nil && !p.exited() {
			t.Cleanup(func() {
				stopExternal(t, p)
				if t.Failed() {
					t.Logf("nginx (pid %d) %s:\n%s\nerror.log, UDP and failures:\n%s", p.cmd.Process.Pid, confPath, conf, tail(nginxUDPLog(readFile(errorLog)), 64<<10))
				}
			})
			return n
		}
		stopExternal(t, p)
		last = fmt.Errorf("nginx did not start: %v %v\n%s\n%s", err, p.err, p.log.String(), readFile(errorLog))
		if !strings.Contains(last.Error(), "Address already in use") {
			break
		}
	}
	t.Fatal(last)
	return nil
}

// nginxUDPLog is nginx's error log without the info lines of TCP clients
// (one per request the tests make): what happened to agents' UDP and to
// upstreams.
func nginxUDPLog(log []byte) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(string(log), "\n") {
		if strings.Contains(l, "[info]") && !strings.Contains(l, "udp") {
			continue
		}
		b.WriteString(l)
	}
	return b.String()
}

func readFile(path string) []byte {
	b, _ := os.ReadFile(path)
	return b
}

// nginxConfig is the configuration an operator would write: round-robin
// over the proxies for agents' QUIC (UDP) and over the lb nodes for
// clients (TCP).
func nginxConfig(n *nginxLB, streamModule string, agentUpstreams, httpUpstreams []string) string {
	var b strings.Builder
	if streamModule != "" {
		fmt.Fprintf(&b, "load_module %s;\n", streamModule)
	}
	fmt.Fprintf(&b, "worker_processes 1;\n")
	fmt.Fprintf(&b, "error_log %s info;\n", filepath.Join(n.dir, "error.log"))
	fmt.Fprintf(&b, "pid %s;\n", filepath.Join(n.dir, "nginx.pid"))
	fmt.Fprintf(&b, "events { worker_connections 4096; }\n")
	fmt.Fprintf(&b, "stream {\n")
	// As deploy/ha/nginx.conf: an agent's UDP session (its address and
	// port) sticks to one proxy; a proxy that fails is skipped for 10s.
	fmt.Fprintf(&b, "  upstream proxies_quic {\n    hash $remote_addr$remote_port consistent;\n")
	for _, a := range agentUpstreams {
		fmt.Fprintf(&b, "    server %s max_fails=1 fail_timeout=10s;\n", a)
	}
	fmt.Fprintf(&b, "  }\n")
	fmt.Fprintf(&b, "  server {\n    listen %s udp;\n    proxy_pass proxies_quic;\n    proxy_timeout 10s;\n  }\n", n.udpAddr)
	// As deploy/ha/nginx.conf: agents over TCP (the fallback where UDP is
	// blocked) to the proxies' agent ports on TCP.
	fmt.Fprintf(&b, "  upstream proxies_tcp {\n    least_conn;\n")
	for _, a := range agentUpstreams {
		fmt.Fprintf(&b, "    server %s max_fails=1 fail_timeout=10s;\n", a)
	}
	fmt.Fprintf(&b, "  }\n")
	fmt.Fprintf(&b, "  server {\n    listen %s;\n    proxy_pass proxies_tcp;\n    proxy_connect_timeout 2s;\n    proxy_timeout 1h;\n  }\n", n.agentTCPAddr)
	if len(httpUpstreams) > 0 {
		fmt.Fprintf(&b, "  upstream lb_http {\n    least_conn;\n")
		for _, a := range httpUpstreams {
			fmt.Fprintf(&b, "    server %s max_fails=1 fail_timeout=5s;\n", a)
		}
		fmt.Fprintf(&b, "  }\n")
		fmt.Fprintf(&b, "  server {\n    listen %s;\n    proxy_pass lb_http;\n    proxy_connect_timeout 2s;\n    proxy_timeout 1h;\n  }\n", n.tcpAddr)
	}
	fmt.Fprintf(&b, "}\n")
	return b.String()
}

// startStoreProxy starts a proxy with the memcached route store on free
// ports; it registers its HTTP proxy address for its agents. extra are
// more flags.
func startStoreProxy(t testing.TB, mc *memcached, extra ...string) *proxyProc {
	t.Helper()
	return startProxyOnFreePorts(t, func(httpAddr string) []string {
		return append([]string{
			"--agent-server.tls.file.cert=" + filepath.Join(certDir, "proxy.pem"),
			"--agent-server.tls.file.key=" + filepath.Join(certDir, "proxy-key.pem"),
			"--store.type=memcached",
			"--store.memcached.address=" + mc.addr,
			"--store.http-proxy-address=" + httpAddr,
		}, extra...)
	})
}

// lbProc is a running `reverse-http lb`.
type lbProc struct {
	*process
	httpAddr string
}

// startLB starts an lb node on a free port, reading routes from mc.
func startLB(t testing.TB, mc *memcached, extra ...string) *lbProc {
	t.Helper()
	var last error
	for attempt := 0; attempt < 5; attempt++ {
		httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t, "tcp")))
		args := append([]string{"lb",
			"--http-proxy.listen-address=" + httpAddr,
			"--store.type=memcached",
			"--store.memcached.address=" + mc.addr,
		}, extra...)
		l := &lbProc{process: startProcess(t, "lb", args...), httpAddr: httpAddr}
		err := waitFor(startTimeout, func() error {
			if l.exited() {
				return nil
			}
			c, err := net.DialTimeout("tcp", httpAddr, time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err == nil && !l.exited() {
			return l
		}
		<-l.doneOrTimeout()
		last = fmt.Errorf("lb did not start: %v\n%s", err, l.log.String())
		if !l.exited() || !strings.Contains(l.log.String(), "address already in use") {
			break
		}
		l.mu.Lock()
		l.stopping = true // expected; retried
		l.mu.Unlock()
	}
	t.Fatal(last)
	return nil
}

// haAuth is how a cluster's processes and clients authenticate.
type haAuth struct {
	flags    []string                 // proxies' and lb nodes' auth flags
	agent    func(id string) []string // an agent's auth flags
	password func(id string) string   // a client's password for agent id
}

var haNoauth = haAuth{
	agent:    func(id string) []string { return []string{"--auth.noauth.agent-id=" + id} },
	password: func(string) string { return "noauth" },
}

// haConfig describes a cluster.
type haConfig struct {
	proxies    int      // proxies with the memcached store
	lbs        int      // lb nodes; with nginx, behind its TCP server
	nginx      bool     // nginx in front (UDP for agents, TCP for clients)
	proxyFlags []string // more flags for every proxy
	lbFlags    []string // more flags for every lb node
	auth       *haAuth  // nil: noauth
}

// haCluster is a running cluster.
type haCluster struct {
	t       testing.TB
	mc      *memcached
	proxies []*proxyProc
	lbs     []*lbProc
	lb      *nginxLB // nil without nginx
	auth    haAuth

	mu      sync.Mutex
	origins map[string]*httpOrigin // one per agent ID
}

// startCluster starts memcached, the proxies, the lb nodes and nginx, in
// that order; agents come with startAgent.
func startCluster(t testing.TB, cfg haConfig) *haCluster {
	t.Helper()
	progs := haNeed(t)
	c := &haCluster{t: t, auth: haNoauth, origins: map[string]*httpOrigin{}}
	if cfg.auth != nil {
		c.auth = *cfg.auth
	}
	// memcached first: its cleanup then runs after the proxies stopped,
	// so that they can remove their routes on the way out.
	c.mc = startMemcached(t, progs)
	for i := 0; i < cfg.proxies; i++ {
		c.proxies = append(c.proxies, startStoreProxy(t, c.mc, append(append([]string{}, c.auth.flags...), cfg.proxyFlags...)...))
	}
	for i := 0; i < cfg.lbs; i++ {
		c.lbs = append(c.lbs, startLB(t, c.mc, append(append([]string{}, c.auth.flags...), cfg.lbFlags...)...))
	}
	if cfg.nginx {
		var quicUp, httpUp []string
		for _, p := range c.proxies {
			quicUp = append(quicUp, p.agentAddr)
		}
		for _, l := range c.lbs {
			httpUp = append(httpUp, l.httpAddr)
		}
		c.lb = startNginx(t, progs, quicUp, httpUp)
	}
	return c
}

// origin is agent id's own origin. Each agent may reach only its own (its
// allowlist says so), so a request routed to the wrong agent gets a 403.
func (c *haCluster) origin(id string) *httpOrigin {
	c.mu.Lock()
	defer c.mu.Unlock()
	o := c.origins[id]
	if o == nil {
		o = startHTTPOrigin(c.t, false)
		c.origins[id] = o
	}
	return o
}

// haAgent is a running agent and the proxy that registered it.
type haAgent struct {
	*process
	id     string
	holder *proxyProc
}

// startAgent starts agent id connecting to server (the UDP load balancer
// when ""), waits until a proxy registers it and the store names that
// proxy, and returns it.
func (c *haCluster) startAgent(t testing.TB, id, server string, extra ...string) *haAgent {
	t.Helper()
	a := c.startAgentNoWait(t, id, server, extra...)
	c.mc.waitRoute(t, startTimeout, id, a.holder.httpAddr)
	return a
}

// startAgentNoWait is startAgent without waiting for the route.
func (c *haCluster) startAgentNoWait(t testing.TB, id, server string, extra ...string) *haAgent {
	t.Helper()
	if server == "" {
		server = c.lb.udpAddr
	}
	web := c.origin(id)
	before := make([]int, len(c.proxies))
	for i, p := range c.proxies {
		before[i] = p.count("agent connected", "agent", id)
	}
	args := append([]string{"agent",
		"--agent-client.server-address=" + server,
		"--agent-client.tls.file.root-ca=" + filepath.Join(certDir, "ca.pem"),
		"--agent-client.host-whitelist=" + web.addr,
	}, c.auth.agent(id)...)
	a := &haAgent{process: startProcess(t, "agent "+id, append(args, extra...)...), id: id}
	err := waitFor(startTimeout, func() error {
		if a.exited() {
			return fmt.Errorf("agent %s exited: %v", id, a.err)
		}
		for i, p := range c.proxies {
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
	return a
}

// proxyAt returns the cluster's proxy whose HTTP address is addr, or nil.
func (c *haCluster) proxyAt(addr string) *proxyProc {
	for _, p := range c.proxies {
		if p.httpAddr == addr {
			return p
		}
	}
	return nil
}

// holder is the proxy the store names for agent id, or nil.
func (c *haCluster) holder(t testing.TB, id string) *proxyProc {
	t.Helper()
	r, err := c.mc.route(id)
	if err != nil {
		t.Fatal(err)
	}
	return c.proxyAt(r)
}

// entries are the addresses where clients may reach any agent: nginx's TCP
// server, each lb node and each proxy, by name.
func (c *haCluster) entries() [][2]string {
	var e [][2]string
	if c.lb != nil && c.lb.tcpAddr != "" {
		e = append(e, [2]string{"nginx", c.lb.tcpAddr})
	}
	for i, l := range c.lbs {
		e = append(e, [2]string{"lb" + strconv.Itoa(i+1), l.httpAddr})
	}
	for i, p := range c.proxies {
		e = append(e, [2]string{"proxy" + strconv.Itoa(i+1), p.httpAddr})
	}
	return e
}

// haGet GETs url through the proxy at addr (absolute-form) as user, on a
// connection of its own, within timeout. It returns status and body.
func haGet(addr, user, password, url string, timeout time.Duration) (int, string, error) {
	c := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:             http.ProxyURL(proxyURL(addr, user, password)),
			DisableKeepAlives: true,
		},
	}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// haConnectGet opens a CONNECT tunnel to the origin at target through the
// proxy at addr and GETs path inside it, within timeout. It returns the
// CONNECT status, and the origin's body when the tunnel opened.
func haConnectGet(addr, target, auth, path string, timeout time.Duration) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	req := connectHeader(target, auth) + "GET " + path + " HTTP/1.1\r\nHost: " + target + "\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		return 0, "", err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return 0, "", fmt.Errorf("CONNECT %s: %w", target, err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), nil
	}
	inner, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		return resp.StatusCode, "", fmt.Errorf("GET %s in the tunnel: %w", path, err)
	}
	defer inner.Body.Close()
	body, err := io.ReadAll(inner.Body)
	if err == nil && inner.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s in the tunnel: %s", path, inner.Status)
	}
	return resp.StatusCode, string(body), err
}

// reach checks once, within timeout, that a client reaches agent id
// through addr: absolute-form GET /hello on its origin.
func (c *haCluster) reach(addr, id string, timeout time.Duration) error {
	status, body, err := haGet(addr, id, c.auth.password(id), c.origin(id).url("/hello"), timeout)
	if err != nil {
		return err
	}
	if status != http.StatusOK || body != "hello\n" {
		return fmt.Errorf("GET /hello as %s through %s: %d %q", id, addr, status, body)
	}
	return nil
}

// waitReach polls reach until it works, for at most timeout, and returns
// when it first worked, or the last error.
func (c *haCluster) waitReach(addr, id string, timeout time.Duration) (time.Time, error) {
	var at time.Time
	err := waitFor(timeout, func() error {
		err := c.reach(addr, id, haAttempt)
		if err == nil {
			at = time.Now()
		}
		return err
	})
	return at, err
}

// mustReachAll fails the test unless every agent in ids answers through
// every entry.
func (c *haCluster) mustReachAll(t testing.TB, ids ...string) {
	t.Helper()
	for _, e := range c.entries() {
		for _, id := range ids {
			if err := c.reach(e[1], id, clientTimeout); err != nil {
				t.Errorf("through %s: %v", e[0], err)
			}
		}
	}
}

// alive fails the test for every cluster process that exited.
func (c *haCluster) alive(t testing.TB) {
	t.Helper()
	for _, p := range c.proxies {
		if p.exited() {
			t.Errorf("proxy %s exited: %v", p.httpAddr, p.err)
		}
	}
	for _, l := range c.lbs {
		if l.exited() {
			t.Errorf("lb %s exited: %v", l.httpAddr, l.err)
		}
	}
}
