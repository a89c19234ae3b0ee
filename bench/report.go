package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
)

// report collects the figures of every run; finish turns them into
// medians and target results.
type report struct {
	Started time.Time      `json:"started"`
	Seconds float64        `json:"seconds"`
	Host    host           `json:"host"`
	Config  map[string]any `json:"config"`
	NoFile  noFile         `json:"rlimit_nofile"`
	Phases  []phaseResult  `json:"phases"`
	Metrics []*metric      `json:"metrics"`
	Targets []target       `json:"targets"`
	Errors  []string       `json:"errors"`
	Notes   []string       `json:"notes"`

	cfg   config
	mu    sync.Mutex
	byKey map[string]*metric
}

type host struct {
	OS     string `json:"os"`
	Arch   string `json:"arch"`
	CPUs   int    `json:"cpus"`
	Go     string `json:"go"`
	Kernel string `json:"kernel"`
	// BusyAtStart is how busy the host's CPUs were (in %, all CPUs) in
	// the half second before the run: other work skews every figure.
	BusyAtStart float64 `json:"busy_at_start_pct"`
}

// noFile is RLIMIT_NOFILE after raising the soft limit to the hard one.
type noFile struct {
	Soft   uint64 `json:"soft"`
	Hard   uint64 `json:"hard"`
	Error  string `json:"error,omitempty"`
	Limits string `json:"limits,omitempty"` // what the limit keeps from running, if anything
}

// check notes whether the limit is too low for the tunnels phase: the
// client (this process), the proxy, the agent and the origin each hold one
// socket per tunnel. The agents phase needs one UDP socket.
func (nf *noFile) check(cfg config) {
	need := uint64(cfg.Tunnels) + 256
	if cfg.selected("tunnels10k") && nf.Soft < need {
		nf.Limits = fmt.Sprintf("the tunnels phase needs about %d file descriptors in each process; the limit is %d, so tunnels will fail to open", need, nf.Soft)
	}
}

type phaseResult struct {
	Name    string  `json:"name"`
	Runs    int     `json:"runs_ok"`
	Seconds float64 `json:"seconds"`
}

// metric is one figure, measured once per run.
type metric struct {
	Key    string    `json:"key"`
	Phase  string    `json:"phase"`
	Name   string    `json:"name"`
	Unit   string    `json:"unit"`
	Runs   []float64 `json:"runs"`
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
}

// target is a goal from the issue, checked against a median.
type target struct {
	Name   string   `json:"name"`
	Value  *float64 `json:"value"` // nil: not measured
	Unit   string   `json:"unit"`
	Op     string   `json:"op"` // ">=", "<=", "<", or "" for a figure without a goal
	Limit  float64  `json:"limit"`
	Result string   `json:"result"` // PASS, MISS, n/a or info
	Note   string   `json:"note,omitempty"`
}

func newReport(cfg config) *report {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return &report{
		Started: time.Now(),
		Host: host{OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU(),
			Go: runtime.Version(), Kernel: strings.TrimSpace(string(kernel))},
		Config: map[string]any{
			"runs": cfg.Runs, "timeout": cfg.Timeout.String(), "phases": cfg.Only,
			"download_bytes": cfg.Download, "upload_bytes": cfg.Upload,
			"tunnels": cfg.Tunnels, "agents": cfg.Agents, "latency_n": cfg.LatencyN,
			"inflight": cfg.Inflight, "idle": cfg.Idle.String(), "quick": cfg.Quick,
			"log_level": cfg.LogLevel, "env": cfg.Env, "proxy_flags": cfg.ProxyFlags,
			"agent_flags": cfg.AgentFlags,
		},
		Errors: []string{},
		Notes:  []string{},
		cfg:    cfg,
		byKey:  map[string]*metric{},
	}
}

// runRecorder records the figures of one run of a phase.
type runRecorder struct {
	rep   *report
	phase string
	run   int // 0 for the first run
}

// add records one figure and prints it as progress.
func (r *runRecorder) add(key, name, unit string, v float64) {
	fmt.Fprintf(os.Stderr, "   %-55s %10s %s\n", name, formatNum(v), unit)
	r.rep.mu.Lock()
	defer r.rep.mu.Unlock()
	m := r.rep.byKey[key]
	if m == nil {
		m = &metric{Key: key, Phase: r.phase, Name: name, Unit: unit}
		r.rep.byKey[key] = m
		r.rep.Metrics = append(r.rep.Metrics, m)
	}
	m.Runs = append(m.Runs, v)
}

