package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Timeouts of the harness. Generous: the tests run on small, busy machines.
const (
	startTimeout = 20 * time.Second // a process is up, an agent registered
	stopTimeout  = 10 * time.Second // a process exits after SIGTERM
	pollInterval = 20 * time.Millisecond
)

// logBuffer collects a process's stderr. It is safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// logLine is one slog text line, parsed into its keys.
type logLine map[string]string

// parseLogLine parses `time=... level=INFO msg="agent connected" agent=4711`.
func parseLogLine(s string) logLine {
	l := logLine{}
	for s != "" {
		s = strings.TrimLeft(s, " ")
		eq := strings.IndexByte(s, '=')
		if eq <= 0 {
			break
		}
		key := s[:eq]
		s = s[eq+1:]
		if strings.HasPrefix(s, `"`) {
			q, err := strconv.QuotedPrefix(s)
			if err != nil {
				l[key] = s
				break
			}
			l[key], _ = strconv.Unquote(q)
			s = s[len(q):]
			continue
		}
		end := strings.IndexByte(s, ' ')
		if end < 0 {
			end = len(s)
		}
		l[key] = s[:end]
		s = s[end:]
	}
	return l
}

// match reports whether the line has message msg and each key=value pair
// of kv.
func (l logLine) match(msg string, kv ...string) bool {
	if l["msg"] != msg {
		return false
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if l[kv[i]] != kv[i+1] {
			return false
		}
	}
	return true
}

// process is a running reverse-http (or helper) process.
type process struct {
	name string
	cmd  *exec.Cmd
	log  *logBuffer
	done chan struct{} // closed when the process has exited
	err  error         // cmd.Wait's result, set before done is closed

	mu       sync.Mutex
	stopping bool // we asked it to stop; exiting is expected
}

// startProcess starts the binary with args. Its stderr (the log) is kept
// and shown when the test fails; it is stopped with SIGTERM, then SIGKILL,
// when the test ends, and must then exit cleanly.
func startProcess(t testing.TB, name string, args ...string) *process {
	t.Helper()
	return startProcessEnv(t, name, nil, args...)
}

// startProcessEnv is startProcess with env (NAME=value) added to childEnv.
func startProcessEnv(t testing.TB, name string, env []string, args ...string) *process {
	t.Helper()
	p := &process{name: name, log: &logBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(binPath, args...)
	p.cmd.Env = append(childEnv(), env...)
	p.cmd.Stdout = p.log
	p.cmd.Stderr = p.log
	p.cmd.SysProcAttr = childSysProcAttr()
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	groupOf(t).add(p)
	return p
}

// group holds the processes one test started. They are stopped together
// when the test ends: proxies first, so that agents are not asked to stop
// while tunnels through them are still open, then the rest, newest first.
type group struct {
	mu       sync.Mutex
	procs    []*process
	failures []string // what failf and the harness failed the test with
}

var (
	groupsMu sync.Mutex
	groups   = map[testing.TB]*group{}
)

func groupOf(t testing.TB) *group {
	groupsMu.Lock()
	defer groupsMu.Unlock()
	g := groups[t]
	if g == nil {
		g = &group{}
		groups[t] = g
		t.Cleanup(func() {
			groupsMu.Lock()
			delete(groups, t)
			groupsMu.Unlock()
			g.stopAll(t)
			if t.Failed() {
				g.dumpLogs(t)
				g.restate(t)
			}
		})
	}
	return g
}

// failf fails t with the message and records it, so that the test's
// cleanup says it again after the processes' logs: those can be long
// enough to push the failure out of a CI's view of the output.
func failf(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	groupOf(t).record(msg)
	t.Error(msg)
}

// fatalf is failf, then t.FailNow.
func fatalf(t testing.TB, format string, args ...any) {
	t.Helper()
	failf(t, format, args...)
	t.FailNow()
}

func (g *group) record(msg string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.failures) < 20 {
		g.failures = append(g.failures, msg)
	}
}

// restate repeats the recorded failures, each cut to a few lines.
func (g *group) restate(t testing.TB) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.failures) == 0 {
		return
	}
	var b strings.Builder
	b.WriteString("FAILED, as said before the logs above:")
	for _, f := range g.failures {
		lines := strings.Split(f, "\n")
		if len(lines) > 5 {
			lines = append(lines[:5], fmt.Sprintf("(%d more lines)", len(lines)-5))
		}
		b.WriteString("\n  - " + strings.Join(lines, "\n    "))
	}
	t.Log(b.String())
}

func (g *group) add(p *process) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.procs = append(g.procs, p)
}

// dumpLogs shows every process's command line and log (its end, if long).
func (g *group) dumpLogs(t testing.TB) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, p := range g.procs {
		t.Logf("%s (pid %d): %s\n%s", p.name, p.cmd.Process.Pid, strings.Join(p.cmd.Args, " "), tail(p.log.String(), 64<<10))
	}
}

