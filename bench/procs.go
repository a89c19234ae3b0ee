package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a child process: the proxy, an agent or a helper of this binary.
type proc struct {
	name string
	pid  int
	cmd  *exec.Cmd
	log  string // its stderr

	in  *os.File      // its stdin, when piped
	out *os.File      // its stdout, when piped
	br  *bufio.Reader // over out

	done chan struct{} // closed when it has exited
	err  error         // why it exited, once done is closed

	metrics string // its metrics listener (with -pprof), or ""
}

// procSet starts child processes and stops them by PID.
type procSet struct {
	dir string // where their stderr logs go

	mu   sync.Mutex
	seq  int
	live map[*proc]bool
	logs []string
}

func newProcSet(dir string) *procSet {
	return &procSet{dir: dir, live: map[*proc]bool{}}
}

// start runs path with args and extra environment env (NAME=VALUE
// words). With piped, the child's stdin and stdout are
// pipes to us (helpers read commands and print their addresses there);
// otherwise they are /dev/null. Stderr goes to a log file.
func (s *procSet) start(name string, piped bool, env []string, path string, args ...string) (*proc, error) {
	s.mu.Lock()
	s.seq++
	logPath := filepath.Join(s.dir, fmt.Sprintf("%03d-%s.log", s.seq, name))
	s.logs = append(s.logs, logPath)
	s.mu.Unlock()
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	p := &proc{name: name, log: logPath, done: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	p.cmd.Stderr = logFile
	if len(env) > 0 {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.SysProcAttr = childSysProcAttr()
	var childIn, childOut *os.File
	if piped {
		if childIn, p.in, err = os.Pipe(); err != nil {
			return nil, err
		}
		defer childIn.Close()
		if p.out, childOut, err = os.Pipe(); err != nil {
			p.in.Close()
			return nil, err
		}
		defer childOut.Close()
		p.cmd.Stdin, p.cmd.Stdout = childIn, childOut
		p.br = bufio.NewReader(p.out)
	}
	if err := p.cmd.Start(); err != nil {
		p.closePipes()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.pid = p.cmd.Process.Pid
	s.mu.Lock()
	s.live[p] = true
	s.mu.Unlock()
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
		s.mu.Lock()
		delete(s.live, p)
		s.mu.Unlock()
	}()
	return p, nil
}

func (p *proc) closePipes() {
	if p.in != nil {
		p.in.Close()
	}
	if p.out != nil {
		p.out.Close()
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to grace for the process to exit, then
// kills it. It returns once the process has exited.
func (p *proc) stop(grace time.Duration) {
	if !p.exited() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			p.cmd.Process.Kill()
			<-p.done
		}
	}
	p.closePipes()
}

// exitError describes why a process that should be running has exited,
// with the end of its log.
func (p *proc) exitError() error {
	return fmt.Errorf("%s exited (%v): %s", p.name, p.err, lastLines(p.log, 3))
}

// readLine reads one line of the child's stdout, bounded by ctx.
func (p *proc) readLine(ctx context.Context) (string, error) {
	if deadline, ok := ctx.Deadline(); ok {
		p.out.SetReadDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { p.out.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	line, err := p.br.ReadString('\n')
	if err != nil {
		if ctx.Err() != nil {
			return "", context.Cause(ctx)
		}
		// Most likely the child died: say why.
		<-waitUpTo(p.done, time.Second)
		if p.exited() {
			return "", p.exitError()
		}
		return "", fmt.Errorf("read from %s: %w", p.name, err)
	}
	return strings.TrimSpace(line), nil
}

// writeLine writes one line to the child's stdin.
func (p *proc) writeLine(line string) error {
	_, err := p.in.WriteString(line + "\n")
	return err
}

// killAll kills every live child at once; for the way out after a signal.
func (s *procSet) killAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range s.live {
		p.cmd.Process.Kill()
	}
}

// stopAll stops every live child, all at the same time.
func (s *procSet) stopAll() {
	s.mu.Lock()
	var ps []*proc
	for p := range s.live {
		ps = append(ps, p)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Go(func() { p.stop(5 * time.Second) })
	}
	wg.Wait()
}

// logSummary names the child logs that are not empty, with their first
// lines: at --log.level=warn, anything there is worth a look.
func (s *procSet) logSummary() []string {
	s.mu.Lock()
	logs := append([]string(nil), s.logs...)
	s.mu.Unlock()
	var notes []string
	for _, path := range logs {
		data, err := os.ReadFile(path)
		if err != nil || len(strings.TrimSpace(string(data))) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		note := fmt.Sprintf("%s logged %d line(s); first: %s", filepath.Base(path), len(lines), clip(lines[0], 300))
		notes = append(notes, note)
	}
	return notes
}

func lastLines(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return clip(strings.Join(lines, " | "), 600)
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func waitUpTo(done chan struct{}, d time.Duration) <-chan struct{} {
	c := make(chan struct{})
	go func() {
		select {
		case <-done:
		case <-time.After(d):
		}
		close(c)
	}()
	return c
}

// clockTicks is USER_HZ, the unit of the CPU times in /proc/PID/stat.
const clockTicks = 100

// cpuTicks is the CPU time (user + system) a process has used so far.
func cpuTicks(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	t, err := parseStatTicks(string(data))
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return t, nil
}

// parseStatTicks returns utime + stime of a /proc/PID/stat line.
func parseStatTicks(s string) (int64, error) {
	// The command name, field 2, is in parentheses and may hold spaces
	// and parentheses: the fields start after the last ')'.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("no ')'")
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, fmt.Errorf("%d fields", len(f)+2)
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 63) // field 14
	stime, err2 := strconv.ParseUint(f[12], 10, 63) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	if utime > math.MaxInt64-stime {
		return 0, errors.New("utime + stime overflows")
	}
	return int64(utime + stime), nil
}

// cpuTotal is the CPU time of several processes together.
func cpuTotal(pids ...int) (int64, error) {
	var sum int64
	for _, pid := range pids {
		t, err := cpuTicks(pid)
		if err != nil {
			return 0, err
		}
		sum += t
	}
	return sum, nil
}

// memBytes reads a memory figure ("VmRSS", "VmHWM") of /proc/PID/status.
func memBytes(pid int, key string) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	n, err := parseStatusBytes(string(data), key)
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/status: %w", pid, err)
	}
	return n, nil
}

// parseStatusBytes finds "key:   N kB" in the text of /proc/PID/status and
// returns N KiB in bytes.
func parseStatusBytes(data, key string) (int64, error) {
	for _, line := range strings.Split(data, "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 63)
			if err != nil {
				return 0, fmt.Errorf("%s: %w", key, err)
			}
			if kb > math.MaxInt64/1024 {
				return 0, fmt.Errorf("%s: %d kB overflows", key, kb)
			}
			return int64(kb) * 1024, nil
		}
	}
	return 0, fmt.Errorf("no %s", key)
}