// latency records the p50, p90 and p99 of lat in microseconds.
func (r *runRecorder) latency(key, name string, lat []time.Duration) {
	slices.Sort(lat)
	for _, p := range []int{50, 90, 99} {
		r.add(fmt.Sprintf("%s.p%d", key, p), fmt.Sprintf("%s p%d", name, p), "µs", percentile(lat, p).Seconds()*1e6)
	}
}

// percentile is the nearest-rank percentile of sorted durations.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(float64(p)/100*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func (rep *report) errorf(format string, args ...any) {
	rep.mu.Lock()
	defer rep.mu.Unlock()
	rep.Errors = append(rep.Errors, fmt.Sprintf(format, args...))
}

func (rep *report) notes(notes []string) {
	rep.mu.Lock()
	defer rep.mu.Unlock()
	rep.Notes = append(rep.Notes, notes...)
}

func (rep *report) phaseDone(name string, runs int, d time.Duration) {
	rep.mu.Lock()
	defer rep.mu.Unlock()
	rep.Phases = append(rep.Phases, phaseResult{Name: name, Runs: runs, Seconds: d.Seconds()})
}

// finish computes medians and checks the targets.
func (rep *report) finish() {
	rep.mu.Lock()
	defer rep.mu.Unlock()
	rep.Seconds = time.Since(rep.Started).Seconds()
	if rep.Host.BusyAtStart > 20 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("the host was busy before the run (%.0f%% of its CPUs): other processes skew the figures",
			rep.Host.BusyAtStart))
	}
	for _, m := range rep.Metrics {
		s := slices.Sorted(slices.Values(m.Runs))
		m.Min, m.Max = s[0], s[len(s)-1]
		if len(s)%2 == 1 {
			m.Median = s[len(s)/2]
		} else {
			m.Median = (s[len(s)/2-1] + s[len(s)/2]) / 2
		}
	}
	if rep.NoFile.Limits != "" {
		rep.Notes = append(rep.Notes, "RLIMIT_NOFILE: "+rep.NoFile.Limits)
	}
	rep.Targets = rep.targets()
}

// median returns a metric's median, if it was measured.
func (rep *report) median(key string) (float64, bool) {
	m := rep.byKey[key]
	if m == nil {
		return 0, false
	}
	return m.Median, true
}

// ratio is the ratio of two medians, if both were measured.
func (rep *report) ratio(a, b string) (float64, bool) {
	x, ok1 := rep.median(a)
	y, ok2 := rep.median(b)
	if !ok1 || !ok2 || y == 0 {
		return 0, false
	}
	return x / y, true
}