func (g *group) stopAll(t testing.TB) {
	g.mu.Lock()
	procs := slices.Clone(g.procs)
	g.mu.Unlock()
	slices.Reverse(procs)
	for _, proxies := range []bool{true, false} {
		for _, p := range procs {
			if (p.name == "proxy") == proxies {
				start := time.Now()
				if err := p.halt(); err != nil {
					g.record(err.Error())
					t.Error(err)
				} else if took := time.Since(start); took > stopTimeout/4 {
					t.Logf("%s (pid %d) took %s to exit after SIGTERM", p.name, p.cmd.Process.Pid, took.Round(time.Millisecond))
				}
			}
		}
	}
	for _, p := range procs {
		log := p.log.String()
		for _, bad := range []string{"WARNING: DATA RACE", "panic: ", "fatal error: "} {
			if strings.Contains(log, bad) {
				err := fmt.Sprintf("%s log has %q", p.name, bad)
				g.record(err)
				t.Error(err)
			}
		}
	}
}

// tail returns the last n bytes of s, from a line start.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return "[...]\n" + s
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits for a clean exit (status 0); a process that
// does not exit within stopTimeout is killed. A process that exited before
// anyone asked it to is an error too.
func (p *process) stop(t testing.TB) {
	t.Helper()
	if err := p.halt(); err != nil {
		t.Error(err)
	}
}

// halt is stop, returning what went wrong.
func (p *process) halt() error {
	p.mu.Lock()
	early := !p.stopping && p.exited()
	p.stopping = true
	p.mu.Unlock()
	if early {
		return fmt.Errorf("%s exited on its own: %v", p.name, p.err)
	}
	if p.exited() {
		return nil
	}
	return p.terminate(stopTimeout)
}

// terminate sends SIGTERM and waits up to timeout for the process to exit
// with status 0. It kills a process that is still running then.
func (p *process) terminate(timeout time.Duration) error {
	p.mu.Lock()
	p.stopping = true
	p.mu.Unlock()
	start := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			return fmt.Errorf("%s: exit after SIGTERM: %v, want status 0", p.name, p.err)
		}
		return nil
	case <-time.After(timeout):
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	return fmt.Errorf("%s did not exit within %s of SIGTERM; killed it", p.name, time.Since(start).Round(time.Millisecond))
}

// signal sends sig to the process, by its PID.
func (p *process) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v to %s (pid %d): %v", sig, p.name, p.cmd.Process.Pid, err)
	}
}

// kill sends SIGKILL and waits for the process to end.
func (p *process) kill(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	p.stopping = true
	p.mu.Unlock()
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		t.Errorf("%s (pid %d) still running %s after SIGKILL", p.name, p.cmd.Process.Pid, stopTimeout)
	}
}

// lines returns the parsed log lines that match msg and kv.
func (p *process) lines(msg string, kv ...string) []logLine {
	var out []logLine
	for _, s := range strings.Split(p.log.String(), "\n") {
		if !strings.Contains(s, msg) {
			continue
		}
		if l := parseLogLine(s); l.match(msg, kv...) {
			out = append(out, l)
		}
	}
	return out
}

// count returns how many log lines match msg and kv.
func (p *process) count(msg string, kv ...string) int { return len(p.lines(msg, kv...)) }

// waitLog waits until at least n log lines match msg and kv. It fails the
// test after timeout or when the process exits first.
func (p *process) waitLog(t testing.TB, timeout time.Duration, n int, msg string, kv ...string) {
	t.Helper()
	if err := p.waitLogErr(timeout, n, msg, kv...); err != nil {
		t.Fatal(err)
	}
}

func (p *process) waitLogErr(timeout time.Duration, n int, msg string, kv ...string) error {
	deadline := time.Now().Add(timeout)
	for {
		got := p.count(msg, kv...)
		if got >= n {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited (%v) while waiting for %d log lines %q %v (saw %d)", p.name, p.err, n, msg, kv, got)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no %d log lines %q %v within %s (saw %d)", p.name, n, msg, kv, timeout, got)
		}
		time.Sleep(pollInterval)
	}
}

// waitFor polls cond until it returns nil or timeout passes; it returns the
// last error.
func waitFor(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(pollInterval)
	}
}

