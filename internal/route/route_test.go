package route

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/reverse-http/reverse-http/internal/route/memcachedtest"
)

func startMemcached(t *testing.T) string { return memcachedtest.Start(t) }

func newStore(t *testing.T, key []byte, servers ...string) *Memcached {
	t.Helper()
	m, err := NewMemcached(Config{Servers: servers, Timeout: 300 * time.Millisecond, ClusterKey: key})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var ctx = context.Background()

func TestMemcachedLeases(t *testing.T) {
	m := newStore(t, nil, startMemcached(t))
	const a, b = "10.0.0.1:3128", "10.0.0.2:3128"
	t0 := time.Now().Add(-time.Minute)
	for _, addr := range []string{a, b} {
		if err := m.Publish(ctx, addr, t0, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Lookup(ctx, "4711"); err != ErrNotFound {
		t.Fatalf("Lookup before Claim: %v, want ErrNotFound", err)
	}
	if _, err := m.Claim(ctx, a, []Claim{{"4711", t0}}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if got, err := m.Lookup(ctx, "4711"); err != nil || got.Addr != a || got.Since.Unix() != t0.Unix() {
		t.Fatalf("Lookup = %+v, %v; want %q since %v", got, err, a, t0)
	}
	// Renew by the owner reports no conflict; by another proxy it reports
	// the route and changes nothing.
	if cs, err := m.Renew(ctx, a, []Claim{{"4711", t0}}, time.Minute); len(cs) != 0 || err != nil {
		t.Fatalf("owner Renew = %v, %v", cs, err)
	}
	cs, err := m.Renew(ctx, b, []Claim{{"4711", t0}}, time.Minute)
	if err != nil || len(cs) != 1 || cs[0].Route.Addr != a || !cs[0].Member {
		t.Fatalf("other Renew = %+v, %v; want a conflict naming member %s", cs, err, a)
	}
	// Release by a non-owner leaves the route alone.
	if err := m.Release(ctx, b, []string{"4711"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.Lookup(ctx, "4711"); got.Addr != a {
		t.Fatalf("route after foreign Release = %q, want %q", got.Addr, a)
	}
	// The agent moves: Claim overwrites, and the old owner's Release and
	// Renew must not touch the new route.
	t1 := t0.Add(10 * time.Second)
	if _, err := m.Claim(ctx, b, []Claim{{"4711", t1}}, time.Minute); err != nil {
		t.Fatal(err)
	}
	cs, _ = m.Renew(ctx, a, []Claim{{"4711", t0}}, time.Minute)
	if len(cs) != 1 || !cs[0].Route.Wins(Route{Addr: a, Since: t0}) {
		t.Fatalf("stale owner's Renew = %+v: want the newer route to win", cs)
	}
	m.Release(ctx, a, []string{"4711"})
	if got, _ := m.Lookup(ctx, "4711"); got.Addr != b {
		t.Fatalf("route after stale Release = %q, want %q", got.Addr, b)
	}
	// Release by the owner removes it.
	if err := m.Release(ctx, b, []string{"4711"}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Lookup(ctx, "4711"); err != ErrNotFound {
		t.Fatalf("Lookup after Release: %v, want ErrNotFound", err)
	}
	// Renew recreates a route the store lost (memcached restarted).
	if cs, err := m.Renew(ctx, a, []Claim{{"4711", t0}}, time.Minute); len(cs) != 0 || err != nil {
		t.Fatalf("Renew of a lost route = %v, %v", cs, err)
	}
	if got, _ := m.Lookup(ctx, "4711"); got.Addr != a {
		t.Fatalf("recreated route = %q", got.Addr)
	}
}

func TestRouteWins(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	for _, tc := range []struct {
		r, o Route
		want bool
	}{
		{Route{"b:1", t0.Add(time.Second)}, Route{"a:1", t0}, true},
		{Route{"a:1", t0}, Route{"b:1", t0.Add(time.Second)}, false},
		{Route{"b:1", t0}, Route{"a:1", t0.Add(900 * time.Millisecond)}, true}, // same second: greater address
		{Route{"a:1", t0.Add(900 * time.Millisecond)}, Route{"b:1", t0}, false},
		{Route{"z:1", time.Time{}}, Route{"a:1", t0}, false}, // written by the reference: oldest
	} {
		if got := tc.r.Wins(tc.o); got != tc.want {
			t.Errorf("%+v.Wins(%+v) = %v, want %v", tc.r, tc.o, got, tc.want)
		}
		if tc.r.Wins(tc.o) && tc.o.Wins(tc.r) {
			t.Errorf("%+v and %+v both win", tc.r, tc.o)
		}
	}
}

// A route is followed only to a node with a valid lease: signed with the
// cluster key, when there is one, and not expired.
func TestMembers(t *testing.T) {
	srv := startMemcached(t)
	key := DeriveClusterKey([]byte("0123456789abcdef-cluster"))
	signed := newStore(t, key, srv)
	other := newStore(t, DeriveClusterKey([]byte("another cluster's key")), srv)
	unsigned := newStore(t, nil, srv)
	now := time.Now()

	signed.Publish(ctx, "10.0.0.1:3128", now, time.Minute)
	other.Publish(ctx, "10.0.0.2:3128", now, time.Minute)
	unsigned.Publish(ctx, "10.0.0.3:3128", now, time.Minute)
	// A copy of a valid lease whose signed expiry passed.
	signed.now = func() time.Time { return now.Add(-time.Hour) }
	signed.Publish(ctx, "10.0.0.4:3128", now.Add(-time.Hour), time.Minute)
	signed.now = time.Now
	// Garbage.
	mc := memcache.New(srv)
	mc.Set(&memcache.Item{Key: NodeKey("10.0.0.5:3128"), Value: []byte("rhn1 x y z"), Expiration: 60})

	all := []string{"10.0.0.1:3128", "10.0.0.2:3128", "10.0.0.3:3128", "10.0.0.4:3128", "10.0.0.5:3128", "10.0.0.6:3128"}
	got := signed.Members(ctx, all)
	if len(got) != 1 || !got["10.0.0.1:3128"] {
		t.Errorf("members with the cluster key = %v, want only 10.0.0.1:3128", got)
	}
	got = unsigned.Members(ctx, all)
	if !got["10.0.0.1:3128"] || !got["10.0.0.2:3128"] || !got["10.0.0.3:3128"] || got["10.0.0.4:3128"] || got["10.0.0.5:3128"] || got["10.0.0.6:3128"] {
		t.Errorf("members without a key = %v, want the three current leases", got)
	}

	// A forged route to a non-member is not followed.
	mc.Set(&memcache.Item{Key: Key("4711"), Value: []byte("10.0.0.3:3128"), Expiration: 60})
	if _, err := signed.Lookup(ctx, "4711"); !errors.Is(err, ErrNotMember) || !strings.Contains(err.Error(), "10.0.0.3:3128") {
		t.Errorf("Lookup of a forged route = %v, want ErrNotMember naming the address", err)
	}
	// A withdrawn node's routes are not followed either.
	signed.Claim(ctx, "10.0.0.1:3128", []Claim{{"4712", now}}, time.Minute)
	if r, err := signed.Lookup(ctx, "4712"); err != nil || r.Addr != "10.0.0.1:3128" {
		t.Fatalf("Lookup = %+v, %v", r, err)
	}
	signed.Withdraw(ctx, "10.0.0.1:3128")
	if _, err := signed.Lookup(ctx, "4712"); !errors.Is(err, ErrNotMember) {
		t.Errorf("Lookup after Withdraw = %v, want ErrNotMember", err)
	}
}

// With several servers, writes go to all and reads to any: one down loses
// no route, and a server that came back empty or stale does not win.
func TestSeveralServers(t *testing.T) {
	s1, s2 := startMemcached(t), startMemcached(t)
	m := newStore(t, nil, s1, s2)
	const a, b = "10.0.0.1:3128", "10.0.0.2:3128"
	t0 := time.Now().Add(-time.Minute)
	m.Publish(ctx, a, t0, time.Minute)
	m.Publish(ctx, b, t0, time.Minute)
	if _, err := m.Claim(ctx, a, []Claim{{"4711", t0}}, time.Minute); err != nil {
		t.Fatal(err)
	}
	// s1 misses the move to b (say, it was down) and still names a.
	only2 := newStore(t, nil, s2)
	only2.Claim(ctx, b, []Claim{{"4711", t0.Add(5 * time.Second)}}, time.Minute)
	if r, err := m.Lookup(ctx, "4711"); err != nil || r.Addr != b {
		t.Fatalf("Lookup with servers disagreeing = %+v, %v; want the newer route to %s", r, err, b)
	}
	// a renews and learns that b holds the agent, from s2.
	cs, err := m.Renew(ctx, a, []Claim{{"4711", t0}}, time.Minute)
	if err != nil || len(cs) != 1 || cs[0].Route.Addr != b {
		t.Fatalf("Renew = %+v, %v; want the conflict with %s", cs, err, b)
	}

	// One server down: routes are still read and written.
	dead := newStore(t, nil, s1, closedAddr(t))
	if stored, err := dead.Claim(ctx, b, []Claim{{"4712", t0}}, time.Minute); !stored[0] || err == nil {
		t.Fatalf("Claim with one server down: stored %v, error %v; want stored, and the down server named", stored, err)
	}
	if r, err := dead.Lookup(ctx, "4712"); err != nil || r.Addr != b {
		t.Fatalf("Lookup with one server down = %+v, %v", r, err)
	}
	// All down: an error, not "not found".
	none := newStore(t, nil, closedAddr(t), closedAddr(t))
	if _, err := none.Lookup(ctx, "4712"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("Lookup with every server down: %v, want an error", err)
	}
}

func closedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestMemcachedLeaseExpires(t *testing.T) {
	m := newStore(t, nil, startMemcached(t))
	now := time.Now()
	m.Publish(ctx, "10.0.0.9:3128", now, time.Minute)
	if _, err := m.Claim(ctx, "10.0.0.9:3128", []Claim{{"dead-proxy-agent", now}}, time.Second); err != nil {
		t.Fatal(err)
	}
	// memcached counts whole seconds: the route is gone within 2s.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := m.Lookup(ctx, "dead-proxy-agent")
		if err == ErrNotFound {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("route of a 1s lease still there after 5s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestMemcachedOddIDs(t *testing.T) {
	m := newStore(t, nil, startMemcached(t))
	now := time.Now()
	for i, id := range []string{"büro 7", strings.Repeat("x", 256), "a\tb", "plain", "rh:node:10.0.0.1:3128"} {
		addr := fmt.Sprintf("10.0.0.%d:3128", i+1)
		m.Publish(ctx, addr, now, time.Minute)
		if _, err := m.Claim(ctx, addr, []Claim{{id, now}}, time.Minute); err != nil {
			t.Fatalf("Claim(%q): %v", id, err)
		}
		if got, err := m.Lookup(ctx, id); err != nil || got.Addr != addr {
			t.Fatalf("Lookup(%q) = %q, %v", id, got.Addr, err)
		}
	}
	if Key("plain") != "plain" {
		t.Error("a plain ID must be its own key, as the reference writes it")
	}
	// The node lease of 10.0.0.1:3128 was not overwritten by the agent
	// whose ID looks like its key.
	if !m.Members(ctx, []string{"10.0.0.1:3128"})["10.0.0.1:3128"] {
		t.Error("an agent ID spelled like a node lease key overwrote the lease")
	}
}

// No two IDs share a key: the hashed namespace is reserved.
func TestKeysDoNotCollide(t *testing.T) {
	sum := sha256.Sum256([]byte("x y"))
	forged := "rh:" + hex.EncodeToString(sum[:])
	if Key("x y") == Key(forged) {
		t.Fatalf("Key(%q) == Key(%q) = %q", "x y", forged, Key(forged))
	}
	for _, id := range []string{"x y", forged, "rh:", "rh:node:a:1", strings.Repeat("y", 300)} {
		k := Key(id)
		if !legalKey(k) {
			t.Errorf("Key(%q) = %q is not a memcached key", id, k)
		}
	}
}

func TestMemcachedDown(t *testing.T) {
	m := newStore(t, nil, closedAddr(t))
	if _, err := m.Lookup(ctx, "4711"); err == nil || err == ErrNotFound {
		t.Fatalf("Lookup with memcached down: %v, want an error", err)
	}
	if _, err := m.Renew(ctx, "10.0.0.1:3128", []Claim{{"4711", time.Now()}}, time.Minute); err == nil {
		t.Fatal("Renew with memcached down succeeded")
	}
	if err := m.Publish(ctx, "10.0.0.1:3128", time.Now(), time.Minute); err == nil {
		t.Fatal("Publish with memcached down succeeded")
	}
}

// Release of many routes from a server that never answers ends with the
// context, not after one timeout per route.
func TestReleaseBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // accepts, never answers
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	m, _ := NewMemcached(Config{Servers: []string{ln.Addr().String()}, Timeout: 300 * time.Millisecond, Concurrency: 4})
	ids := make([]string, 5000)
	for i := range ids {
		ids[i] = fmt.Sprint("agent-", i)
	}
	c, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	start := time.Now()
	if err := m.Release(c, "10.0.0.1:3128", ids); err == nil {
		t.Fatal("Release against a silent server succeeded")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Release of %d routes took %s with a 1s deadline and 300ms timeout", len(ids), d)
	}
}

func TestParseAddr(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"10.0.0.1:3128", true},
		{"proxy-1.example:3128", true},
		{"[2001:db8::1]:3128", true},
		{"", false},
		{"10.0.0.1", false},
		{":3128", false},
		{"10.0.0.1:0", false},
		{"10.0.0.1:65536", false},
		{"10.0.0.1:+80", false},
		{"evil host:80", false},
		{"a/b:80", false},
		{"user@host:80", false},
	} {
		_, err := ParseAddr([]byte(tc.in))
		if (err == nil) != tc.ok {
			t.Errorf("ParseAddr(%q) = %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}

func FuzzParseAddr(f *testing.F) {
	for _, s := range []string{"10.0.0.1:3128", "[::1]:80", "host:1", "x", "", ":", "a:b:c", "[::1"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		addr, err := ParseAddr(b)
		if err != nil {
			return
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			t.Fatalf("ParseAddr accepted %q, which does not split: %v", b, err)
		}
	})
}

// FuzzCheckLease: a node lease read from memcached is untrusted. Parsing
// never panics, and with a cluster key nothing but a lease signed with it
// is accepted.
func FuzzCheckLease(f *testing.F) {
	key := DeriveClusterKey([]byte("fuzz cluster key, long enough"))
	signer := &Memcached{key: key, now: time.Now}
	now := time.Unix(1_800_000_000, 0)
	f.Add("10.0.0.1:3128", []byte(signer.leaseValue("10.0.0.1:3128", now, now.Add(time.Minute))))
	f.Add("10.0.0.1:3128", []byte("rhn1 1 99999999999999 -"))
	f.Add("10.0.0.1:3128", []byte("rhn1 x y z"))
	f.Add("a:1", []byte(""))
	f.Add("a:1", []byte("rhn1 1 2 3 4"))
	f.Fuzz(func(t *testing.T, addr string, value []byte) {
		unsigned := &Memcached{now: time.Now}
		unsigned.checkLease(addr, value, now)
		if signer.checkLease(addr, value, now) == nil {
			fields := strings.Fields(string(value))
			if len(fields) != 4 || !hmacOK(signer, addr, fields) {
				t.Fatalf("accepted %q for %q without a valid signature", value, addr)
			}
		}
	})
}

func hmacOK(m *Memcached, addr string, f []string) bool {
	return f[3] == m.mac(addr, f[1], f[2])
}

// FuzzRouteOf: a route's value and flags are untrusted.
func FuzzRouteOf(f *testing.F) {
	f.Add([]byte("10.0.0.1:3128"), uint32(1_800_000_000))
	f.Add([]byte("evil host:80"), uint32(0))
	f.Add([]byte("[::1]:1"), uint32(1))
	f.Fuzz(func(t *testing.T, value []byte, flags uint32) {
		r, err := routeOf(&memcache.Item{Value: value, Flags: flags})
		if err != nil {
			return
		}
		if _, _, err := net.SplitHostPort(r.Addr); err != nil || !legalKey(NodeKey(r.Addr)) && len(r.Addr) < 240 {
			t.Fatalf("routeOf accepted %q: %v", value, err)
		}
	})
}