// targets checks the goals of the issue. Goals stated for 10,000 tunnels
// or agents are only judged at that size.
func (rep *report) targets() []target {
	cfg := rep.cfg
	var ts []target
	var needs []string // the phases the next targets come from
	add := func(name, unit, op string, limit float64, v float64, ok bool, sizeNote string) {
		for _, p := range needs {
			if !cfg.selected(p) {
				return
			}
		}
		t := target{Name: name, Unit: unit, Op: op, Limit: limit}
		switch {
		case !ok:
			t.Result, t.Note = "n/a", "not measured"
		case op == "":
			t.Value, t.Result = &v, "info"
		case sizeNote != "":
			t.Value, t.Result, t.Note = &v, "n/a", sizeNote
		default:
			t.Value = &v
			pass := op == ">=" && v >= limit || op == "<=" && v <= limit || op == "<" && v < limit
			t.Result = "MISS"
			if pass {
				t.Result = "PASS"
			}
		}
		ts = append(ts, t)
	}
	tunnelsSize, agentsSize := "", ""
	if cfg.Tunnels != fullTunnels {
		tunnelsSize = fmt.Sprintf("goal is for %d tunnels; ran %d", fullTunnels, cfg.Tunnels)
	}
	if cfg.Agents != fullAgents {
		agentsSize = fmt.Sprintf("goal is for %d agents; ran %d", fullAgents, cfg.Agents)
	}

	needs = []string{"baseline", "throughput"}
	v, ok := rep.ratio("tunnel.download", "quic.download")
	add("1 tunnel download / raw QUIC 1 stream", "x", ">=", 0.9, v, ok, "")
	v, ok = rep.ratio("tunnel.upload", "quic.upload")
	add("1 tunnel upload / raw QUIC 1 stream", "x", ">=", 0.9, v, ok, "")
	v, ok = rep.ratio("tunnel.cpu_per_gib", "quic.cpu_per_gib")
	add("CPU per GiB: proxy+agent / raw QUIC both ends", "x", "<=", 1.3, v, ok, "")
	v, ok = rep.ratio("tunnel.download8", "quic.download8")
	add("8 tunnels / raw QUIC 8 streams (download)", "x", "", 0, v, ok, "")
	needs = []string{"baseline", "latency"}
	v, ok = rep.ratio("tunnel.new.p50", "direct.new.p50")
	add("new tunnel p50 / direct connect+GET p50", "x", "<=", 4, v, ok, "")
	v, ok = rep.ratio("tunnel.kept.p50", "direct.kept.p50")
	add("in-tunnel request p50 / direct p50", "x", "<=", 4, v, ok, "")
	// The same against direct TCP sampled alternately with the tunnel in
	// the latency phase: each direct sample then follows an idle gap as
	// long as a tunnel's, where the baseline phase runs them back to back
	// on a busy pair of processes. Neither is the one true floor; both
	// are shown (docs/benchmarks.md).
	needs = []string{"latency"}
	v, ok = rep.ratio("tunnel.new.p50", "tunnel.new.direct.p50")
	add("new tunnel p50 / direct, alternating", "x", "", 0, v, ok, "")
	v, ok = rep.ratio("tunnel.kept.p50", "tunnel.kept.direct.p50")
	add("in-tunnel request p50 / direct, alternating", "x", "", 0, v, ok, "")
	needs = []string{"baseline", "latency"}
	v, ok = rep.ratio("quic.rtt.p50", "direct.rtt.p50")
	add("raw QUIC echo round trip p50 / direct TCP's", "x", "", 0, v, ok, "")
	// A tunnel's round trip crosses TCP, QUIC and TCP: its floor is the
	// sum of their round trips, measured alone.
	tcp, ok1 := rep.median("direct.rtt.p50")
	quicRTT, ok2 := rep.median("quic.rtt.p50")
	tun, ok3 := rep.median("tunnel.rtt.p50")
	add("in-tunnel echo round trip p50 / (2 x TCP + QUIC)", "x", "", 0, tun/(2*tcp+quicRTT), ok1 && ok2 && ok3 && tcp+quicRTT > 0, "")
	// The same four processes with TCP relays instead of proxy and agent:
	// what the topology alone costs on this machine.
	v, ok = rep.ratio("tunnel.new.p50", "chain.new.p50")
	add("new tunnel p50 / TCP relay chain's connect+GET", "x", "", 0, v, ok, "")
	v, ok = rep.ratio("tunnel.kept.p50", "chain.kept.p50")
	add("in-tunnel request p50 / TCP relay chain's", "x", "", 0, v, ok, "")
	v, ok = rep.ratio("tunnel.rtt.p50", "chain.rtt.p50")
	add("in-tunnel echo round trip p50 / TCP relay chain's", "x", "", 0, v, ok, "")

	needs = []string{"h2"}
	v, ok = rep.ratio("h2.new.p50", "h2.fresh.p50")
	add("TLS proxy new tunnel p50: h2 stream / fresh TLS conn", "x", "", 0, v, ok, "")

	needs = []string{"tunnels10k"}
	v, ok = rep.median("tunnels.open_s")
	add(fmt.Sprintf("%d tunnels: time to open all", cfg.Tunnels), "s", "<=", 3, v, ok, tunnelsSize)
	// Every run must echo on every tunnel: the minimum, not the median.
	if m := rep.byKey["tunnels.echoed"]; m != nil {
		add(fmt.Sprintf("%d tunnels: all echo (fewest of any run)", cfg.Tunnels), "tunnels", ">=", float64(cfg.Tunnels), m.Min, true, "")
	} else {
		add(fmt.Sprintf("%d tunnels: all echo (fewest of any run)", cfg.Tunnels), "tunnels", ">=", float64(cfg.Tunnels), 0, false, "")
	}
	v, ok = rep.median("tunnels.rss_total")
	add(fmt.Sprintf("%d tunnels: peak RSS proxy+agent", cfg.Tunnels), "MB", "<", 300, v, ok, tunnelsSize)

	needs = []string{"agents10k"}
	v, ok = rep.median("agents.connect_s")
	add(fmt.Sprintf("%d agents: time to connect all", cfg.Agents), "s", "<", 60, v, ok, agentsSize)
	v, ok = rep.median("agents.rss_per_agent")
	add(fmt.Sprintf("%d agents: proxy RSS per agent", cfg.Agents), "KB", "<", 50, v, ok, agentsSize)
	v, ok = rep.median("agents.idle_cpu")
	add(fmt.Sprintf("%d agents idle: proxy CPU", cfg.Agents), "% core", "<", 10, v, ok, agentsSize)
	return ts
}

