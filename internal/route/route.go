// Package route keeps "agent ID -> HTTP proxy address" routes for a cluster
// of proxies in one or more memcached servers, and the cluster's membership
// as node leases.
//
// An agent's route is an item whose key is the agent ID (as the reference
// writes it), whose value is the address of the proxy holding the agent,
// and whose flags are the second at which the agent connected there. It is
// a lease: it expires unless that proxy renews it. IDs that cannot be
// memcached keys (spaces, control characters, over 250 bytes) and IDs that
// begin with the reserved prefix "rh:" are stored under "rh:" and the hex
// SHA-256 of the ID, so no two IDs share a key.
//
// Each proxy also keeps a node lease, "rh:node:<address>", renewed with the
// routes. A route is followed (a client, with its credentials, is sent to
// the proxy it names), and a proxy gives up its own connection of an agent
// for it, only if the proxy it names holds a valid node lease: one that has
// not expired and, with a cluster key, is signed with it. memcached has no
// authentication; the cluster key is what keeps a forged entry from sending
// clients anywhere outside the cluster.
//
// With several servers, every write goes to all of them and reads ask all
// of them: losing one loses no route. When servers disagree (one restarted
// empty, or missed a write while it was down), the newest route whose
// proxy is a live member wins.
package route

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
)

// ErrNotFound: no route for the agent.
var ErrNotFound = errors.New("no route")

// ErrNotMember: the route names an address that holds no valid node lease,
// so it is not followed.
var ErrNotMember = errors.New("route names no live cluster member")

// Route is where an agent is connected.
type Route struct {
	// Addr is the HTTP address of the proxy that holds the agent.
	Addr string
	// Since is when the agent connected there, to the second; zero for a
	// route written by a node that does not record it (the reference).
	Since time.Time
}

// Wins reports whether r takes precedence over o: its agent connected
// later, or in the same second to the greater address. Every node decides
// the same way, so two proxies never take a route from each other in turn.
func (r Route) Wins(o Route) bool {
	a, b := r.Since.Unix(), o.Since.Unix()
	if r.Since.IsZero() {
		a = 0
	}
	if o.Since.IsZero() {
		b = 0
	}
	if a != b {
		return a > b
	}
	return r.Addr > o.Addr
}

// Claim is a route this node writes: agent ID connected here since Since.
type Claim struct {
	ID    string
	Since time.Time
}

// Conflict is an agent whose route names another proxy.
type Conflict struct {
	ID string
	// Route is the winning foreign route among the servers.
	Route Route
	// Member reports whether Route's proxy holds a valid node lease.
	Member bool
}

// Key is the memcached key of agentID's route.
func Key(agentID string) string {
	if len(agentID) <= 250 && !strings.HasPrefix(agentID, reservedPrefix) && legalKey(agentID) {
		return agentID
	}
	sum := sha256.Sum256([]byte(agentID))
	return reservedPrefix + hex.EncodeToString(sum[:])
}

// reservedPrefix starts every key this package makes up: hashed agent IDs
// ("rh:" and 64 hex digits) and node leases ("rh:node:..."). No agent ID is
// stored under a key with this prefix verbatim.
const reservedPrefix = "rh:"

// NodeKey is the memcached key of the node lease of the proxy at addr.
func NodeKey(addr string) string { return reservedPrefix + "node:" + addr }

func legalKey(k string) bool {
	return k != "" && len(k) <= 250 && !strings.ContainsFunc(k, func(r rune) bool { return r <= ' ' || r == 0x7f })
}

// Config configures a Memcached store.
type Config struct {
	// Servers are the memcached servers, host:port. At least one.
	Servers []string
	// Timeout bounds each memcached operation (dial, write, read). Zero
	// means 1s.
	Timeout time.Duration
	// ClusterKey, if not empty, signs this node's lease and is required
	// of every node lease a route is followed to. Empty: node leases are
	// neither signed nor checked for a signature.
	ClusterKey []byte
	// Concurrency bounds the operations in flight to each server. Zero
	// means 64.
	Concurrency int
	// Log, if not nil, gets one line when a server becomes unavailable and
	// one when it is back.
	Log *slog.Logger
}

// Memcached is the route store.
type Memcached struct {
	servers []*server
	key     []byte
	conc    int
	log     *slog.Logger
	now     func() time.Time

	observe  func(op string, failed bool)
	answered atomic.Int64 // unix ns of the last answer from any server
}

type server struct {
	addr string
	mc   *memcache.Client
	sem  chan struct{}
	down atomic.Bool
}

