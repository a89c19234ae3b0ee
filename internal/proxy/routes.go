package proxy

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/reverse-http/reverse-http/internal/route"
	"github.com/reverse-http/reverse-http/internal/wire"
)

// RoutesConfig configures Routes.
type RoutesConfig struct {
	// Store is where routes and this node's lease live.
	Store *route.Memcached
	// Addr is this proxy's HTTP address: the routes' value and the name
	// of its node lease.
	Addr string
	// TTL is the lease of a route and of the node; both are renewed every
	// TTL/3.
	TTL time.Duration
	// ReleaseTimeout bounds withdrawing the node lease and releasing the
	// routes on shutdown. Zero means 5s.
	ReleaseTimeout time.Duration
	// ReleaseAfter, if not nil, holds the release of the routes back
	// until it is closed: Run withdraws the node lease as soon as its
	// context ends (other nodes stop following routes to this proxy), and
	// releases the routes still naming it only then, once the agents have
	// moved and this proxy's own tunnels ended. Nil: both at once.
	ReleaseAfter <-chan struct{}
}

// Routes publishes which agents this proxy holds: a node lease for the
// proxy itself and a route per agent, claimed when the agent connects,
// renewed every TTL/3 while it stays, released (only if still ours) when
// it leaves and on shutdown.
//
// Ownership is decided here, in Run's goroutine, in one order: events are
// queued (never dropped) and written before every renewal, and a renewal
// judges only routes claimed for the agent's current connection. A route
// naming another proxy closes our connection only if that proxy holds a
// valid node lease and its route is newer than our connection (route.Wins);
// otherwise the route is stale or forged, and this proxy claims it again.
type Routes struct {
	cfg     RoutesConfig
	srv     *Server
	log     *slog.Logger
	started time.Time

	mu      sync.Mutex
	pending []agentEvent
	wake    chan struct{}

	claimed map[string]time.Time // agent -> connection the route was written for; owned by Run
	down    bool                 // the store failed last time; owned by Run
}

type agentEvent struct {
	id string
	up bool
}

// NewRoutes publishes srv's agents as cfg says.
func NewRoutes(cfg RoutesConfig, srv *Server, log *slog.Logger) *Routes {
	if cfg.ReleaseTimeout <= 0 {
		cfg.ReleaseTimeout = 5 * time.Second
	}
	return &Routes{
		cfg: cfg, srv: srv, log: log, started: time.Now(),
		wake:    make(chan struct{}, 1),
		claimed: make(map[string]time.Time),
	}
}

