package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/proxy"
	"github.com/reverse-http/reverse-http/internal/route"
	"github.com/reverse-http/reverse-http/internal/route/memcachedtest"
	"github.com/reverse-http/reverse-http/internal/wire"
)

// startClusterProxy runs a proxy.Server that publishes its agents as self
// in store, until the test ends.
func startClusterProxy(t *testing.T, store *route.Memcached, self string, ttl time.Duration) *proxy.Server {
	t.Helper()
	var routes *proxy.Routes
	srv := proxy.New(proxy.Config{
		ListenAddr: "127.0.0.1:0",
		TLS:        serverTLS(t),
		Auth:       auth.NoAuth(),
		OnAgent:    func(id string, up bool) { routes.Notify(id, up) },
	}, testLogger(t))
	routes = proxy.NewRoutes(proxy.RoutesConfig{Store: store, Addr: self, TTL: ttl}, srv, testLogger(t).With("component", "routes"))
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- srv.Run(ctx) }()
	go func() { done <- routes.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	})
	return srv
}

// Ownership: after a failover, routes left by the dead proxy (still a
// member, lease valid) are older than the new connections and are taken
// over, not obeyed; a forged route naming a non-member never closes a live
// agent; a newer route of a live member does.
func TestRoutesOwnership(t *testing.T) {
	mc := memcachedtest.Start(t)
	key := route.DeriveClusterKey([]byte("test cluster key, 32 bytes long."))
	store, err := route.NewMemcached(route.Config{Servers: []string{mc}, ClusterKey: key})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const self, dead, other = "127.0.0.1:3001", "127.0.0.1:3002", "127.0.0.1:3003"
	long := time.Now().Add(-time.Hour)
	const n = 50
	ids := make([]string, n)
	var claims []route.Claim
	for i := range ids {
		ids[i] = fmt.Sprintf("agent-%02d", i)
		claims = append(claims, route.Claim{ID: ids[i], Since: long})
	}
	// The proxy that held them died a moment ago: its lease and routes
	// are still valid.
	store.Publish(ctx, dead, long, time.Minute)
	if _, err := store.Claim(ctx, dead, claims, time.Minute); err != nil {
		t.Fatal(err)
	}

	srv := startClusterProxy(t, store, self, 3*time.Second) // renews every second
	conns := map[string]*quic.Conn{}
	for _, id := range ids {
		conns[id] = dialAgent(t, srv.Addr().String(), id)
	}
	waitFor(t, "routes taken over", func() bool {
		for _, id := range ids {
			if r, err := store.Lookup(ctx, id); err != nil || r.Addr != self {
				return false
			}
		}
		return true
	})
	time.Sleep(2500 * time.Millisecond) // two renewals
	for id, c := range conns {
		if c.Context().Err() != nil {
			t.Fatalf("agent %s closed after failover: %v", id, context.Cause(c.Context()))
		}
	}

	// Forged: a route naming a node that holds no signed lease, newer
	// than the connection.
	raw := memcache.New(mc)
	forged := &memcache.Item{Key: route.Key(ids[0]), Value: []byte("10.9.9.9:3128"), Flags: uint32(time.Now().Unix() + 100), Expiration: 60}
	if err := raw.Set(forged); err != nil {
		t.Fatal(err)
	}
	// ... and one whose node lease is there but unsigned.
	raw.Set(&memcache.Item{Key: route.NodeKey("10.9.9.8:3128"), Value: []byte("rhn1 1 99999999999999 -"), Expiration: 60})
	raw.Set(&memcache.Item{Key: route.Key(ids[1]), Value: []byte("10.9.9.8:3128"), Flags: uint32(time.Now().Unix() + 100), Expiration: 60})
	waitFor(t, "forged routes claimed again", func() bool {
		r0, err0 := store.Lookup(ctx, ids[0])
		r1, err1 := store.Lookup(ctx, ids[1])
		return err0 == nil && r0.Addr == self && err1 == nil && r1.Addr == self
	})
	for _, id := range ids[:2] {
		if c := conns[id]; c.Context().Err() != nil {
			t.Fatalf("a forged route closed live agent %s: %v", id, context.Cause(c.Context()))
		}
	}

	// A live member's newer route: the agent really reconnected there.
	store.Publish(ctx, other, time.Now(), time.Minute)
	if _, err := store.Claim(ctx, other, []route.Claim{{ID: ids[2], Since: time.Now().Add(2 * time.Second)}}, time.Minute); err != nil {
		t.Fatal(err)
	}
	c := conns[ids[2]]
	select {
	case <-c.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("stale connection not closed after the agent moved to a live member")
	}
	var appErr *quic.ApplicationError
	if err := context.Cause(c.Context()); !errors.As(err, &appErr) || appErr.ErrorCode != wire.CodeReplaced {
		t.Fatalf("stale connection closed with %v, want %#x", err, wire.CodeReplaced)
	}
	if r, _ := store.Lookup(ctx, ids[2]); r.Addr != other {
		t.Fatalf("route of the moved agent = %q, want %q", r.Addr, other)
	}
	for _, id := range ids[3:] {
		if c := conns[id]; c.Context().Err() != nil {
			t.Fatalf("agent %s closed: %v", id, context.Cause(c.Context()))
		}
	}
}

// Notify never drops an event, however many arrive at once.
func TestRoutesNotifyKeepsEveryEvent(t *testing.T) {
	mc := memcachedtest.Start(t)
	store, _ := route.NewMemcached(route.Config{Servers: []string{mc}})
	const self = "127.0.0.1:3001"
	srv := startClusterProxy(t, store, self, time.Hour) // no renewal during the test
	const n = 300
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("burst-%03d", i)
		dialAgent(t, srv.Addr().String(), ids[i])
	}
	ctx := context.Background()
	waitFor(t, "every route claimed from events alone", func() bool {
		for _, id := range ids {
			if r, err := store.Lookup(ctx, id); err != nil || r.Addr != self {
				return false
			}
		}
		return true
	})
}
