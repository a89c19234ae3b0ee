package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// bench is one benchmark session: a work directory with the binary and
// its certificates, the child processes and the origin helper.
type bench struct {
	cfg    config
	rep    *report
	dir    string   // work directory
	bin    string   // the reverse-http binary
	certs  string   // `reverse-http certs` output
	self   string   // this binary, re-executed for helpers
	procs  *procSet // every child process
	origin origin
}

// setup builds the binary into the work directory, writes certificates
// and starts the origin.
func (b *bench) setup(ctx context.Context) error {
	var err error
	if b.self, err = os.Executable(); err != nil {
		return err
	}
	b.bin = b.cfg.Bin
	if b.bin == "" {
		b.bin = filepath.Join(b.dir, "reverse-http")
		fmt.Fprintln(os.Stderr, "rh-bench: go build -o", b.bin, "./cmd/reverse-http")
		if err := runCmd(ctx, "go", "build", "-o", b.bin, "./cmd/reverse-http"); err != nil {
			return fmt.Errorf("build (run rh-bench from the repository root, or pass -bin): %w", err)
		}
	}
	if b.cfg.PprofDir != "" {
		if err := os.MkdirAll(b.cfg.PprofDir, 0o755); err != nil {
			return err
		}
	}
	b.certs = filepath.Join(b.dir, "certs")
	if err := runCmd(ctx, b.bin, "certs", "--dir", b.certs); err != nil {
		return err
	}
	return b.startOrigin(ctx)
}

// runCmd runs a short command; its output goes into the error if it fails.
func runCmd(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// close stops every child and removes the work directory (unless -keep).
func (b *bench) close() {
	b.procs.stopAll()
	if b.cfg.Keep {
		fmt.Fprintln(os.Stderr, "rh-bench: kept", b.dir)
		return
	}
	os.RemoveAll(b.dir)
}

// phase is a named part of the benchmark; run does one run of it.
type phase struct {
	name string
	run  func(ctx context.Context, b *bench, r *runRecorder) error
}

// phases in the order they run; baselines first, for the ratios.
var phases = []phase{
	{"baseline", baselineRun},
	{"throughput", throughputRun},
	{"latency", latencyRun},
	{"h2", h2Run},
	{"transport", transportRun},
	{"tunnels10k", tunnelsRun},
	{"agents10k", agentsRun},
}

func phaseNames() []string {
	var names []string
	for _, p := range phases {
		names = append(names, p.name)
	}
	return names
}

func isPhase(name string) bool {
	for _, p := range phases {
		if p.name == name {
			return true
		}
	}
	return false
}

// runPhase runs -runs runs of ph within -timeout. A run that fails is
// reported and the next one runs; the timeout ends the phase.
func (b *bench) runPhase(parent context.Context, ph phase) {
	ctx, cancel := context.WithTimeoutCause(parent, b.cfg.Timeout,
		fmt.Errorf("phase %s: -timeout %s reached", ph.name, b.cfg.Timeout))
	defer cancel()
	start := time.Now()
	done := 0
	for i := range b.cfg.Runs {
		fmt.Fprintf(os.Stderr, "== %s, run %d of %d\n", ph.name, i+1, b.cfg.Runs)
		r := &runRecorder{rep: b.rep, phase: ph.name, run: i}
		err := ph.run(ctx, b, r)
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", context.Cause(ctx), err)
		}
		if err != nil {
			b.rep.errorf("%s, run %d: %v", ph.name, i+1, err)
			fmt.Fprintf(os.Stderr, "   error: %v\n", err)
		} else {
			done++
		}
		if ctx.Err() != nil {
			break
		}
	}
	b.rep.phaseDone(ph.name, done, time.Since(start))
}

// mbps is a throughput in MB/s (10^6 bytes per second).
func mbps(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }

// cpuPerGiB is CPU seconds per GiB moved.
func cpuPerGiB(ticks, bytes int64) float64 {
	return float64(ticks) / clockTicks / (float64(bytes) / GiB)
}