// Notify reports an agent that connected (up) or left. It never blocks and
// never drops an event: the queue holds at most two events per connection
// the server accepted since Run last looked.
func (r *Routes) Notify(agentID string, up bool) {
	r.mu.Lock()
	r.pending = append(r.pending, agentEvent{agentID, up})
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run keeps the routes until ctx ends, then withdraws the node lease and
// releases every route it holds, within ReleaseTimeout.
func (r *Routes) Run(ctx context.Context) error {
	r.publish(ctx)
	t := time.NewTicker(r.period())
	defer t.Stop()
	for {
		select {
		case <-r.wake:
			r.process(ctx)
		case <-t.C:
			r.process(ctx)
			r.publish(ctx)
			r.renew(ctx)
		case <-ctx.Done():
			if r.cfg.ReleaseAfter != nil {
				r.withdraw()
				<-r.cfg.ReleaseAfter
				r.release()
				return nil
			}
			r.shutdown()
			return nil
		}
	}
}

// period is how often routes and the node lease are renewed.
func (r *Routes) period() time.Duration { return max(r.cfg.TTL/3, 100*time.Millisecond) }

// process writes the queued events: claims for agents that connected,
// releases for agents that left and did not come back.
func (r *Routes) process(ctx context.Context) {
	r.mu.Lock()
	events := r.pending
	r.pending = nil
	r.mu.Unlock()
	if len(events) == 0 {
		return
	}
	var (
		claims  []route.Claim
		release []string
		seen    = make(map[string]bool, len(events))
	)
	// The registry says what is true now; events only say whom to look at.
	for i := len(events) - 1; i >= 0; i-- {
		id := events[i].id
		if seen[id] {
			continue
		}
		seen[id] = true
		if s, ok := r.srv.Session(id); ok {
			if !r.claimed[id].Equal(s.Since) {
				claims = append(claims, route.Claim{ID: id, Since: s.Since})
			}
		} else if _, ok := r.claimed[id]; ok {
			release = append(release, id)
		}
	}
	r.claim(ctx, claims)
	if len(release) > 0 {
		if err := r.cfg.Store.Release(ctx, r.cfg.Addr, release); r.failed(err != nil, err) {
			return // still in claimed: released next round
		}
		for _, id := range release {
			delete(r.claimed, id)
			r.log.Debug("route released", "agent", id)
		}
	}
}

func (r *Routes) claim(ctx context.Context, claims []route.Claim) {
	if len(claims) == 0 {
		return
	}
	stored, err := r.cfg.Store.Claim(ctx, r.cfg.Addr, claims, r.cfg.TTL)
	n := 0
	for i, c := range claims {
		if stored[i] {
			r.claimed[c.ID] = c.Since
			r.log.Debug("route claimed", "agent", c.ID, "address", r.cfg.Addr)
			n++
		}
	}
	// The ones not stored anywhere are claimed by the next renewal.
	r.failed(n == 0, err)
}

func (r *Routes) publish(ctx context.Context) {
	err := r.cfg.Store.Publish(ctx, r.cfg.Addr, r.started, r.cfg.TTL)
	r.failed(err != nil, err)
}

// silentOnTies returns the agents of conflicts whose route elsewhere has
// the same second as ours (so the address decides, not recency) and whose
// connection here received nothing within the duplicate probe: the agent
// moved on (a NAT rebinding that a load balancer sent to another proxy,
// which reset it) and this connection is dead, though not timed out yet.
// The address rule would otherwise keep the dead connection and close the
// new one. Probes run at once, bounded.
func (r *Routes) silentOnTies(ctx context.Context, conflicts []route.Conflict) map[string]bool {
	var (
		mu   sync.Mutex
		dead map[string]bool
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 256)
	)
	for _, cf := range conflicts {
		since := r.claimed[cf.ID]
		if !cf.Member || cf.Route.Since.Unix() != since.Unix() {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if r.srv.Answering(ctx, Session{ID: cf.ID, Since: since}) {
				return
			}
			mu.Lock()
			if dead == nil {
				dead = map[string]bool{}
			}
			dead[cf.ID] = true
			mu.Unlock()
		})
	}
	wg.Wait()
	return dead
}

// maxLogged bounds the agents named in one log line about many of them.
const maxLogged = 10

// renew claims the routes of agents not claimed yet, extends those
// claimed, judges the ones that name another proxy, and releases routes of
// agents that are gone.
func (r *Routes) renew(ctx context.Context) {
	start := time.Now()
	sessions := r.srv.Sessions()
	defer func() {
		took, period := time.Since(start), r.period()
		if took > period/2 {
			r.log.Warn("route renewal took over half its period: routes may expire before they are renewed (a slow or overloaded memcached?)",
				"agents", len(sessions), "took", took.Round(time.Millisecond).String(), "period", period.String())
			return
		}
		r.log.Debug("routes renewed", "agents", len(sessions), "took", took.Round(time.Millisecond).String())
	}()
	var claims, held []route.Claim
	current := make(map[string]bool, len(sessions))
	for _, s := range sessions {
		current[s.ID] = true
		c := route.Claim{ID: s.ID, Since: s.Since}
		if r.claimed[s.ID].Equal(s.Since) {
			held = append(held, c)
		} else {
			claims = append(claims, c)
		}
	}
	r.claim(ctx, claims)

	conflicts, err := r.cfg.Store.Renew(ctx, r.cfg.Addr, held, r.cfg.TTL)
	if r.failed(err != nil, err) {
		return
	}
	var reclaim []route.Claim
	var ignored []string
	dead := r.silentOnTies(ctx, conflicts)
	for _, cf := range conflicts {
		since := r.claimed[cf.ID]
		ours := route.Route{Addr: r.cfg.Addr, Since: since}
		var why string
		switch {
		case cf.Member && dead[cf.ID]:
			why = "agent reconnected to another proxy in the same second, and its connection here is silent: closing it"
		case cf.Member && cf.Route.Wins(ours):
			why = "agent reconnected to another proxy: closing the stale connection here"
		}
		if why != "" {
			r.log.Warn(why, "agent", cf.ID, "route", cf.Route.Addr)
			if r.srv.Drop(Session{ID: cf.ID, Since: since}, wire.CodeReplaced,
				"agent "+cf.ID+" is connected to another proxy ("+cf.Route.Addr+")") {
				delete(r.claimed, cf.ID)
			}
			continue
		}
		if !cf.Member && len(ignored) < maxLogged {
			ignored = append(ignored, cf.ID+" -> "+cf.Route.Addr)
		}
		reclaim = append(reclaim, route.Claim{ID: cf.ID, Since: since})
	}
	if len(ignored) > 0 {
		r.log.Warn("routes of agents connected here name a node that is not a live cluster member: ignored, claimed again",
			"count", countNonMembers(conflicts), "routes", ignored)
	}
	if len(reclaim) > 0 {
		r.log.Debug("claiming routes again over older ones", "count", len(reclaim))
		r.claim(ctx, reclaim)
	}

	var gone []string
	for id := range r.claimed {
		if !current[id] {
			gone = append(gone, id)
		}
	}
	if len(gone) == 0 {
		return
	}
	if err := r.cfg.Store.Release(ctx, r.cfg.Addr, gone); !r.failed(err != nil, err) {
		for _, id := range gone {
			delete(r.claimed, id)
		}
	}
}

