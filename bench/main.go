// Command rh-bench is the benchmark suite of reverse-http. It builds the
// real binary, runs its proxy and agent as processes, drives tunnels through
// them to an origin that runs in a helper process, and compares what it
// measures with baselines measured in the same run: a direct TCP connection
// to the origin and a raw quic-go connection between two helper processes.
//
//	go run ./bench                      # everything, full size
//	go run ./bench -quick               # every size shrunk ~10x
//	go run ./bench -only=baseline,throughput -runs=5 -json=out.json
//
// Every figure is the median of -runs runs, with their min and max. Every
// run starts fresh proxy and agent processes. Each phase is bounded by
// -timeout. The table goes to stdout, progress to stderr, and everything to
// the -json file. It needs Linux: it reads CPU time and memory from /proc.
//
// The same binary is re-executed for its helper processes:
//
//	rh-bench origin        HTTP origin and TCP echo server
//	rh-bench quic-server   raw QUIC baseline, server side
//	rh-bench quic-client   raw QUIC baseline, client side
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Sizes in flags and in the report.
const (
	KiB = 1 << 10
	MiB = 1 << 20
	GiB = 1 << 30
)

// config is what the flags ask for.
type config struct {
	Runs     int
	Timeout  time.Duration // per phase
	Only     []string      // phases to run
	Download int64         // bytes
	Upload   int64         // bytes
	Tunnels  int
	Agents   int
	LatencyN int
	Inflight int
	Idle     time.Duration
	Hold     time.Duration // 10k tunnels stay open this long after the echo
	Quick    bool
	JSONPath string
	Bin      string
	Keep     bool
	LogLevel string // of proxy and agent
	// ProxyFlags and AgentFlags are extra flags for the processes, e.g.
	// --admin.listen-address=127.0.0.1:9090 --admin.pprof to profile them.
	ProxyFlags, AgentFlags string
	// Env is extra environment of proxy, agent, the raw QUIC helpers and
	// the TCP relay chain's relays, e.g. GOMAXPROCS=1.
	Env string
	// PprofDir, if set, gets CPU and heap profiles of proxy and agent
	// taken during the first run of each phase.
	PprofDir string
}

// Sizes the targets are defined for.
const (
	fullTunnels = 10_000
	fullAgents  = 10_000
)

func main() {
	if len(os.Args) > 1 {
		// Helper processes: see package doc.
		helpers := map[string]func([]string) error{
			"origin":      originMain,
			"quic-server": quicServerMain,
			"tcp-relay":   tcpRelayMain,
			"quic-client": quicClientMain,
		}
		if fn, ok := helpers[os.Args[1]]; ok {
			if err := fn(os.Args[2:]); err != nil {
				fmt.Fprintf(os.Stderr, "rh-bench %s: %v\n", os.Args[1], err)
				os.Exit(1)
			}
			os.Exit(0)
		}
	}
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cfg, err := parseFlags(args)
	if err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		fmt.Fprintln(os.Stderr, "rh-bench:", err)
		return 2
	}
	if runtime.GOOS != "linux" {
		fmt.Fprintln(os.Stderr, "rh-bench: needs Linux (CPU time and memory come from /proc)")
		return 2
	}
	rep := newReport(cfg)
	rep.NoFile = raiseNoFile(cfg)
	rep.Host.BusyAtStart = hostBusy(500 * time.Millisecond)

	dir, err := os.MkdirTemp("", "rh-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "rh-bench:", err)
		return 1
	}
	b := &bench{cfg: cfg, rep: rep, dir: dir, procs: newProcSet(dir)}
	defer b.close()
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)

	// The first signal ends the run: phases stop, processes are stopped and
	// the table is printed. A second signal, or 15s later still running,
	// kills the children by PID and exits.
	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigc
		cancel(fmt.Errorf("interrupted (%v)", s))
		fmt.Fprintf(os.Stderr, "rh-bench: %v: stopping\n", s)
		select {
		case <-sigc:
		case <-time.After(15 * time.Second):
		}
		b.procs.killAll()
		os.Exit(130)
	}()

	if err := b.setup(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "rh-bench: setup:", err)
		return 1
	}
	for _, ph := range phases {
		if !cfg.selected(ph.name) {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		b.runPhase(ctx, ph)
	}
	b.procs.stopAll()
	rep.finish()
	rep.notes(b.procs.logSummary())
	rep.printTable(os.Stdout)
	if cfg.JSONPath != "" {
		if err := rep.writeJSON(cfg.JSONPath); err != nil {
			fmt.Fprintln(os.Stderr, "rh-bench:", err)
			return 1
		}
		fmt.Fprintln(os.Stderr, "rh-bench: wrote", cfg.JSONPath)
	}
	switch {
	case ctx.Err() != nil:
		return 130
	case len(rep.Errors) > 0:
		return 1
	}
	return 0
}

