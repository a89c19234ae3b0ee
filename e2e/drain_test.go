package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// sigterm sends SIGTERM to p without waiting; the returned channel gets
// how long p took to exit and its exit error.
func sigterm(p *process) <-chan struct {
	took time.Duration
	err  error
} {
	done := make(chan struct {
		took time.Duration
		err  error
	}, 1)
	p.mu.Lock()
	p.stopping = true
	p.mu.Unlock()
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	go func() {
		<-p.done
		done <- struct {
			took time.Duration
			err  error
		}{time.Since(start), p.err}
	}()
	return done
}

// TestDrainMovesAgents: on the HA topology (nginx for agents and clients,
// two proxies, an lb, memcached), the proxy holding agent 4711 gets
// SIGTERM while a 200 MiB download runs through it. The agent is told to
// move and connects to the other proxy; the download finishes with its
// checksum intact; a client opening new tunnels to the agent every 50ms
// all along sees no failure; the drained proxy exits 0 once the download
// ended. Run with the agent on QUIC through nginx's UDP balancer, and on
// TCP (the fallback transport) through its TCP balancer.
func TestDrainMovesAgents(t *testing.T) {
	t.Parallel()
	for _, transport := range []string{"quic", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			testDrainMovesAgents(t, transport)
		})
	}
}

func testDrainMovesAgents(t *testing.T, transport string) {
	key := writeClusterKey(t)
	c := startCluster(t, haConfig{proxies: 2, lbs: 1, nginx: true,
		proxyFlags: []string{"--store.cluster-key=" + key, "--shutdown-timeout=60s"},
		lbFlags:    []string{"--store.cluster-key=" + key}})
	a := c.startAgent(t, "4711", "", "--agent-client.transport="+transport,
		"--agent-client.tcp-server-address="+c.lb.agentTCPAddr)
	if a.holder.count("agent connected", "agent", "4711", "transport", transport) != 1 {
		t.Fatalf("agent not connected over %s:\n%s", transport, a.holder.log.String())
	}
	holder := a.holder
	web := c.origin("4711")
	entry := c.lb.tcpAddr
	auth := basicAuth("4711", c.auth.password("4711"))

	// The download: through nginx, the lb and the holder, read at about
	// 40 MiB/s so that it runs through the drain.
	const size = 200 << 20
	tn := mustConnect(t, entry, web.addr, auth)
	defer tn.Close()
	tn.SetDeadline(time.Now().Add(2 * time.Minute))
	fmt.Fprintf(tn, "GET /bytes?n=%d&seed=42 HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", size, web.addr)
	resp, err := http.ReadResponse(bufio.NewReader(tn), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("download: %v %v", resp, err)
	}
	want := sha256.New()
	io.Copy(want, io.LimitReader(pattern(42), size))
	got := sha256.New()
	readStarted := make(chan struct{})
	download := make(chan error, 1)
	go func() {
		buf := make([]byte, 256<<10)
		var n int64
		started := false
		start := time.Now()
		for {
			m, err := resp.Body.Read(buf)
			got.Write(buf[:m])
			n += int64(m)
			if n >= 20<<20 && !started {
				close(readStarted)
				started = true
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				download <- fmt.Errorf("after %d bytes: %w", n, err)
				return
			}
			// 40 MiB/s
			if ahead := time.Duration(n)*time.Second/(40<<20) - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
		}
		if n != size {
			download <- fmt.Errorf("%d bytes, want %d", n, size)
			return
		}
		download <- nil
	}()

	// New tunnels all along: every one must work.
	var (
		stop     = make(chan struct{})
		wg       sync.WaitGroup
		ok, fail atomic.Int64
		mu       sync.Mutex
		failures []string
	)
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if err := c.reach(entry, "4711", 10*time.Second); err != nil {
				fail.Add(1)
				mu.Lock()
				failures = append(failures, time.Now().Format("15:04:05.000")+" "+err.Error())
				mu.Unlock()
				continue
			}
			ok.Add(1)
		}
	})

	select {
	case <-readStarted:
	case err := <-download:
		t.Fatalf("download ended before the drain: %v", err)
	}
	time.Sleep(500 * time.Millisecond) // some new tunnels before the drain, too
	drainStart := time.Now()
	exited := sigterm(holder.process)
	a.waitLog(t, startTimeout, 1, "proxy asked this agent to move: connecting again; tunnels on this connection go on until the proxy closes it")
	var other *proxyProc
	for _, p := range c.proxies {
		if p != holder {
			other = p
		}
	}
	c.mc.waitRoute(t, startTimeout, "4711", other.httpAddr)
	moved := time.Since(drainStart)

	if err := <-download; err != nil {
		t.Fatalf("download through the draining proxy: %v", err)
	}
	downloaded := time.Since(drainStart)
	if hex.EncodeToString(got.Sum(nil)) != hex.EncodeToString(want.Sum(nil)) {
		t.Fatal("download through the draining proxy: checksum differs")
	}
	select {
	case e := <-exited:
		if e.err != nil {
			t.Errorf("drained proxy: exit %v, want status 0", e.err)
		}
		t.Logf("drain (agent on %s): agent's route moved after %s; the 200 MiB download ended after %s; the proxy exited after %s",
			transport, moved.Round(time.Millisecond), downloaded.Round(time.Millisecond), e.took.Round(time.Millisecond))
	case <-time.After(20 * time.Second):
		t.Fatal("the drained proxy did not exit within 20s of its last tunnel ending")
	}
	time.Sleep(time.Second) // new tunnels after the proxy left, too
	close(stop)
	wg.Wait()
	t.Logf("new tunnels during the drain: %d ok, %d failed", ok.Load(), fail.Load())
	if fail.Load() > 0 || ok.Load() < 20 {
		t.Errorf("new tunnels to agent 4711 during the drain: %d ok, %d failed, want all ok (and at least 20):\n%v", ok.Load(), fail.Load(), failures)
	}
	holder.waitLog(t, startTimeout, 1, "draining: agents told to move", "agents", "1", "sent", "1")
	holder.waitLog(t, startTimeout, 1, "routes released")
}