// freePort asks the kernel for a free port on 127.0.0.1 and releases it,
// for a process that must bind the port itself. Another process may take
// it in between; callers retry.
func freePort(t testing.TB, network string) int {
	t.Helper()
	switch network {
	case "udp":
		// Free on TCP too: a proxy's agent port is both (QUIC, and the
		// TCP fallback on the same number).
		for i := 0; ; i++ {
			c, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			port := c.LocalAddr().(*net.UDPAddr).Port
			l, err := net.Listen("tcp", c.LocalAddr().String())
			c.Close()
			if err == nil {
				l.Close()
				return port
			}
			if i == 50 {
				t.Fatalf("no port free on both UDP and TCP: %v", err)
			}
		}
	default:
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
}

// closedPort is a port on 127.0.0.1 that nothing listens on (it was bound
// and released).
func closedPort(t testing.TB) int { return freePort(t, "tcp") }

// proxyProc is a running `reverse-http proxy`.
type proxyProc struct {
	*process
	httpAddr  string // the HTTP proxy, 127.0.0.1:port (TCP)
	agentAddr string // the agent server, 127.0.0.1:port (UDP)
	args      []string
}

// startProxy starts a proxy on free ports with the certificates from
// `reverse-http certs` and waits until it serves. extra are more flags.
func startProxy(t testing.TB, extra ...string) *proxyProc {
	t.Helper()
	return startProxyArgs(t, true, extra...)
}

// startProxyArgs is startProxy; withCert false leaves out the certificate
// flags, so that the proxy makes itself a self-signed certificate.
func startProxyArgs(t testing.TB, withCert bool, extra ...string) *proxyProc {
	t.Helper()
	if withCert {
		extra = append([]string{
			"--agent-server.tls.file.cert=" + filepath.Join(certDir, "proxy.pem"),
			"--agent-server.tls.file.key=" + filepath.Join(certDir, "proxy-key.pem"),
		}, extra...)
	}
	return startProxyOnFreePorts(t, func(string) []string { return extra })
}

// startProxyOnFreePorts starts a proxy on ports the kernel picked, with
// the flags args returns for its HTTP address, and tries other ports if
// another process took them meanwhile.
func startProxyOnFreePorts(t testing.TB, args func(httpAddr string) []string) *proxyProc {
	t.Helper()
	var last error
	for attempt := 0; attempt < 5; attempt++ {
		httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t, "tcp")))
		agentAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t, "udp")))
		p, err := tryStartProxy(t, httpAddr, agentAddr, args(httpAddr))
		if err == nil {
			return p
		}
		last = err
		if !errors.Is(err, errAddrInUse) {
			break
		}
	}
	t.Fatal(last)
	return nil
}

// restartProxy starts a new proxy like old, on old's ports. The ports were
// just released, so a bind failure is retried for a while.
func restartProxy(t testing.TB, old *proxyProc) *proxyProc {
	t.Helper()
	if !old.exited() {
		t.Fatalf("restartProxy: %s is still running", old.name)
	}
	deadline := time.Now().Add(startTimeout)
	for {
		p, err := tryStartProxy(t, old.httpAddr, old.agentAddr, old.args)
		if err == nil {
			return p
		}
		if !errors.Is(err, errAddrInUse) || time.Now().After(deadline) {
			t.Fatalf("restart proxy on %s and %s: %v", old.httpAddr, old.agentAddr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var errAddrInUse = errors.New("address already in use")

func tryStartProxy(t testing.TB, httpAddr, agentAddr string, extra []string) (*proxyProc, error) {
	t.Helper()
	args := append([]string{"proxy",
		"--agent-server.listen-address=" + agentAddr,
		"--http-proxy.listen-address=" + httpAddr,
	}, extra...)
	p := &proxyProc{
		process:   startProcess(t, "proxy", args...),
		httpAddr:  httpAddr,
		agentAddr: agentAddr,
		args:      extra,
	}
	err := p.waitLogErr(startTimeout, 1, "http proxy listening")
	if err == nil {
		err = waitFor(startTimeout, func() error {
			c, err := net.DialTimeout("tcp", httpAddr, time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	if err != nil {
		<-p.doneOrTimeout()
		if p.exited() && strings.Contains(p.log.String(), "address already in use") {
			p.mu.Lock()
			p.stopping = true // expected; retried
			p.mu.Unlock()
			return nil, fmt.Errorf("proxy on %s and %s: %w", httpAddr, agentAddr, errAddrInUse)
		}
		return nil, fmt.Errorf("proxy did not start: %w\n%s", err, p.log.String())
	}
	return p, nil
}

// doneOrTimeout returns a channel closed when the process exits or after
// a short while.
func (p *process) doneOrTimeout() <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		select {
		case <-p.done:
		case <-time.After(2 * time.Second):
		}
	}()
	return ch
}

// agentArgs are the flags that point an agent at p with the local CA.
func agentArgs(p *proxyProc) []string {
	return []string{"agent",
		"--agent-client.server-address=" + p.agentAddr,
		"--agent-client.tls.file.root-ca=" + filepath.Join(certDir, "ca.pem"),
	}
}

// startAgent starts a noauth agent with the given ID and waits until p has
// registered it.
func startAgent(t testing.TB, p *proxyProc, id string, extra ...string) *process {
	t.Helper()
	args := append(agentArgs(p), "--auth.noauth.agent-id="+id)
	return startAgentArgs(t, p, id, append(args, extra...)...)
}

// startAgentArgs starts an agent with exactly args and waits until p logs
// one more `agent connected` for id.
func startAgentArgs(t testing.TB, p *proxyProc, id string, args ...string) *process {
	t.Helper()
	before := p.count("agent connected", "agent", id)
	a := startProcess(t, "agent "+id, args...)
	deadline := time.Now().Add(startTimeout)
	for p.count("agent connected", "agent", id) <= before {
		if a.exited() {
			t.Fatalf("agent %s exited: %v\n%s", id, a.err, a.log.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy did not register agent %s within %s\nagent log:\n%s", id, startTimeout, a.log.String())
		}
		time.Sleep(pollInterval)
	}
	return a
}

// runTool runs the binary to completion (certs, auth ...) and returns its
// stdout; it fails the test on a non-zero exit.
func runTool(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Env = childEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("reverse-http %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}
