package front

import (
	"container/list"
	"net"
	"net/http"
	"sync"
	"time"
)

// Bounds of the connection pools kept for absolute-form requests.
const (
	// DefaultMaxTransports is Config.MaxTransports' zero value.
	DefaultMaxTransports = 1024
	// transportIdle drops the pool of an agent that served no request for
	// this long, with its connections; it is also each pool's idle
	// connection timeout.
	transportIdle = 90 * time.Second
	// maxIdlePerAgent is how many idle keep-alive connections (tunnels)
	// one agent's pool keeps.
	maxIdlePerAgent = 16
)

// transports keeps one http.Transport per agent for absolute-form
// requests, so that keep-alive connections through the agent are reused.
// Its key, the agent ID, comes from the client, so it is bounded three
// ways: an entry is made only after a dial through the agent succeeded (a
// made-up or unreachable agent never gets one, on a proxy or an lb); an
// entry that served no request for transportIdle is dropped with its
// connections; and it holds at most max entries, the least recently used
// going first. Memory is then at most max pools of maxIdlePerAgent idle
// connections each, whatever clients send.
type transports struct {
	max  int
	make func(e *transportEntry) *http.Transport

	mu        sync.Mutex
	byID      map[string]*list.Element // at most max entries
	lru       list.List                // of *transportEntry, most recently used first
	lastSweep time.Time
}

// transportEntry is one agent's pool.
type transportEntry struct {
	id string
	t  *http.Transport

	// Guarded by transports.mu.
	used     time.Time // last request began or ended
	inflight int       // requests using t now
	evicted  bool      // dropped from the cache; close t's idle conns when done

	// The connection whose dial made this entry, for its first request;
	// guarded by firstMu.
	firstMu   sync.Mutex
	first     net.Conn
	firstAddr string
	// The nodes its connections were forwarded through (see Via);
	// guarded by firstMu.
	vias map[string]bool
}

// Via is implemented by a connection forwarded through another node: it
// names the node.
type Via interface{ Via() string }

// noteVia records the node conn was forwarded through, if any.
func (e *transportEntry) noteVia(conn net.Conn) {
	v, ok := conn.(Via)
	if !ok {
		return
	}
	e.firstMu.Lock()
	if e.vias == nil {
		e.vias = map[string]bool{}
	}
	e.vias[v.Via()] = true
	e.firstMu.Unlock()
}

func (e *transportEntry) hasVia(node string) bool {
	e.firstMu.Lock()
	defer e.firstMu.Unlock()
	return e.vias[node]
}

// evictVia drops the pools with connections forwarded through node, and
// returns how many: their idle connections close now, busy ones when
// their requests end, and the next request dials again.
func (ts *transports) evictVia(node string) int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	n := 0
	for el := ts.lru.Front(); el != nil; {
		next := el.Next()
		if el.Value.(*transportEntry).hasVia(node) {
			ts.evict(el)
			n++
		}
		el = next
	}
	return n
}

func newTransports(max int, mk func(e *transportEntry) *http.Transport) *transports {
	if max <= 0 {
		max = DefaultMaxTransports
	}
	return &transports{max: max, make: mk, byID: make(map[string]*list.Element)}
}

// get returns agentID's entry, marked in use, or nil if there is none:
// then the caller dials and calls add. Each non-nil result needs a done.
func (ts *transports) get(agentID string) *transportEntry {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	now := time.Now()
	ts.sweep(now)
	el := ts.byID[agentID]
	if el == nil {
		return nil
	}
	ts.lru.MoveToFront(el)
	e := el.Value.(*transportEntry)
	e.used = now
	e.inflight++
	return e
}

// add makes agentID's entry, marked in use, after conn was dialled through
// the agent to addr: the entry's first dial of addr returns conn. If
// another request made the entry meanwhile, conn is offered to it. Each
// result needs a done.
func (ts *transports) add(agentID string, conn net.Conn, addr string) *transportEntry {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	now := time.Now()
	if el := ts.byID[agentID]; el != nil {
		ts.lru.MoveToFront(el)
		e := el.Value.(*transportEntry)
		e.used = now
		e.inflight++
		e.offer(conn, addr)
		return e
	}
	e := &transportEntry{id: agentID, used: now, inflight: 1, first: conn, firstAddr: addr}
	e.t = ts.make(e)
	ts.byID[agentID] = ts.lru.PushFront(e)
	for ts.lru.Len() > ts.max {
		ts.evict(ts.lru.Back())
	}
	return e
}

// done ends a request's use of e.
func (ts *transports) done(e *transportEntry) {
	ts.mu.Lock()
	e.inflight--
	e.used = time.Now()
	closeIdle := e.evicted && e.inflight == 0
	ts.mu.Unlock()
	if closeIdle {
		e.t.CloseIdleConnections()
	}
}

// forget drops agentID's entry and closes its idle connections.
func (ts *transports) forget(agentID string) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if el := ts.byID[agentID]; el != nil {
		ts.evict(el)
	}
}

// closeIdle closes the idle connections of every pool.
func (ts *transports) closeIdle() {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for el := ts.lru.Front(); el != nil; el = el.Next() {
		el.Value.(*transportEntry).t.CloseIdleConnections()
	}
}

// len is the number of pools kept.
func (ts *transports) len() int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.lru.Len()
}

// sweep drops the pools unused for transportIdle, at most every tenth of
// that. ts.mu must be held.
func (ts *transports) sweep(now time.Time) {
	if now.Sub(ts.lastSweep) < transportIdle/10 {
		return
	}
	ts.lastSweep = now
	for el := ts.lru.Back(); el != nil; {
		prev := el.Prev()
		e := el.Value.(*transportEntry)
		if now.Sub(e.used) < transportIdle {
			break // the rest were used more recently
		}
		if e.inflight == 0 {
			ts.evict(el)
		}
		el = prev
	}
}

// evict drops el from the cache. ts.mu must be held. Requests still using
// its transport finish; the last one closes its idle connections.
func (ts *transports) evict(el *list.Element) {
	e := el.Value.(*transportEntry)
	ts.lru.Remove(el)
	delete(ts.byID, e.id)
	e.evicted = true
	if e.inflight == 0 {
		e.t.CloseIdleConnections()
	}
	e.dropFirst(nil)
}

// offer keeps conn as the connection for the entry's next dial of addr,
// or closes it if one is kept already.
func (e *transportEntry) offer(conn net.Conn, addr string) {
	e.firstMu.Lock()
	defer e.firstMu.Unlock()
	if e.first != nil {
		conn.Close()
		return
	}
	e.first, e.firstAddr = conn, addr
}

// take returns the kept connection if it goes to addr.
func (e *transportEntry) take(addr string) net.Conn {
	e.firstMu.Lock()
	defer e.firstMu.Unlock()
	c := e.first
	if c == nil || e.firstAddr != addr {
		return nil
	}
	e.first = nil
	return c
}

// dropFirst closes the kept connection if it is conn (any, if conn is nil):
// a request that made it and ended without using it calls this.
func (e *transportEntry) dropFirst(conn net.Conn) {
	e.firstMu.Lock()
	c := e.first
	if c != nil && (conn == nil || c == conn) {
		e.first = nil
	} else {
		c = nil
	}
	e.firstMu.Unlock()
	if c != nil {
		c.Close()
	}
}