func parseFlags(args []string) (config, error) {
	cfg := config{Download: 1 * GiB, Upload: 512 * MiB}
	fs := flag.NewFlagSet("rh-bench", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: go run ./bench [flags]\n\nPhases: %s\n\nFlags:\n", strings.Join(phaseNames(), ", "))
		fs.PrintDefaults()
	}
	fs.IntVar(&cfg.Runs, "runs", 3, "runs of each phase; figures are the median (with min and max)")
	fs.DurationVar(&cfg.Timeout, "timeout", 300*time.Second, "time limit of each phase (all its runs)")
	only := fs.String("only", strings.Join(phaseNames(), ","), "comma-separated phases to run")
	fs.Var((*sizeFlag)(&cfg.Download), "download", "bytes downloaded through one tunnel or connection (and in total by 8)")
	fs.Var((*sizeFlag)(&cfg.Upload), "upload", "bytes uploaded through one tunnel or connection")
	fs.IntVar(&cfg.Tunnels, "tunnels", fullTunnels, "tunnels held open at once through one agent")
	fs.IntVar(&cfg.Agents, "agents", fullAgents, "agents connected at once to one proxy")
	fs.IntVar(&cfg.LatencyN, "latency-n", 2000, "samples per latency measurement")
	fs.IntVar(&cfg.Inflight, "inflight", 256, "tunnels or agents being opened at once in the 10k phases")
	fs.DurationVar(&cfg.Idle, "idle", 10*time.Second, "how long the connected agents sit idle while the proxy's CPU is measured")
	fs.DurationVar(&cfg.Hold, "hold", 0, "keep the 10,000 tunnels open this long after their echo, to profile the processes (e.g. with -proxy-flags='--admin.listen-address=... --admin.pprof')")
	fs.BoolVar(&cfg.Quick, "quick", false, "shrink every size ~10x (flags given explicitly are kept)")
	fs.StringVar(&cfg.JSONPath, "json", "bench.json", "write the results to this JSON file (empty: none)")
	fs.StringVar(&cfg.Bin, "bin", "", "reverse-http binary to use (default: go build ./cmd/reverse-http)")
	fs.BoolVar(&cfg.Keep, "keep", false, "keep the work directory (binary, certificates, process logs)")
	fs.StringVar(&cfg.LogLevel, "log-level", "warn", "--log.level of proxy and agent; their logs are in the work directory (see -keep)")
	fs.StringVar(&cfg.ProxyFlags, "proxy-flags", "", "extra flags for the proxy, space-separated (e.g. '--admin.listen-address=127.0.0.1:9090 --admin.pprof' to fetch /debug/pprof/)")
	fs.StringVar(&cfg.AgentFlags, "agent-flags", "", "extra flags for the agent, space-separated")
	fs.StringVar(&cfg.Env, "env", "", "extra environment of proxy, agent, the raw QUIC baseline's two ends and the TCP relay chain's relays, space-separated (e.g. GOMAXPROCS=1 or GOGC=50)")
	fs.StringVar(&cfg.PprofDir, "pprof", "", "write CPU and heap profiles of proxy and agent, taken during the first run of each phase (whose figures then include the profiling), into this directory (read them with go tool pprof -top FILE)")
	fs.DurationVar(&agentKeepAlive, "agent-keepalive", agentKeepAlive, "QUIC keep-alive period of the load generator's agents (the agent's --agent-client.keep-alive default)")
	fs.DurationVar(&agentIdleTimeout, "agent-idle-timeout", agentIdleTimeout, "QUIC idle timeout of the load generator's agents (the agent's --agent-client.idle-timeout default)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if cfg.Quick {
		shrink := func(name string, apply func()) {
			if !set[name] {
				apply()
			}
		}
		shrink("download", func() { cfg.Download /= 10 })
		shrink("upload", func() { cfg.Upload /= 10 })
		shrink("tunnels", func() { cfg.Tunnels /= 10 })
		shrink("agents", func() { cfg.Agents /= 10 })
		shrink("latency-n", func() { cfg.LatencyN /= 10 })
		shrink("idle", func() { cfg.Idle = 2 * time.Second })
	}
	for _, p := range strings.Split(*only, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if !isPhase(p) {
			return cfg, fmt.Errorf("-only: unknown phase %q (phases: %s)", p, strings.Join(phaseNames(), ", "))
		}
		cfg.Only = append(cfg.Only, p)
	}
	switch {
	case cfg.Runs < 1:
		return cfg, fmt.Errorf("-runs: want at least 1, got %d", cfg.Runs)
	case cfg.Timeout <= 0:
		return cfg, fmt.Errorf("-timeout: want a positive duration, got %s", cfg.Timeout)
	case cfg.Download < 8 || cfg.Upload < 1:
		return cfg, fmt.Errorf("-download and -upload: want at least 8 and 1 bytes")
	case cfg.Tunnels < 1 || cfg.Agents < 1 || cfg.LatencyN < 1 || cfg.Inflight < 1:
		return cfg, fmt.Errorf("-tunnels, -agents, -latency-n and -inflight: want at least 1")
	case cfg.Idle <= 0:
		return cfg, fmt.Errorf("-idle: want a positive duration, got %s", cfg.Idle)
	}
	return cfg, nil
}

