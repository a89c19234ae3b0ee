// Command fleet runs many agents in one process for the scale tests: each
// is a real internal/agent.Agent with its own QUIC connection and UDP
// socket, default settings, answering tunnels like `reverse-http agent`.
//
//	fleet -server 127.0.0.1:4242 -ca ca.pem -n 2000 -prefix fleet-
//
// It prints "stats http://ADDR/stats" once listening; GET /stats answers
// {"connected": N, "messages": {"log message": count, ...}, "errors": [...]}
// with the number of agents connected now, how often each log message was
// written (the agents' own log lines, counted instead of printed) and a
// sample of the distinct errors they logged. It runs until SIGTERM or
// SIGINT, or -duration.
//
// With -redirect, the agents connect to a UDP relay in this process that
// sends each new flow to the current target, -server at first; POST
// /target?addr=HOST:PORT changes it. That stands in for the agents' UDP
// load balancer when a test kills the proxy they are on.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"os/signal"
	rtmetrics "runtime/metrics"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/agent"
	"github.com/reverse-http/reverse-http/internal/metrics"
)

func main() {
	server := flag.String("server", "", "the proxy's agent server (UDP host:port)")
	ca := flag.String("ca", "", "CA certificate (PEM) that verifies the proxy")
	n := flag.Int("n", 100, "number of agents")
	prefix := flag.String("prefix", "fleet-", "agent IDs are PREFIX%05d")
	ramp := flag.Duration("ramp", 5*time.Second, "spread the agents' first connection over this long")
	stats := flag.String("stats", "127.0.0.1:0", "TCP address of the stats endpoint")
	duration := flag.Duration("duration", time.Hour, "stop after this long")
	redirect := flag.Bool("redirect", false, "connect through an in-process UDP relay whose target POST /target changes")
	perSocket := flag.Int("per-socket", 1, "agents sharing one UDP socket (1: a new socket per connection attempt, as a real agent)")
	flag.Parse()
	if err := run(*server, *ca, *n, *prefix, *ramp, *stats, *duration, *redirect, *perSocket); err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		os.Exit(1)
	}
}

func run(server, caFile string, n int, prefix string, ramp time.Duration, statsAddr string, duration time.Duration, redirect bool, perSocket int) error {
	raiseFileLimit()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("%s: no certificate", caFile)
	}
	tlsConf := &tls.Config{RootCAs: pool, ServerName: "localhost"}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, duration)
	defer cancel()

	counts := &counter{m: map[string]int{}}
	log := slog.New(counts)
	m := metrics.New()

	var red *redirector
	if redirect {
		if red, err = newRedirector(server); err != nil {
			return err
		}
		defer red.close()
		server = red.addr
	}
	ln, err := net.Listen("tcp", statsAddr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		var d dto.Metric
		m.AgentsConnected.Write(&d)
		msgs, errs := counts.snapshot()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"connected": int(d.GetGauge().GetValue()), "messages": msgs, "errors": errs,
			"sched_latency_max_ms": schedLatencyMax()})
	})
	// For a look at what the load generator itself costs.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("POST /target", func(w http.ResponseWriter, r *http.Request) {
		if red == nil {
			http.Error(w, "not started with -redirect", http.StatusBadRequest)
			return
		}
		red.target.Store(r.URL.Query().Get("addr"))
	})
	hs := &http.Server{Handler: mux}
	go hs.Serve(ln)
	defer hs.Close()
	fmt.Printf("stats http://%s/stats\n", ln.Addr())

	var wg sync.WaitGroup
	var tr *quic.Transport
	for i := range n {
		if perSocket > 1 && i%perSocket == 0 {
			udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				return err
			}
			tr = &quic.Transport{Conn: udp}
			defer tr.Close()
		}
		a := agent.New(agent.Config{
			ServerAddr: server,
			TLS:        tlsConf,
			Credential: func() (string, error) { return fmt.Sprintf("%s%05d", prefix, i), nil },
			Metrics:    m,
			Transport:  tr,
			// QUIC only: the fleet measures QUIC agents; in auto, an
			// agent whose handshake a loaded proxy answers too late
			// falls back to TCP and stays there until its probe.
			TransportMode: agent.TransportQUIC,
		}, log)
		wg.Go(func() {
			if ramp > 0 {
				t := time.NewTimer(ramp * time.Duration(i) / time.Duration(n))
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
			}
			a.Run(ctx)
		})
	}
	wg.Wait()
	return nil
}