// peakRSS samples the VmRSS of pids every 50ms until stopped.
type peakRSS struct {
	pids []int
	stop chan struct{}
	done chan struct{}
	peak map[int]int64
}

func samplePeakRSS(pids ...int) *peakRSS {
	r := &peakRSS{pids: pids, stop: make(chan struct{}), done: make(chan struct{}), peak: map[int]int64{}}
	go func() {
		defer close(r.done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			r.sample()
			select {
			case <-r.stop:
				r.sample()
				return
			case <-t.C:
			}
		}
	}()
	return r
}

func (r *peakRSS) sample() {
	for _, pid := range r.pids {
		if v, err := memBytes(pid, "VmRSS"); err == nil && v > r.peak[pid] {
			r.peak[pid] = v
		}
	}
}

// end stops sampling and returns each process's peak: the largest sample
// or the kernel's high-water mark (VmHWM), whichever is larger.
func (r *peakRSS) end() map[int]int64 {
	close(r.stop)
	<-r.done
	for _, pid := range r.pids {
		if v, err := memBytes(pid, "VmHWM"); err == nil && v > r.peak[pid] {
			r.peak[pid] = v
		}
	}
	return r.peak
}

// freePort asks the kernel for a free port on 127.0.0.1 and releases it,
// for a process that must bind the port itself. Another process may take
// it in between; startProxy retries.
func freePort(network string) (int, error) {
	if network == "udp" {
		// Free on TCP too: a proxy's agent port is both (QUIC, and the
		// TCP fallback on the same number).
		for i := 0; ; i++ {
			c, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				return 0, err
			}
			port := c.LocalAddr().(*net.UDPAddr).Port
			l, err := net.Listen("tcp", c.LocalAddr().String())
			c.Close()
			if err == nil {
				l.Close()
				return port, nil
			}
			if i == 50 {
				return 0, fmt.Errorf("no port free on both UDP and TCP: %w", err)
			}
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitFor calls try every 20ms until it succeeds, ctx ends or timeout
// passes, and returns its last error. check, if not nil, aborts the wait
// with its error (a process that exited).
func waitFor(ctx context.Context, timeout time.Duration, check func() error, try func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		if check != nil {
			if err := check(); err != nil {
				return err
			}
		}
		err := try()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %s: %w", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// agentID is the ID of the real agent the tunnels go through.
const agentID = "bench"

// pair is a running proxy and agent of the real binary.
type pair struct {
	proxy, agent *proc
	httpAddr     string // the proxy's HTTP proxy (TCP)
	agentAddr    string // the proxy's agent server (UDP)
}

func (p *pair) pids() []int { return []int{p.proxy.pid, p.agent.pid} }

// stop stops the agent, then the proxy.
func (p *pair) stop() {
	p.agent.stop(5 * time.Second)
	p.proxy.stop(10 * time.Second)
}

// startProxy starts `reverse-http proxy` on free ports and waits until its
// HTTP port accepts connections (its agent server is bound before that).
func (b *bench) startProxy(ctx context.Context, extra ...string) (proxy *proc, httpAddr, agentAddr string, err error) {
	for attempt := 0; attempt < 3; attempt++ {
		httpPort, err1 := freePort("tcp")
		udpPort, err2 := freePort("udp")
		if err := errors.Join(err1, err2); err != nil {
			return nil, "", "", err
		}
		httpAddr = fmt.Sprintf("127.0.0.1:%d", httpPort)
		agentAddr = fmt.Sprintf("127.0.0.1:%d", udpPort)
		mflags, maddr, err := b.metricsFlag(b.cfg.ProxyFlags)
		if err != nil {
			return nil, "", "", err
		}
		flags := append([]string{"proxy",
			"--agent-server.tls.file.cert=" + filepath.Join(b.certs, "proxy.pem"),
			"--agent-server.tls.file.key=" + filepath.Join(b.certs, "proxy-key.pem"),
			"--http-proxy.listen-address=" + httpAddr,
			"--agent-server.listen-address=" + agentAddr,
			"--log.level=" + b.cfg.LogLevel}, mflags...)
		flags = append(flags, extra...)
		proxy, err = b.procs.start("proxy", false, strings.Fields(b.cfg.Env), b.bin, append(flags, strings.Fields(b.cfg.ProxyFlags)...)...)
		if err != nil {
			return nil, "", "", err
		}
		proxy.metrics = maddr
		err = waitFor(ctx, 10*time.Second,
			func() error {
				if proxy.exited() {
					return proxy.exitError()
				}
				return nil
			},
			func() error {
				c, err := net.DialTimeout("tcp", httpAddr, time.Second)
				if err == nil {
					c.Close()
				}
				return err
			})
		if err == nil {
			return proxy, httpAddr, agentAddr, nil
		}
		proxy.stop(time.Second)
		if ctx.Err() != nil || !strings.Contains(err.Error(), "address already in use") {
			return nil, "", "", fmt.Errorf("proxy: %w", err)
		}
	}
	return nil, "", "", fmt.Errorf("proxy: %w", err)
}

// startPair starts a proxy and an agent, and waits until a tunnel through
// them opens.
func (b *bench) startPair(ctx context.Context) (*pair, error) {
	return b.startPairWith(ctx, func(ctx context.Context, httpAddr string) (*httpConn, error) {
		return dialTunnel(ctx, httpAddr, agentID, b.origin.echo)
	})
}

// startPairWith is startPair with more proxy flags, and dial opening the
// tunnel that says they are ready.
func (b *bench) startPairWith(ctx context.Context, dial func(ctx context.Context, httpAddr string) (*httpConn, error), proxyFlags ...string) (*pair, error) {
	return b.startPairFlags(ctx, dial, proxyFlags, nil)
}

// startPairFlags is startPairWith with more agent flags too.
func (b *bench) startPairFlags(ctx context.Context, dial func(ctx context.Context, httpAddr string) (*httpConn, error), proxyFlags, agentFlags []string) (*pair, error) {
	proxy, httpAddr, agentAddr, err := b.startProxy(ctx, proxyFlags...)
	if err != nil {
		return nil, err
	}
	mflags, maddr, err := b.metricsFlag(b.cfg.AgentFlags)
	if err != nil {
		proxy.stop(5 * time.Second)
		return nil, err
	}
	flags := append([]string{"agent",
		"--auth.noauth.agent-id=" + agentID,
		"--agent-client.server-address=" + agentAddr,
		"--agent-client.tls.file.root-ca=" + filepath.Join(b.certs, "ca.pem"),
		"--log.level=" + b.cfg.LogLevel}, mflags...)
	flags = append(flags, agentFlags...)
	agent, err := b.procs.start("agent", false, strings.Fields(b.cfg.Env), b.bin, append(flags, strings.Fields(b.cfg.AgentFlags)...)...)
	if err != nil {
		proxy.stop(5 * time.Second)
		return nil, err
	}
	agent.metrics = maddr
	p := &pair{proxy: proxy, agent: agent, httpAddr: httpAddr, agentAddr: agentAddr}
	err = waitFor(ctx, 15*time.Second,
		func() error {
			for _, c := range []*proc{proxy, agent} {
				if c.exited() {
					return c.exitError()
				}
			}
			return nil
		},
		func() error {
			c, err := dial(ctx, httpAddr)
			if err == nil {
				c.Close()
			}
			return err
		})
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("proxy and agent: %w", err)
	}
	return p, nil
}

// udpDrops is the host's count of UDP datagrams dropped because a socket's
// receive buffer was full (RcvbufErrors in /proc/net/snmp). It covers
// every process in the network namespace, so take differences over a
// measurement and read them as a hint.
func udpDrops() (int64, error) { return udpStat("RcvbufErrors") }

// udpSent is the host's count of UDP datagrams sent (OutDatagrams; a
// GSO send of several packets counts once), for differences like
// udpDrops'.
func udpSent() (int64, error) { return udpStat("OutDatagrams") }

// udpStat reads one of the Udp counters of /proc/net/snmp.
func udpStat(name string) (int64, error) {
	data, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return 0, err
	}
	return parseUDPStat(string(data), name)
}

// parseUDPStat finds the Udp counter name in the text of /proc/net/snmp:
// a "Udp:" line of names, then one of values.
func parseUDPStat(data, name string) (int64, error) {
	var names []string
	for _, line := range strings.Split(data, "\n") {
		fields, ok := strings.CutPrefix(line, "Udp: ")
		if !ok {
			continue
		}
		if names == nil {
			names = strings.Fields(fields)
			continue
		}
		for i, v := range strings.Fields(fields) {
			if i < len(names) && names[i] == name {
				return strconv.ParseInt(v, 10, 64)
			}
		}
	}
	return 0, errors.New("/proc/net/snmp: no Udp " + name)
}

// hostCPU is a sample of the host's CPU time from /proc/stat.
type hostCPU struct{ busy, total int64 }

func hostTicks() hostCPU {
	data, _ := os.ReadFile("/proc/stat")
	return parseHostCPU(string(data))
}

// parseHostCPU reads the first line of /proc/stat, "cpu  user nice system
// idle iowait irq softirq steal guest guest_nice", in clock ticks; fields
// that do not parse count 0, fields past those ten are ignored.
// (It used to index the line's fields without looking, and panicked on an
// empty file: found by FuzzParseHostCPU.)
func parseHostCPU(data string) hostCPU {
	var h hostCPU
	line, _, _ := strings.Cut(data, "\n")
	f := strings.Fields(line)
	if len(f) < 2 {
		return h
	}
	for i, v := range f[1:min(len(f), 11)] {
		n, err := strconv.ParseUint(v, 10, 59) // the sum of ten stays below MaxInt64
		if err != nil {
			continue
		}
		h.total += int64(n)
		if i != 3 && i != 4 { // idle, iowait
			h.busy += int64(n)
		}
	}
	return h
}

// busySince is the share of the host's CPU time, in percent, spent on
// anything but idling and waiting for I/O since h0.
func (h hostCPU) busySince(h0 hostCPU) float64 {
	if h.total <= h0.total {
		return 0
	}
	return 100 * float64(h.busy-h0.busy) / float64(h.total-h0.total)
}

// hostBusy is the host's busy share over d.
func hostBusy(d time.Duration) float64 {
	h0 := hostTicks()
	time.Sleep(d)
	return hostTicks().busySince(h0)
}
