package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/reverse-http/reverse-http/internal/allow"
	"github.com/reverse-http/reverse-http/internal/wire"
)

func TestBackoffFullJitterCapped(t *testing.T) {
	b := backoff{base: 200 * time.Millisecond, max: 30 * time.Second}
	var sawSmall bool
	for attempt := 0; attempt < 40; attempt++ {
		ceil := min(b.base<<min(attempt, 20), b.max)
		d := b.next()
		if d <= 0 || d > ceil+time.Millisecond {
			t.Fatalf("attempt %d: %s, want (0, %s]", attempt, d, ceil)
		}
		if attempt > 10 && d < ceil/2 {
			sawSmall = true // full jitter: not only near the cap
		}
	}
	if !sawSmall {
		t.Error("no small delay after many attempts: jitter is not full")
	}
	b.reset()
	if d := b.next(); d > b.base+time.Millisecond {
		t.Fatalf("first retry after reset: %s, want <= %s", d, b.base)
	}
}

func newTestAgent(t *testing.T, patterns ...string) *Agent {
	l, err := allow.Parse(patterns)
	if err != nil {
		t.Fatal(err)
	}
	return New(Config{Allow: l, DialTimeout: 300 * time.Millisecond}, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func TestDialChecksAllowlist(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	a := newTestAgent(t, "localhost:"+port, "127.0.0.2")

	for _, tc := range []struct {
		target string
		kind   error // nil: dial succeeds
	}{
		{"localhost:" + port, nil},             // name allowed by name: resolved and dialed
		{"127.0.0.1:" + port, wire.ErrDenied},  // an IP is checked against IP rules only
		{"LOCALHOST:" + port, nil},             // names are case-insensitive
		{"localhost:1", wire.ErrDenied},        // wrong port
		{"127.0.0.2:1", wire.ErrUnreachable},   // allowed IP, nothing listening
		{"example.invalid:80", wire.ErrDenied}, // denied before any DNS lookup
		{"bad target", wire.ErrBadRequest},
	} {
		c, err := a.dial(context.Background(), tc.target)
		if c != nil {
			c.Close()
		}
		if tc.kind == nil && err != nil || tc.kind != nil && !errors.Is(err, tc.kind) {
			t.Errorf("dial(%q) = %v, want %v", tc.target, err, tc.kind)
		}
	}
}

func TestDialTimeouts(t *testing.T) {
	a := newTestAgent(t)
	// A resolver that never answers: the lookup must time out as a 504.
	a.cfg.Resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}}
	start := time.Now()
	_, err := a.dial(context.Background(), "slow.example:80")
	if !errors.Is(err, wire.ErrTimeout) || wire.Status(err) != 504 {
		t.Fatalf("dial with hanging DNS: %v, want timeout (504)", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("timeout took %s, want about %s", d, a.cfg.DialTimeout)
	}
}