// counter is a slog.Handler that counts records by message, at Info and
// above, and keeps up to maxErrors distinct "error" values. Messages are
// the agents' constant texts, so the map stays small.
type counter struct {
	mu   sync.Mutex
	m    map[string]int
	errs []string
}

const maxErrors = 20

func (c *counter) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }
func (c *counter) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[r.Message]++
	if len(c.errs) < maxErrors {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "error" || a.Key == "reason" {
				if e := a.Value.String(); !slices.Contains(c.errs, e) {
					c.errs = append(c.errs, e)
				}
			}
			return true
		})
	}
	return nil
}
func (c *counter) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *counter) WithGroup(string) slog.Handler      { return c }

func (c *counter) snapshot() (map[string]int, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.m))
	for k, v := range c.m {
		out[k] = v
	}
	return out, slices.Clone(c.errs)
}

// redirector relays UDP flows to the target current when each flow began.
type redirector struct {
	addr   string
	pc     *net.UDPConn
	target atomic.Value // string
	mu     sync.Mutex
	flows  map[netip.AddrPort]*net.UDPConn
	wg     sync.WaitGroup
}

func newRedirector(target string) (*redirector, error) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	pc.SetReadBuffer(8 << 20)
	r := &redirector{addr: pc.LocalAddr().String(), pc: pc, flows: map[netip.AddrPort]*net.UDPConn{}}
	r.target.Store(target)
	r.wg.Go(r.run)
	return r, nil
}

func (r *redirector) close() {
	r.pc.Close()
	r.mu.Lock()
	for _, u := range r.flows {
		u.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

func (r *redirector) run() {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := r.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		r.mu.Lock()
		up := r.flows[from]
		if up == nil {
			raddr, err := net.ResolveUDPAddr("udp", r.target.Load().(string))
			if err == nil {
				up, err = net.DialUDP("udp", nil, raddr)
			}
			if err != nil {
				r.mu.Unlock()
				continue
			}
			r.flows[from] = up
			r.wg.Go(func() { r.back(up, from) })
		}
		r.mu.Unlock()
		up.Write(buf[:n])
	}
}

// back copies a flow's answers to its client until the target fails
// (a dead target's ICMP errors end it) or the relay closes.
func (r *redirector) back(up *net.UDPConn, client netip.AddrPort) {
	defer func() {
		r.mu.Lock()
		if r.flows[client] == up {
			delete(r.flows, client)
		}
		r.mu.Unlock()
		up.Close()
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := up.Read(buf)
		if err != nil {
			return
		}
		if _, err := r.pc.WriteToUDPAddrPort(buf[:n], client); err != nil {
			return
		}
	}
}

// schedLatencyMax is the longest a goroutine of this process waited to
// run, so far, in milliseconds: when it nears the agents' idle timeout
// (6s), their keep-alives are late because the load generator itself is
// starved, not the proxy.
func schedLatencyMax() float64 {
	s := []rtmetrics.Sample{{Name: "/sched/latencies:seconds"}}
	rtmetrics.Read(s)
	if s[0].Value.Kind() != rtmetrics.KindFloat64Histogram {
		return 0
	}
	h := s[0].Value.Float64Histogram()
	for i := len(h.Counts) - 1; i >= 0; i-- {
		if h.Counts[i] > 0 {
			return h.Buckets[i] * 1000
		}
	}
	return 0
}

// raiseFileLimit lifts RLIMIT_NOFILE to its hard limit: every agent has a
// UDP socket, and every tunnel a TCP connection.
func raiseFileLimit() {
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
}