// baselineRun measures a direct TCP connection to the origin and a raw
// QUIC connection between two helper processes.
func baselineRun(ctx context.Context, b *bench, r *runRecorder) error {
	down, up := b.cfg.Download, b.cfg.Upload
	c, err := dialDirect(ctx, b.origin.http)
	if err != nil {
		return err
	}
	defer c.Close()
	start := time.Now()
	if err := c.download(down); err != nil {
		return fmt.Errorf("direct: %w", err)
	}
	r.add("direct.download", "direct TCP: download "+formatSize(down), "MB/s", mbps(down, time.Since(start)))
	start = time.Now()
	if err := c.upload(up); err != nil {
		return fmt.Errorf("direct: %w", err)
	}
	r.add("direct.upload", "direct TCP: upload "+formatSize(up), "MB/s", mbps(up, time.Since(start)))
	if err := tcpLatencies(ctx, b, r, "direct", "direct TCP", c, b.origin.http, b.origin.echo); err != nil {
		return err
	}

	ch, err := b.startChain(ctx)
	if err != nil {
		return err
	}
	defer ch.stop()
	cc, err := dialDirect(ctx, ch.http)
	if err != nil {
		return err
	}
	defer cc.Close()
	// The tunnel's four processes with TCP relays in the middle.
	if err := tcpLatencies(ctx, b, r, "chain", "TCP relay chain", cc, ch.http, ch.echo); err != nil {
		return err
	}

	q, err := b.startQUICPair(ctx)
	if err != nil {
		return err
	}
	defer q.stop()
	drops0, _ := udpDrops()
	t0, err := cpuTotal(q.pids()...)
	if err != nil {
		return err
	}
	host0 := hostTicks()
	took, err := q.do(ctx, "send", down, 1)
	if err != nil {
		return err
	}
	r.add("quic.download", "raw QUIC, 1 stream: client→server "+formatSize(down), "MB/s", mbps(down, took))
	took, err = q.do(ctx, "recv", up, 1)
	if err != nil {
		return err
	}
	r.add("quic.upload", "raw QUIC, 1 stream: server→client "+formatSize(up), "MB/s", mbps(up, took))
	t1, err := cpuTotal(q.pids()...)
	if err != nil {
		return err
	}
	r.add("quic.cpu_per_gib", "raw QUIC, 1 stream: CPU of both ends", "s/GiB", cpuPerGiB(t1-t0, down+up))
	r.add("quic.host_busy", "raw QUIC, 1 stream: host CPU busy (both cores)", "%", hostTicks().busySince(host0))
	if drops1, err := udpDrops(); err == nil {
		r.add("quic.udp_drops", "raw QUIC, 1 stream: UDP receive buffer drops (host)", "count", float64(drops1-drops0))
	}
	rtt, err := q.ping(ctx, b.cfg.LatencyN)
	if err != nil {
		return err
	}
	r.latency("quic.rtt", "raw QUIC: 16-byte echo round trip", rtt)
	took, err = q.do(ctx, "send", down, 8)
	if err != nil {
		return err
	}
	r.add("quic.download8", "raw QUIC, 8 streams: aggregate client→server", "MB/s", mbps(down/8*8, took))
	return nil
}

// tcpLatencies records GET /small on c, connect + GET /small + close to
// httpAddr and 16-byte echo round trips to echoAddr, all over plain TCP,
// under keys prefix.kept, prefix.new and prefix.rtt.
func tcpLatencies(ctx context.Context, b *bench, r *runRecorder, prefix, name string, c *httpConn, httpAddr, echoAddr string) error {
	lat, err := keptConnLatency(b.cfg.LatencyN, c)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	r.latency(prefix+".kept", name+": GET /small on one connection", lat[0])
	lat, err = newConnLatency(ctx, b.cfg.LatencyN, func(ctx context.Context) (*httpConn, error) { return dialDirect(ctx, httpAddr) })
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	r.latency(prefix+".new", name+": connect + GET /small + close", lat[0])
	return echoLatency(ctx, b, r, prefix+".rtt", name+": 16-byte echo round trip", func(ctx context.Context) (*httpConn, error) {
		return dialDirect(ctx, echoAddr)
	})
}