// NewMemcached makes a store on cfg.Servers. It does not connect.
func NewMemcached(cfg Config) (*Memcached, error) {
	if len(cfg.Servers) == 0 {
		return nil, errors.New("no memcached server")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Second
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 64
	}
	m := &Memcached{key: cfg.ClusterKey, conc: cfg.Concurrency, log: cfg.Log, now: time.Now}
	seen := map[string]bool{}
	for _, a := range cfg.Servers {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("memcached server %q: %w", a, err)
		}
		if seen[a] {
			return nil, fmt.Errorf("memcached server %q given twice", a)
		}
		seen[a] = true
		mc := memcache.New(a)
		mc.Timeout = cfg.Timeout
		mc.MaxIdleConns = cfg.Concurrency
		m.servers = append(m.servers, &server{addr: a, mc: mc, sem: make(chan struct{}, cfg.Concurrency)})
	}
	return m, nil
}

// Servers returns the addresses of the servers.
func (m *Memcached) Servers() []string {
	s := make([]string, len(m.servers))
	for i, sv := range m.servers {
		s[i] = sv.addr
	}
	return s
}

// Ping asks every server for a key no route uses (agent IDs that begin
// with "rh:" are hashed); it returns nil if any of them answered.
func (m *Memcached) Ping(ctx context.Context) error {
	errs, all := m.each(func(sv *server) error {
		err := m.do(ctx, sv, "get", func(mc *memcache.Client) error {
			_, err := mc.Get("rh:ping")
			return err
		})
		if isProtocolAnswer(err) {
			return nil
		}
		return err
	})
	if all {
		return errors.Join(errs...)
	}
	return nil
}

// seconds is a memcached expiration for ttl, at least one second.
func seconds(ttl time.Duration) int32 {
	s := math.Ceil(ttl.Seconds())
	if s < 1 {
		return 1
	}
	return int32(min(s, 30*24*3600-1)) // beyond 30 days memcached reads a date
}

// do runs fn against sv, at most Concurrency at a time, unless ctx ended.
// It records the server's availability.
func (m *Memcached) do(ctx context.Context, sv *server, op string, fn func(*memcache.Client) error) (err error) {
	defer func() {
		if m.observe != nil {
			m.observe(op, err != nil && !isProtocolAnswer(err))
		}
	}()
	select {
	case sv.sem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("memcached %s: %w", sv.addr, context.Cause(ctx))
	}
	defer func() { <-sv.sem }()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memcached %s: %w", sv.addr, context.Cause(ctx))
	}
	err = fn(sv.mc)
	if err != nil && !isProtocolAnswer(err) {
		if !sv.down.Swap(true) && m.log != nil {
			m.log.Error("memcached server unavailable", "server", sv.addr, "error", err)
		}
		return fmt.Errorf("memcached %s: %w", sv.addr, err)
	}
	m.answered.Store(time.Now().UnixNano())
	if sv.down.Swap(false) && m.log != nil {
		m.log.Info("memcached server available again", "server", sv.addr)
	}
	return err
}

// Observe makes f see every store operation: its name (get, get_multi,
// set, add, touch, cas, delete) and whether it failed (memcached did not
// answer). Call it before the store is used.
func (m *Memcached) Observe(f func(op string, failed bool)) { m.observe = f }

// LastAnswer is when a memcached server last answered an operation; zero
// if none has.
func (m *Memcached) LastAnswer() time.Time {
	if ns := m.answered.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// isProtocolAnswer: memcached answered; the server works.
func isProtocolAnswer(err error) bool {
	return errors.Is(err, memcache.ErrCacheMiss) || errors.Is(err, memcache.ErrCASConflict) ||
		errors.Is(err, memcache.ErrNotStored)
}

// each runs fn for every server in parallel and returns the errors of
// those that failed, and whether all failed.
func (m *Memcached) each(fn func(sv *server) error) (errs []error, allFailed bool) {
	res := make([]error, len(m.servers))
	var wg sync.WaitGroup
	for i, sv := range m.servers {
		wg.Go(func() { res[i] = fn(sv) })
	}
	wg.Wait()
	for _, err := range res {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errs, len(errs) == len(m.servers)
}

// parallel runs fn(i) for i in [0, n) on up to limit goroutines.
func parallel(n, limit int, fn func(i int)) {
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range min(n, limit) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				fn(i)
			}
		})
	}
	wg.Wait()
}

// chunk is how many keys one multi-get asks for.
const chunk = 200

