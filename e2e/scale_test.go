package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestManyTunnels holds 10,000 CONNECT tunnels open at once through one
// agent to an echo origin, checks each of them, then closes them all. The
// origin runs in a helper process so that its sockets do not count against
// this process's file limit. It does not run in parallel, so that the
// figures mean something.
func TestManyTunnels(t *testing.T) {
	const (
		n       = 10_000
		dialers = 500
		budget  = 90 * time.Second // for all of it, on a slow machine
	)
	if testing.Short() {
		t.Skip("-short: skipping 10,000 tunnels")
	}
	if need := uint64(n + 1000); fileLimit < need {
		t.Skipf("RLIMIT_NOFILE is %d and cannot be raised; %d tunnels need %d", fileLimit, n, need)
	}
	echoSrv := startEchoHelper(t)
	p := startProxy(t)
	startAgent(t, p, "4711")
	auth := basicAuth("4711", "noauth")
	deadline := time.Now().Add(budget)

	tunnels := make([]*tunnel, n)
	defer func() {
		for _, tn := range tunnels {
			if tn != nil {
				tn.Close()
			}
		}
	}()
	msg := func(i int, round string) string { return fmt.Sprintf("%s %05d\n", round, i) }
	roundTrip := func(tn *tunnel, m string) error {
		tn.SetDeadline(deadline)
		if _, err := io.WriteString(tn, m); err != nil {
			return err
		}
		buf := make([]byte, len(m))
		if _, err := io.ReadFull(tn, buf); err != nil {
			return err
		}
		if string(buf) != m {
			return fmt.Errorf("echo %q, want %q", buf, m)
		}
		return nil
	}

	latency := make([]time.Duration, n) // of each tunnel's CONNECT and first echo
	start := time.Now()
	err := parallel(n, dialers, func(i int) error {
		t0 := time.Now()
		defer func() { latency[i] = time.Since(t0) }()
		tn, err := dialConnect(p.httpAddr, echoSrv.addr, auth, nil)
		if err != nil {
			return err
		}
		tunnels[i] = tn
		if tn.resp.StatusCode != 200 {
			body, _ := io.ReadAll(tn.resp.Body)
			return fmt.Errorf("CONNECT: %s %q", tn.resp.Status, body)
		}
		return roundTrip(tn, msg(i, "open"))
	})
	opened := time.Since(start)
	if err != nil {
		t.Fatalf("opening %d tunnels (%s): %v", n, opened.Round(time.Millisecond), err)
	}
	active, err := echoSrv.active()
	if err != nil {
		t.Fatal(err)
	}
	if active != n {
		t.Fatalf("echo origin holds %d connections with all tunnels open, want %d", active, n)
	}

	// All open: each still works.
	start = time.Now()
	if err := parallel(n, dialers, func(i int) error { return roundTrip(tunnels[i], msg(i, "again")) }); err != nil {
		t.Fatalf("second round: %v", err)
	}
	again := time.Since(start)

	// Half-close each; the origin's FIN comes back through the tunnel.
	start = time.Now()
	err = parallel(n, dialers, func(i int) error {
		tn := tunnels[i]
		tn.SetDeadline(deadline)
		if err := tn.Conn.(*net.TCPConn).CloseWrite(); err != nil {
			return err
		}
		if b, err := io.ReadAll(tn); err != nil || len(b) != 0 {
			return fmt.Errorf("after half-close: %q, %v; want EOF", b, err)
		}
		return tn.Close()
	})
	if err != nil {
		t.Fatalf("closing: %v", err)
	}
	closed := time.Since(start)
	if err := waitFor(time.Until(deadline), func() error {
		if a, err := echoSrv.active(); err != nil || a != 0 {
			return fmt.Errorf("echo origin still holds %d connections (%v)", a, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(latency)
	t.Logf("%d tunnels through one agent: opened (with one echo each, %d dialers) in %s (%.0f/s; per tunnel p50 %s, p99 %s, max %s); echo on all open tunnels in %s; half-closed and closed in %s",
		n, dialers, opened.Round(time.Millisecond), float64(n)/opened.Seconds(),
		latency[n/2].Round(time.Millisecond), latency[n*99/100].Round(time.Millisecond), latency[n-1].Round(time.Millisecond),
		again.Round(time.Millisecond), closed.Round(time.Millisecond))

	// The proxy logs every tunnel at its end, and still serves.
	p.waitLog(t, time.Until(deadline), n, "tunnel closed", "destination", echoSrv.addr)
	tn := mustConnect(t, p.httpAddr, echoSrv.addr, auth)
	defer tn.Close()
	echoOnce(t, tn, "after")
}

// parallel runs fn(0) ... fn(n-1) on at most workers goroutines. It stops
// handing out work after the first error, which it returns with how many
// calls failed.
func parallel(n, workers int, fn func(i int) error) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		next     atomic.Int64
		failures atomic.Int64
		once     sync.Once
		first    error
		wg       sync.WaitGroup
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					failures.Add(1)
					once.Do(func() { first = fmt.Errorf("#%d: %w", i, err) })
					cancel()
				}
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return errors.Join(first, fmt.Errorf("%d failed", failures.Load()))
	}
	return nil
}

// TestMaxStreams runs an agent that accepts 2 tunnels at once
// (--agent-client.max-streams=2): a third waits for a free one and gets
// 504 after the proxy's dial timeout; once a tunnel ends, the next one
// opens.
func TestMaxStreams(t *testing.T) {
	t.Parallel()
	e := startEcho(t)
	p := startProxy(t, "--agent-server.agent.dial-timeout=1s")
	startAgent(t, p, "4711", "--agent-client.max-streams=2")
	auth := basicAuth("4711", "noauth")
	first := mustConnect(t, p.httpAddr, e.addr, auth)
	defer first.Close()
	echoOnce(t, first, "one")
	second := mustConnect(t, p.httpAddr, e.addr, auth)
	defer second.Close()
	echoOnce(t, second, "two")

	start := time.Now()
	third, err := dialConnect(p.httpAddr, e.addr, auth, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(third.resp.Body)
	third.Close()
	checkRefusal(t, third.resp, body, 504)
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Errorf("third tunnel refused after %s, before the 1s dial timeout", took)
	}

	first.Close()
	var fourth *tunnel
	if err := waitFor(15*time.Second, func() error {
		tn, err := dialConnect(p.httpAddr, e.addr, auth, nil)
		if err != nil {
			return err
		}
		if tn.resp.StatusCode != 200 {
			tn.Close()
			return fmt.Errorf("CONNECT: %s", tn.resp.Status)
		}
		fourth = tn
		return nil
	}); err != nil {
		t.Fatalf("after a tunnel ended: %v", err)
	}
	defer fourth.Close()
	echoOnce(t, fourth, "four")
	echoOnce(t, second, "two again")
}
