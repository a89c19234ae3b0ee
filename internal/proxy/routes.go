package proxy

import (
	"context"
	"log/slog"
	"time"

	"github.com/reverse-http/reverse-http/internal/route"
	"github.com/reverse-http/reverse-http/internal/wire"
)

// Routes publishes which agents this proxy holds in a route.Store, as
// leases: claimed when an agent connects, renewed every TTL/3 while it stays,
// released (only if still ours) when it leaves and on shutdown. A route that
// names another proxy means the agent reconnected there: the local
// connection is stale and is closed.
type Routes struct {
	store  route.Store
	addr   string // this proxy's HTTP address, the routes' value
	ttl    time.Duration
	srv    *Server
	log    *slog.Logger
	events chan agentEvent

	claimed map[string]bool // routes this proxy wrote; owned by Run's goroutine
	down    bool            // the store failed last time; owned by Run's goroutine
}

type agentEvent struct {
	id string
	up bool
}

// NewRoutes publishes srv's agents under addr in store with leases of ttl.
func NewRoutes(store route.Store, addr string, ttl time.Duration, srv *Server, log *slog.Logger) *Routes {
	return &Routes{
		store: store, addr: addr, ttl: ttl, srv: srv, log: log,
		events:  make(chan agentEvent, 4096),
		claimed: make(map[string]bool),
	}
}

// Notify reports an agent that connected (up) or left. It never blocks: if
// events pile up, the next renewal catches up with the registry.
func (r *Routes) Notify(agentID string, up bool) {
	select {
	case r.events <- agentEvent{agentID, up}:
	default:
	}
}

// Run keeps the routes until ctx ends, then releases every route it holds.
func (r *Routes) Run(ctx context.Context) error {
	t := time.NewTicker(max(r.ttl/3, 100*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case ev := <-r.events:
			if ev.up {
				r.claim(ev.id)
			} else if !r.srv.Connected(ev.id) {
				r.release(ev.id)
			}
		case <-t.C:
			r.renew()
		case <-ctx.Done():
			for id := range r.claimed {
				r.release(id)
			}
			return nil
		}
	}
}

func (r *Routes) claim(id string) {
	err := r.store.Claim(id, r.addr, r.ttl)
	if r.failed(err) {
		return
	}
	r.claimed[id] = true
	r.log.Debug("route claimed", "agent", id, "address", r.addr)
}

func (r *Routes) release(id string) {
	err := r.store.Release(id, r.addr)
	if r.failed(err) {
		return
	}
	delete(r.claimed, id)
	r.log.Debug("route released", "agent", id)
}

// renew extends the lease of every local agent (recreating routes the store
// lost), closes local connections whose route names another proxy, and
// releases routes of agents that are gone.
func (r *Routes) renew() {
	local := r.srv.AgentIDs()
	seen := make(map[string]bool, len(local))
	for _, id := range local {
		seen[id] = true
		owned, err := r.store.Renew(id, r.addr, r.ttl)
		if r.failed(err) {
			return // the store is down: try everything again next time
		}
		if owned {
			r.claimed[id] = true
			continue
		}
		delete(r.claimed, id)
		owner, _ := r.store.Lookup(id)
		r.log.Warn("agent reconnected to another proxy: closing the stale connection here",
			"agent", id, "route", owner)
		r.srv.Drop(id, wire.CodeReplaced, "agent "+id+" is connected to another proxy ("+owner+")")
	}
	for id := range r.claimed {
		if !seen[id] {
			r.release(id)
		}
	}
}

// failed logs store errors once per outage, and the recovery.
func (r *Routes) failed(err error) bool {
	if err != nil {
		if !r.down {
			r.log.Error("route store unavailable; agents connected here are still served, routes will be renewed when it is back",
				"error", err)
			r.down = true
		}
		return true
	}
	if r.down {
		r.log.Info("route store available again")
		r.down = false
	}
	return false
}