func (c config) selected(phase string) bool {
	for _, p := range c.Only {
		if p == phase {
			return true
		}
	}
	return false
}

// sizeFlag is a byte count written as 1GiB, 512MiB, 64KiB, 100MB or 1048576.
type sizeFlag int64

func (s *sizeFlag) String() string { return formatSize(int64(*s)) }

func (s *sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s = sizeFlag(n)
	return nil
}

func parseSize(v string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{
		{"GiB", GiB}, {"MiB", MiB}, {"KiB", KiB},
		{"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1},
	}
	num, mult := strings.TrimSpace(v), int64(1)
	for _, u := range units {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("size %q: want a number with an optional unit (GiB, MiB, KiB, GB, MB, KB, B)", v)
	}
	return int64(f * float64(mult)), nil
}

func formatSize(n int64) string {
	switch {
	case n >= GiB && n%GiB == 0:
		return fmt.Sprintf("%dGiB", n/GiB)
	case n >= MiB && n%MiB == 0:
		return fmt.Sprintf("%dMiB", n/MiB)
	case n >= MiB:
		return fmt.Sprintf("%.1fMiB", float64(n)/MiB)
	case n >= KiB && n%KiB == 0:
		return fmt.Sprintf("%dKiB", n/KiB)
	}
	return fmt.Sprintf("%dB", n)
}

// exitWithStdin ends a helper process when its parent closes the helper's
// stdin (or dies), besides the parent-death signal on Linux.
func exitWithStdin() {
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}
