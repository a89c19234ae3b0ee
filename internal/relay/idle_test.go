package relay_test

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/reverse-http/reverse-http/internal/relay"
)

// startIdle runs StartIdle and returns a channel with its result.
func startIdle(a, b relay.Conn, ic *relay.IdleCloser) <-chan relay.Result {
	done := make(chan relay.Result, 1)
	relay.StartIdle(a, b, ic, func(res relay.Result) { done <- res })
	return done
}

// TestIdleTunnelEnds: a tunnel that moves bytes in either direction more
// often than the timeout stays open, even when one direction is silent
// throughout; once nothing moves, it ends with ErrIdle within the timeout
// and a tick, and both peers see the end.
func TestIdleTunnelEnds(t *testing.T) {
	const timeout = 200 * time.Millisecond
	ic := relay.NewIdleCloser(timeout)
	peerA, a := tcpPair(t)
	peerB, b := tcpPair(t)
	done := startIdle(relay.NewTCP(a, nil), relay.NewTCP(b, nil), ic)

	// Only B→A moves, every 50ms, for 4 timeouts.
	buf := make([]byte, 1)
	for i := range 16 {
		if _, err := peerB.Write([]byte{byte(i)}); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if _, err := io.ReadFull(peerA, buf); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		select {
		case res := <-done:
			t.Fatalf("tunnel ended after %d writes while bytes moved: %+v", i, res)
		case <-time.After(50 * time.Millisecond):
		}
	}

	start := time.Now()
	var res relay.Result
	select {
	case res = <-done:
	case <-time.After(wait):
		t.Fatalf("idle tunnel still open after %s", wait)
	}
	took := time.Since(start)
	if !errors.Is(res.Err, relay.ErrIdle) || res.Err.Error() != "idle timeout" {
		t.Fatalf("result error %v, want %v", res.Err, relay.ErrIdle)
	}
	if res.BToA != 16 || res.AToB != 0 {
		t.Errorf("bytes %d→, %d←; want 0 and 16", res.AToB, res.BToA)
	}
	// 40ms of the last 50ms wait were idle already; allow a tick and some
	// scheduling on a busy machine.
	if took < timeout-60*time.Millisecond || took > timeout+time.Second {
		t.Errorf("ended %s after the last byte, want about %s", took, timeout)
	}
	for name, c := range map[string]net.Conn{"A": peerA, "B": peerB} {
		if _, err := c.Read(buf); err == nil {
			t.Errorf("peer %s: read after the idle end succeeded", name)
		}
	}
}

// TestIdleCloserNil: without a timeout nothing is watched, and a tunnel
// that stays silent stays open.
func TestIdleCloserNil(t *testing.T) {
	if ic := relay.NewIdleCloser(0); ic != nil {
		t.Fatalf("NewIdleCloser(0) = %v, want nil", ic)
	}
	peerA, a := tcpPair(t)
	peerB, b := tcpPair(t)
	done := startIdle(relay.NewTCP(a, nil), relay.NewTCP(b, nil), nil)
	select {
	case res := <-done:
		t.Fatalf("tunnel without idle timeout ended: %+v", res)
	case <-time.After(300 * time.Millisecond):
	}
	peerA.Close()
	peerB.Close()
	if res := waitJoin(t, done); errors.Is(res.Err, relay.ErrIdle) {
		t.Errorf("result error %v", res.Err)
	}
}

// TestIdleConn: a watched connection stays usable while bytes move, and
// fails with ErrIdle once they stop.
func TestIdleConn(t *testing.T) {
	const timeout = 150 * time.Millisecond
	ic := relay.NewIdleCloser(timeout)
	peer, c := tcpPair(t)
	wc := ic.Conn(c)
	buf := make([]byte, 1)
	for i := range 8 {
		if _, err := peer.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(wc, buf); err != nil {
			t.Fatalf("read %d while active: %v", i, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	start := time.Now()
	_, err := wc.Read(buf)
	if !errors.Is(err, relay.ErrIdle) {
		t.Fatalf("read on an idle connection: %v, want %v", err, relay.ErrIdle)
	}
	if took := time.Since(start); took > timeout+time.Second {
		t.Errorf("idle read returned after %s", took)
	}
	if _, err := peer.Read(buf); err == nil {
		t.Error("peer: read after the idle close succeeded")
	}
	wc.Close()
}