// throughputRun measures one tunnel downloading and uploading, with the
// CPU time of proxy and agent, and eight tunnels downloading at once.
func throughputRun(ctx context.Context, b *bench, r *runRecorder) error {
	down, up := b.cfg.Download, b.cfg.Upload
	p, err := b.startPair(ctx)
	if err != nil {
		return err
	}
	defer p.stop()
	tunnel := func(ctx context.Context) (*httpConn, error) {
		return dialTunnel(ctx, p.httpAddr, agentID, b.origin.http)
	}
	c, err := tunnel(ctx)
	if err != nil {
		return err
	}
	defer c.Close()

	drops0, _ := udpDrops()
	t0, err := cpuTotal(p.pids()...)
	if err != nil {
		return err
	}
	// The rest of the box: this process (the client) and the origin, and
	// the host's busy share, to show where the two cores go.
	ends0, err := cpuTotal(os.Getpid(), b.origin.pid)
	if err != nil {
		return err
	}
	host0 := hostTicks()
	profiled := b.cpuProfile(ctx, r, "download", 3*time.Second, p.proxy, p.agent)
	start := time.Now()
	if err := c.download(down); err != nil {
		return fmt.Errorf("tunnel: %w", err)
	}
	r.add("tunnel.download", "1 tunnel: download "+formatSize(down), "MB/s", mbps(down, time.Since(start)))
	t1, err := cpuTotal(p.pids()...)
	if err != nil {
		return err
	}
	profiled() // between the measurements: a short download waits here
	start = time.Now()
	if err := c.upload(up); err != nil {
		return fmt.Errorf("tunnel: %w", err)
	}
	r.add("tunnel.upload", "1 tunnel: upload "+formatSize(up), "MB/s", mbps(up, time.Since(start)))
	t2, err := cpuTotal(p.pids()...)
	if err != nil {
		return err
	}
	ends1, err := cpuTotal(os.Getpid(), b.origin.pid)
	if err != nil {
		return err
	}
	host1 := hostTicks()
	r.add("tunnel.cpu_per_gib", "1 tunnel: CPU of proxy+agent", "s/GiB", cpuPerGiB(t2-t0, down+up))
	r.add("tunnel.cpu_per_gib_ends", "1 tunnel: CPU of client+origin", "s/GiB", cpuPerGiB(ends1-ends0, down+up))
	r.add("tunnel.host_busy", "1 tunnel: host CPU busy (both cores)", "%", host1.busySince(host0))
	r.add("tunnel.cpu_per_gib_down", "1 tunnel: CPU of proxy+agent, download", "s/GiB", cpuPerGiB(t1-t0, down))
	r.add("tunnel.cpu_per_gib_up", "1 tunnel: CPU of proxy+agent, upload", "s/GiB", cpuPerGiB(t2-t1, up))
	if drops1, err := udpDrops(); err == nil {
		r.add("tunnel.udp_drops", "1 tunnel: UDP receive buffer drops (host)", "count", float64(drops1-drops0))
	}

	took, err := parallelDownload(ctx, 8, down, tunnel)
	if err != nil {
		return fmt.Errorf("8 tunnels: %w", err)
	}
	r.add("tunnel.download8", "8 tunnels: aggregate download", "MB/s", mbps(down/8*8, took))
	return nil
}