// getMulti reads keys from sv in chunks, chunks in parallel.
func (m *Memcached) getMulti(ctx context.Context, sv *server, keys []string) (map[string]*memcache.Item, error) {
	out := make(map[string]*memcache.Item, len(keys))
	var (
		mu    sync.Mutex
		first error
	)
	parallel((len(keys)+chunk-1)/chunk, m.conc, func(i int) {
		part := keys[i*chunk : min((i+1)*chunk, len(keys))]
		var items map[string]*memcache.Item
		err := m.do(ctx, sv, "get_multi", func(mc *memcache.Client) (err error) {
			items, err = mc.GetMulti(part)
			return err
		})
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			first = cmpErr(first, err)
			return
		}
		for k, it := range items {
			out[k] = it
		}
	})
	return out, first
}

func cmpErr(first, err error) error {
	if first == nil {
		return err
	}
	return first
}

// routeOf parses a route item.
func routeOf(it *memcache.Item) (Route, error) {
	addr, err := ParseAddr(it.Value)
	if err != nil {
		return Route{}, err
	}
	r := Route{Addr: addr}
	if it.Flags != 0 {
		r.Since = time.Unix(int64(it.Flags), 0)
	}
	return r, nil
}

func item(key, addr string, since time.Time, ttl time.Duration) *memcache.Item {
	var flags uint32
	if s := since.Unix(); s > 0 && s <= math.MaxUint32 {
		flags = uint32(s)
	}
	return &memcache.Item{Key: key, Value: []byte(addr), Flags: flags, Expiration: seconds(ttl)}
}

// Lookup returns agentID's route, read from every server. Among the routes
// found, the newest whose proxy is a live cluster member wins. It returns
// ErrNotFound when there is none, an error wrapping ErrNotMember (naming
// the address) when the only routes name non-members, and an error when no
// server answered.
func (m *Memcached) Lookup(ctx context.Context, agentID string) (Route, error) {
	key := Key(agentID)
	var (
		mu     sync.Mutex
		routes []Route
		bad    error
	)
	_, allFailed := m.each(func(sv *server) error {
		var it *memcache.Item
		err := m.do(ctx, sv, "get", func(mc *memcache.Client) (err error) {
			it, err = mc.Get(key)
			return err
		})
		if errors.Is(err, memcache.ErrCacheMiss) {
			return nil
		}
		if err != nil {
			return err
		}
		r, perr := routeOf(it)
		mu.Lock()
		defer mu.Unlock()
		if perr != nil {
			bad = perr
			return nil
		}
		routes = append(routes, r)
		return nil
	})
	if allFailed {
		return Route{}, fmt.Errorf("route store unavailable: %w", m.firstErr(ctx, key))
	}
	if len(routes) == 0 {
		if bad != nil {
			return Route{}, bad
		}
		return Route{}, ErrNotFound
	}
	live := m.Members(ctx, addrsOf(routes))
	var (
		best  Route
		found bool
	)
	for _, r := range routes {
		if live[r.Addr] && (!found || r.Wins(best)) {
			best, found = r, true
		}
	}
	if !found {
		return Route{}, fmt.Errorf("%w: %s", ErrNotMember, routes[0].Addr)
	}
	return best, nil
}

// firstErr is a representative error for "no server answered".
func (m *Memcached) firstErr(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	return fmt.Errorf("no memcached server answered (%s)", strings.Join(m.Servers(), ", "))
}

func addrsOf(routes []Route) []string {
	var out []string
	for _, r := range routes {
		if !containsStr(out, r.Addr) {
			out = append(out, r.Addr)
		}
	}
	return out
}

func containsStr(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// Claim writes claims as routes to addr on every server: the agents have
// just connected here. stored[i] reports whether claims[i] was written to
// at least one server; err describes the failures, if any.
func (m *Memcached) Claim(ctx context.Context, addr string, claims []Claim, ttl time.Duration) (stored []bool, err error) {
	stored = make([]bool, len(claims))
	if len(claims) == 0 {
		return stored, nil
	}
	var mu sync.Mutex
	errs, _ := m.each(func(sv *server) error {
		var first error
		parallel(len(claims), m.conc, func(i int) {
			c := claims[i]
			err := m.do(ctx, sv, "set", func(mc *memcache.Client) error { return mc.Set(item(Key(c.ID), addr, c.Since, ttl)) })
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				first = cmpErr(first, err)
				return
			}
			stored[i] = true
		})
		return first
	})
	return stored, errors.Join(errs...)
}