// formatNum prints a figure with about four significant digits.
func formatNum(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1000 || v == math.Trunc(v):
		return fmt.Sprintf("%.0f", v)
	case a >= 100:
		return fmt.Sprintf("%.1f", v)
	case a >= 10:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

// printTable writes the human-readable report.
func (rep *report) printTable(w io.Writer) {
	cfg := rep.cfg
	h := rep.Host
	fmt.Fprintf(w, "\nreverse-http benchmark, %s, %.0fs\n", rep.Started.Format(time.RFC3339), rep.Seconds)
	fmt.Fprintf(w, "host: %s/%s, %d CPUs (%.0f%% busy before the run), kernel %s, %s\n",
		h.OS, h.Arch, h.CPUs, h.BusyAtStart, h.Kernel, h.Go)
	fmt.Fprintf(w, "sizes: download %s, upload %s, tunnels %d, agents %d, latency-n %d, idle %s; %d runs per phase, median [min max]\n",
		formatSize(cfg.Download), formatSize(cfg.Upload), cfg.Tunnels, cfg.Agents, cfg.LatencyN, cfg.Idle, cfg.Runs)
	if cfg.Env != "" || cfg.ProxyFlags != "" || cfg.AgentFlags != "" {
		fmt.Fprintf(w, "settings: -env %q -proxy-flags %q -agent-flags %q\n", cfg.Env, cfg.ProxyFlags, cfg.AgentFlags)
	}
	nf := rep.NoFile
	fmt.Fprintf(w, "RLIMIT_NOFILE: %d (hard %d)", nf.Soft, nf.Hard)
	switch {
	case nf.Error != "":
		fmt.Fprintf(w, ", not raised: %s\n", nf.Error)
	case nf.Limits != "":
		fmt.Fprintf(w, "; LIMITS: %s\n", nf.Limits)
	default:
		fmt.Fprintf(w, "; enough for the phases run\n")
	}
	fmt.Fprintln(w, "units: MB = 10^6 bytes, KB = 10^3 bytes, GiB = 2^30 bytes")

	nameW := len("METRIC")
	for _, m := range rep.Metrics {
		nameW = max(nameW, len([]rune(m.Name)))
	}
	fmt.Fprintf(w, "\n%-11s %-*s %10s %10s %10s  %s\n", "PHASE", nameW, "METRIC", "MEDIAN", "MIN", "MAX", "UNIT")
	last := ""
	for _, m := range rep.Metrics {
		phase := ""
		if m.Phase != last {
			phase, last = m.Phase, m.Phase
		}
		fmt.Fprintf(w, "%-11s %s %10s %10s %10s  %s\n", phase, padRight(m.Name, nameW),
			formatNum(m.Median), formatNum(m.Min), formatNum(m.Max), m.Unit)
	}

	tW := len("TARGET")
	for _, t := range rep.Targets {
		tW = max(tW, len([]rune(t.Name)))
	}
	fmt.Fprintf(w, "\n%s %10s  %-16s %s\n", padRight("TARGET", tW), "VALUE", "GOAL", "RESULT")
	for _, t := range rep.Targets {
		val := "-"
		if t.Value != nil {
			val = formatNum(*t.Value)
		}
		goal := "-"
		if t.Op != "" {
			goal = fmt.Sprintf("%s %g %s", t.Op, t.Limit, t.Unit)
		}
		line := fmt.Sprintf("%s %10s  %-16s %s", padRight(t.Name, tW), val, goal, t.Result)
		if t.Note != "" {
			line += " (" + t.Note + ")"
		}
		fmt.Fprintln(w, line)
	}

	fmt.Fprintln(w)
	for _, p := range rep.Phases {
		fmt.Fprintf(w, "phase %-11s %d of %d runs ok, %.1fs\n", p.Name, p.Runs, cfg.Runs, p.Seconds)
	}
	if len(rep.Errors) > 0 {
		fmt.Fprintln(w, "\nERRORS")
		for _, e := range rep.Errors {
			fmt.Fprintln(w, "  "+e)
		}
	}
	if len(rep.Notes) > 0 {
		fmt.Fprintln(w, "\nNOTES")
		for _, n := range rep.Notes {
			fmt.Fprintln(w, "  "+n)
		}
	}
}

func padRight(s string, w int) string {
	if n := len([]rune(s)); n < w {
		return s + strings.Repeat(" ", w-n)
	}
	return s
}

func (rep *report) writeJSON(path string) error {
	rep.mu.Lock()
	defer rep.mu.Unlock()
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("-json: %w", err)
	}
	return nil
}
