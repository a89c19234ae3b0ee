package proxy

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/reverse-http/reverse-http/internal/metrics"
)

// TestRefusedAddressRefusedAgain: a QUIC address refused is refused again,
// uncounted, for one to two seconds, even with a place free (the second
// Initial packet of a refused ClientHello); then it is admitted. Another
// address, and TCP, are admitted at once. The memory is bounded.
func TestRefusedAddressRefusedAgain(t *testing.T) {
	m := metrics.New()
	l := newHandshakeLimiter(0, 0, 1, slog.New(slog.NewTextHandler(io.Discard, nil)), m)
	a := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1000}
	b := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1001}
	busy := func() float64 {
		var c dto.Metric
		m.AgentConnections.WithLabelValues("busy").Write(&c)
		return c.GetCounter().GetValue()
	}
	now := time.Now()
	done, err := l.admit(now, b, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.admit(now, a, true); !errors.Is(err, errHandshakeBusy) {
		t.Fatalf("over the bound: %v, want errHandshakeBusy", err)
	}
	done() // a place comes free
	if _, err := l.admit(now.Add(10*time.Millisecond), a, true); !errors.Is(err, errHandshakeBusy) {
		t.Fatalf("the refused address again: %v, want errHandshakeBusy", err)
	}
	if n := busy(); n != 1 {
		t.Errorf("busy counted %v times, want 1: the same attempt's second packet is not a new refusal", n)
	}
	if done, err := l.admit(now.Add(10*time.Millisecond), a, false); err != nil {
		t.Errorf("TCP from the same address: %v, want admitted", err)
	} else {
		done()
	}
	if done, err := l.admit(now.Add(1500*time.Millisecond), b, true); err != nil {
		t.Errorf("another address: %v, want admitted", err)
	} else {
		done()
	}
	if done, err := l.admit(now.Add(2500*time.Millisecond), a, true); err != nil {
		t.Errorf("the refused address after 2.5s: %v, want admitted", err)
	} else {
		done()
	}

	// Bounded: a storm of refused addresses is remembered up to maxRecent
	// in each of two generations.
	hold, _ := l.admit(now.Add(3*time.Second), b, true)
	for i := range 3 * maxRecent {
		at := now.Add(3*time.Second + time.Duration(i)*time.Millisecond/4) // 3 generations
		l.admit(at, &net.UDPAddr{IP: net.IPv4(10, byte(i>>16), byte(i>>8), byte(i)), Port: 1}, true)
		if len(l.recent) > maxRecent || len(l.older) > maxRecent {
			t.Fatalf("remembered %d and %d refused addresses, want at most %d each", len(l.recent), len(l.older), maxRecent)
		}
	}
	hold()
}