func countNonMembers(cs []route.Conflict) int {
	n := 0
	for _, c := range cs {
		if !c.Member {
			n++
		}
	}
	return n
}

// shutdown withdraws the node lease, so no node follows our routes any
// more, then releases the routes still ours, all in parallel and within
// ReleaseTimeout even when the store does not answer.
func (r *Routes) shutdown() {
	ctx, cancel := context.WithTimeoutCause(context.Background(), r.cfg.ReleaseTimeout,
		errors.New("route release took longer than its timeout"))
	defer cancel()
	start := time.Now()
	ids := make([]string, 0, len(r.claimed))
	for id := range r.claimed {
		ids = append(ids, id)
	}
	var wg sync.WaitGroup
	var werr, rerr error
	wg.Go(func() { werr = r.cfg.Store.Withdraw(ctx, r.cfg.Addr) })
	wg.Go(func() { rerr = r.cfg.Store.Release(ctx, r.cfg.Addr, ids) })
	wg.Wait()
	if err := errors.Join(werr, rerr); err != nil {
		r.log.Warn("routes not all released on shutdown; they expire after the ttl",
			"routes", len(ids), "ttl", r.cfg.TTL.String(), "took", time.Since(start).Round(time.Millisecond).String(), "error", err)
		return
	}
	r.log.Info("routes released", "routes", len(ids), "took", time.Since(start).Round(time.Millisecond).String())
}

// withdraw withdraws the node lease, within ReleaseTimeout.
func (r *Routes) withdraw() {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.ReleaseTimeout)
	defer cancel()
	if err := r.cfg.Store.Withdraw(ctx, r.cfg.Addr); err != nil {
		r.log.Warn("node lease not withdrawn; it expires after the ttl", "ttl", r.cfg.TTL.String(), "error", err)
		return
	}
	r.log.Info("draining: node lease withdrawn; routes to this proxy are no longer followed")
}

// release releases every route still naming this proxy, within
// ReleaseTimeout.
func (r *Routes) release() {
	ctx, cancel := context.WithTimeoutCause(context.Background(), r.cfg.ReleaseTimeout,
		errors.New("route release took longer than its timeout"))
	defer cancel()
	start := time.Now()
	ids := make([]string, 0, len(r.claimed))
	for id := range r.claimed {
		ids = append(ids, id)
	}
	if err := r.cfg.Store.Release(ctx, r.cfg.Addr, ids); err != nil {
		r.log.Warn("routes not all released on shutdown; they expire after the ttl",
			"routes", len(ids), "ttl", r.cfg.TTL.String(), "took", time.Since(start).Round(time.Millisecond).String(), "error", err)
		return
	}
	r.log.Info("routes released", "routes", len(ids), "took", time.Since(start).Round(time.Millisecond).String())
}

// failed logs store errors once per outage, and the recovery, and
// returns down: whether the operation failed as a whole. err, if not nil
// while the operation partly succeeded, is logged at debug level.
func (r *Routes) failed(down bool, err error) bool {
	if !down && err != nil {
		r.log.Debug("some route store operations failed; they are retried at the next renewal", "error", err)
	}
	if down {
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