// Renew extends the routes of claims that still name addr on every server,
// recreates those a server lost, and returns the agents whose route names
// another proxy on some server. It does not touch a foreign route. It
// fails only if no server's routes could be read.
func (m *Memcached) Renew(ctx context.Context, addr string, claims []Claim, ttl time.Duration) ([]Conflict, error) {
	if len(claims) == 0 {
		return nil, nil
	}
	keys := make([]string, len(claims))
	for i, c := range claims {
		keys[i] = Key(c.ID)
	}
	var (
		mu      sync.Mutex
		foreign = map[string][]Route{} // by claim index, as string key of the ID
	)
	// A server counts as failed only if its routes could not be read: a
	// touch or add that failed is retried by the next renewal, long
	// before the route expires.
	errs, allFailed := m.each(func(sv *server) error {
		items, err := m.getMulti(ctx, sv, keys)
		if err != nil {
			return err
		}
		parallel(len(claims), m.conc, func(i int) {
			c := claims[i]
			it, ok := items[keys[i]]
			switch {
			case !ok:
				// Lost (the server restarted or evicted it): add it back,
				// unless someone else wrote it meanwhile; the next round
				// reads what is there.
				m.do(ctx, sv, "add", func(mc *memcache.Client) error { return mc.Add(item(keys[i], addr, c.Since, ttl)) })
			case string(it.Value) == addr:
				m.do(ctx, sv, "touch", func(mc *memcache.Client) error { return mc.Touch(keys[i], seconds(ttl)) })
			default:
				r, perr := routeOf(it)
				if perr != nil {
					r = Route{Addr: string(it.Value)}
				}
				mu.Lock()
				foreign[c.ID] = append(foreign[c.ID], r)
				mu.Unlock()
			}
		})
		return nil
	})
	if allFailed {
		return nil, errors.Join(errs...)
	}
	if len(foreign) == 0 {
		return nil, nil
	}
	var addrs []string
	for _, rs := range foreign {
		for _, r := range rs {
			if !containsStr(addrs, r.Addr) {
				addrs = append(addrs, r.Addr)
			}
		}
	}
	live := m.Members(ctx, addrs)
	out := make([]Conflict, 0, len(foreign))
	for _, c := range claims {
		rs, ok := foreign[c.ID]
		if !ok {
			continue
		}
		// The winner: the newest live route, else the newest of all.
		cf := Conflict{ID: c.ID, Route: rs[0], Member: live[rs[0].Addr]}
		for _, r := range rs[1:] {
			member := live[r.Addr]
			if member && !cf.Member || member == cf.Member && r.Wins(cf.Route) {
				cf = Conflict{ID: c.ID, Route: r, Member: member}
			}
		}
		out = append(out, cf)
	}
	return out, nil
}

// Release removes, on every server, the routes of ids that still name
// addr. memcached has no conditional delete, but a compare-and-swap to an
// item that expired already is one. It stops issuing operations when ctx
// ends.
func (m *Memcached) Release(ctx context.Context, addr string, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = Key(id)
	}
	errs, allFailed := m.each(func(sv *server) error {
		items, err := m.getMulti(ctx, sv, keys)
		if err != nil {
			return err
		}
		var (
			mu    sync.Mutex
			first error
		)
		parallel(len(keys), m.conc, func(i int) {
			it, ok := items[keys[i]]
			if !ok || string(it.Value) != addr {
				return // gone, or another proxy holds the agent now
			}
			it.Expiration = -1
			err := m.do(ctx, sv, "cas", func(mc *memcache.Client) error { return mc.CompareAndSwap(it) })
			if err == nil || isProtocolAnswer(err) {
				return // released, or changed meanwhile: then it is not ours
			}
			mu.Lock()
			first = cmpErr(first, err)
			mu.Unlock()
		})
		return first
	})
	if allFailed {
		return errors.Join(errs...)
	}
	return nil
}

// ParseAddr validates a route's value: a host:port to dial, nothing else.
func ParseAddr(value []byte) (string, error) {
	addr := string(value)
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("malformed route %q: %w", truncate(addr, 64), err)
	}
	if host == "" || strings.ContainsFunc(host, func(r rune) bool { return r <= ' ' || r == '/' || r == '@' || r >= 0x7f }) {
		return "", fmt.Errorf("malformed route %q: bad host", truncate(addr, 64))
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port[0] == '+' {
		return "", fmt.Errorf("malformed route %q: bad port", truncate(addr, 64))
	}
	return addr, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