// latencyRun measures new tunnels (CONNECT + GET /small + close) one after
// another, and requests inside one kept tunnel, each sample alternating
// with the same operation over direct TCP so that both see the machine in
// the same state (info ratios; the targets use the baseline phase's).
func latencyRun(ctx context.Context, b *bench, r *runRecorder) error {
	p, err := b.startPair(ctx)
	if err != nil {
		return err
	}
	defer p.stop()
	tunnel := func(ctx context.Context) (*httpConn, error) {
		return dialTunnel(ctx, p.httpAddr, agentID, b.origin.http)
	}
	direct := func(ctx context.Context) (*httpConn, error) { return dialDirect(ctx, b.origin.http) }
	// CPU and datagrams per tunnel and per request say what a tunnel
	// costs, and that the latency is mostly the processes' work on the
	// packets (see docs/benchmarks.md). Direct TCP sends no datagrams and
	// costs proxy and agent nothing.
	profiled := b.cpuProfile(ctx, r, "new-tunnels", 2*time.Second, p.proxy, p.agent)
	cost := p.startCost()
	lat, err := newConnLatency(ctx, b.cfg.LatencyN, tunnel, direct)
	if err != nil {
		return fmt.Errorf("new tunnels: %w", err)
	}
	cost.record(r, "tunnel.new", "new tunnel", len(lat[0])+warmups)
	r.latency("tunnel.new", "new tunnel: CONNECT + GET /small + close", lat[0])
	r.latency("tunnel.new.direct", "direct TCP, alternating: connect + GET /small + close", lat[1])
	profiled()

	c, err := tunnel(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	d, err := direct(ctx)
	if err != nil {
		return err
	}
	defer d.Close()
	cost = p.startCost()
	lat, err = keptConnLatency(b.cfg.LatencyN, c, d)
	if err != nil {
		return fmt.Errorf("kept tunnel: %w", err)
	}
	cost.record(r, "tunnel.kept", "in one tunnel: GET /small", len(lat[0])+warmups)
	r.latency("tunnel.kept", "in one tunnel: GET /small (keep-alive)", lat[0])
	r.latency("tunnel.kept.direct", "direct TCP, alternating: GET /small on one connection", lat[1])

	return echoLatency(ctx, b, r, "tunnel.rtt", "in one tunnel: 16-byte echo round trip", func(ctx context.Context) (*httpConn, error) {
		return dialTunnel(ctx, p.httpAddr, agentID, b.origin.echo)
	})
}

// echoLatency records 16-byte round trips to the origin's echo server over
// one connection from dial.
func echoLatency(ctx context.Context, b *bench, r *runRecorder, key, name string, dial func(context.Context) (*httpConn, error)) error {
	c, err := dial(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	defer c.Close()
	lat, err := pingPong(c, b.cfg.LatencyN)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	r.latency(key, name, lat)
	return nil
}

// tunnelsRun opens N tunnels to the echo server through one agent, keeps
// them all open, checks that each echoes, and records the time to open
// them and the peak memory of proxy and agent.
func tunnelsRun(ctx context.Context, b *bench, r *runRecorder) error {
	n := b.cfg.Tunnels
	p, err := b.startPair(ctx)
	if err != nil {
		return err
	}
	defer p.stop()
	rss := samplePeakRSS(p.proxy.pid, p.agent.pid)
	conns := make([]*httpConn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()

	start := time.Now()
	failed, openErr := parallel(ctx, n, b.cfg.Inflight, func(i int) error {
		c, err := dialTunnel(ctx, p.httpAddr, agentID, b.origin.echo)
		conns[i] = c
		return err
	})
	took := time.Since(start)
	r.add("tunnels.opened", fmt.Sprintf("%d tunnels: opened", n), "count", float64(n-failed))
	if ctx.Err() != nil {
		rss.end()
		return openErr
	}
	r.add("tunnels.open_s", fmt.Sprintf("%d tunnels: time to open all", n), "s", took.Seconds())

	var echoed atomic.Int64
	_, echoErr := parallel(ctx, n, b.cfg.Inflight, func(i int) error {
		c := conns[i]
		if c == nil {
			return fmt.Errorf("tunnel %d: not open", i)
		}
		msg := fmt.Sprintf("echo %05d\n", i)
		if _, err := io.WriteString(c, msg); err != nil {
			return fmt.Errorf("tunnel %d: %w", i, err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil {
			return fmt.Errorf("tunnel %d: %w", i, err)
		}
		if string(buf) != msg {
			return fmt.Errorf("tunnel %d: echoed %q, want %q", i, buf, msg)
		}
		echoed.Add(1)
		return nil
	})
	if b.cfg.Hold > 0 {
		fmt.Fprintf(os.Stderr, "   holding %d tunnels open for %s\n", n, b.cfg.Hold)
		select {
		case <-ctx.Done():
		case <-time.After(b.cfg.Hold):
		}
	}
	b.heapProfile(ctx, r, "open", p.proxy, p.agent)
	peak := rss.end()
	r.add("tunnels.echoed", fmt.Sprintf("%d tunnels: echoed", n), "count", float64(echoed.Load()))
	r.add("tunnels.rss_proxy", fmt.Sprintf("%d tunnels: peak RSS proxy", n), "MB", float64(peak[p.proxy.pid])/1e6)
	r.add("tunnels.rss_agent", fmt.Sprintf("%d tunnels: peak RSS agent", n), "MB", float64(peak[p.agent.pid])/1e6)
	r.add("tunnels.rss_total", fmt.Sprintf("%d tunnels: peak RSS proxy+agent", n), "MB", float64(peak[p.proxy.pid]+peak[p.agent.pid])/1e6)
	switch {
	case failed > 0:
		return fmt.Errorf("%d of %d tunnels did not open; first error: %w", failed, n, openErr)
	case echoErr != nil:
		return fmt.Errorf("echo: %w", echoErr)
	}
	return nil
}

// cost is the CPU time of proxy and agent and the UDP datagrams the host
// sent, from a start, to divide by what was done meanwhile.
type cost struct {
	p      *pair
	cpu    int64 // ticks
	udp    int64
	cpuErr error
	udpErr error
}

func (p *pair) startCost() cost {
	c := cost{p: p}
	c.cpu, c.cpuErr = cpuTotal(p.pids()...)
	c.udp, c.udpErr = udpSent()
	return c
}

// record adds the CPU of proxy+agent (µs) and the datagrams sent per one
// of n operations.
func (c cost) record(r *runRecorder, key, name string, n int) {
	if n == 0 {
		return
	}
	if cpu, err := cpuTotal(c.p.pids()...); c.cpuErr == nil && err == nil {
		r.add(key+".cpu", name+": CPU of proxy+agent per op", "µs", float64(cpu-c.cpu)/clockTicks*1e6/float64(n))
	}
	if udp, err := udpSent(); c.udpErr == nil && err == nil {
		r.add(key+".datagrams", name+": UDP datagrams sent per op (host)", "count", float64(udp-c.udp)/float64(n))
	}
}
