package front

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/relay"
)

// Tunnel is one open client tunnel (a CONNECT) or an absolute-form request
// in flight, as /tunnels lists it.
type Tunnel struct {
	Agent  string `json:"agent"`
	Client string `json:"client"`
	// Identity is who the client authenticated as (see
	// auth.Identity.String): "client:NAME" (clients file),
	// "cert:NAME" (client certificate), "jwt:SUB" or "jwt:jti:ID"
	// (client token), "noauth"; empty on an agent.
	Identity    string    `json:"identity,omitempty"`
	Destination string    `json:"destination"`
	Method      string    `json:"method"`
	Since       time.Time `json:"since"`
	BytesUp     int64     `json:"bytes_up"`
	BytesDown   int64     `json:"bytes_down"`
}

// open is a registered Tunnel: its fixed fields, how to read its bytes and
// how to end it at the shutdown deadline or when its client's identity
// no longer holds.
type open struct {
	info  Tunnel
	id    *auth.Identity // nil on fronts without one
	bytes func() (up, down int64)
	abort func(error)

	mu      sync.Mutex
	expiry  *time.Timer // ends it when id expires
	removed bool
}

// relayOpen is the open entry of a tunnel whose relay rt holds once it
// started: its byte counts, and an abort that ends it at the shutdown
// deadline or on revocation.
func relayOpen(info Tunnel, id *auth.Identity, rt *atomic.Pointer[relay.Tunnel]) *open {
	return &open{
		info: info,
		id:   id,
		bytes: func() (int64, int64) {
			if t := rt.Load(); t != nil {
				return t.Bytes()
			}
			return 0, 0
		},
		abort: func(err error) {
			if t := rt.Load(); t != nil {
				t.Abort(err)
			}
		},
	}
}

// openSet is the client front's set of open tunnels and requests, and a
// count of everything it started that has not ended yet (handler calls
// and relays), so Drain can wait for all of it.
type openSet struct {
	mu      sync.Mutex
	m       map[*open]struct{}
	running atomic.Int64
	// handshakes are SOCKS5 connections accepted whose tunnel is not
	// open yet; Drain waits for them as http.Server.Shutdown waits for
	// requests in flight.
	handshakes atomic.Int64
}

func (s *openSet) add(o *open) {
	s.mu.Lock()
	if s.m == nil {
		s.m = map[*open]struct{}{}
	}
	s.m[o] = struct{}{}
	s.mu.Unlock()
}

func (s *openSet) remove(o *open) {
	s.mu.Lock()
	delete(s.m, o)
	s.mu.Unlock()
	o.mu.Lock()
	o.removed = true
	if o.expiry != nil {
		o.expiry.Stop()
	}
	o.mu.Unlock()
}

// snapshot returns the open entries.
func (s *openSet) snapshot() []*open {
	s.mu.Lock()
	defer s.mu.Unlock()
	all := make([]*open, 0, len(s.m))
	for o := range s.m {
		all = append(all, o)
	}
	return all
}

func (s *openSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// list returns up to limit tunnels, oldest first (all if limit <= 0).
func (s *openSet) list(limit int) []Tunnel {
	all := s.snapshot()
	slices.SortFunc(all, func(a, b *open) int {
		if c := a.info.Since.Compare(b.info.Since); c != 0 {
			return c
		}
		return strings.Compare(a.info.Client, b.info.Client)
	})
	if limit > 0 && len(all) > limit {
		all = all[:limit]
	}
	out := make([]Tunnel, len(all))
	for i, o := range all {
		out[i] = o.info
		out[i].Since = o.info.Since.UTC()
		if o.bytes != nil {
			out[i].BytesUp, out[i].BytesDown = o.bytes()
		}
	}
	return out
}

// abortAll ends every open tunnel and request and returns how many.
func (s *openSet) abortAll() int {
	all := s.snapshot()
	for _, o := range all {
		if o.abort != nil {
			o.abort(errShutdown)
		}
	}
	return len(all)
}

// watch ends o when its client's identity no longer holds: at once if it
// was revoked while o was opening, at its expiry by a timer, and on
// Revalidate. Call it once o is registered and can be aborted.
func (h *Handler) watch(o *open) {
	if o.id == nil || o.abort == nil {
		return
	}
	if err := o.id.Check(o.info.Agent, o.info.Destination, time.Now()); err != nil {
		h.revoke(o, err)
		return
	}
	if o.id.Expires.IsZero() {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.removed {
		return
	}
	o.expiry = time.AfterFunc(time.Until(o.id.Expires), func() {
		h.revoke(o, o.id.Check(o.info.Agent, o.info.Destination, time.Now()))
	})
}

// revoke ends o because its identity no longer holds (err; nil: it does
// after all).
func (h *Handler) revoke(o *open, err error) {
	if err == nil {
		return
	}
	h.log.Info("closing a tunnel: its client's credentials were revoked or expired", "agent", o.info.Agent,
		"client", o.info.Client, "identity", o.info.Identity, "destination", o.info.Destination, "reason", err.Error())
	o.abort(&revokedError{err})
}

// revokedError ends a tunnel whose client's identity no longer holds.
type revokedError struct{ err error }

func (e *revokedError) Error() string { return "closed: " + e.err.Error() }
func (e *revokedError) Unwrap() error { return e.err }

// Revalidate checks every open tunnel's client identity against the auth
// files in force now, and ends those that no longer hold (a client
// removed, changed or expired, a token revoked). Call it after the
// clients file or the revocation list changed; it returns how many it
// ended.
func (h *Handler) Revalidate() int {
	n := 0
	now := time.Now()
	for _, o := range h.open.snapshot() {
		if o.id == nil || o.abort == nil {
			continue
		}
		if err := o.id.Check(o.info.Agent, o.info.Destination, now); err != nil {
			h.revoke(o, err)
			n++
		}
	}
	return n
}

// Tunnels returns up to limit of the open CONNECT tunnels and absolute-form
// requests in flight, oldest first, with the bytes each moved so far.
func (h *Handler) Tunnels(limit int) []Tunnel { return h.open.list(limit) }

// OpenTunnels is how many CONNECT tunnels and absolute-form requests are
// open now.
func (h *Handler) OpenTunnels() int { return h.open.len() }

// Drain waits until every tunnel and request has ended or ctx ends; then it
// ends those still open (their clients' connections and their streams to
// the agents are closed) and waits until every goroutine the Handler
// started has returned. It closes the idle connections of absolute-form
// requests. http.Server.Shutdown does not wait for hijacked connections:
// call Drain after it, with the same deadline.
func (h *Handler) Drain(ctx context.Context) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for (h.open.len() > 0 || h.open.handshakes.Load() > 0) && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
	h.stopAll()
	if n := h.open.abortAll(); n > 0 {
		h.log.Warn("shutdown deadline: closing the tunnels and requests still open", "tunnels", n)
	}
	for h.open.running.Load() > 0 {
		<-t.C
		h.open.abortAll() // any that registered just now
	}
	h.transports.closeIdle()
}

// errShutdown ends the tunnels still open at the shutdown deadline.
var errShutdown = errors.New("closed at the shutdown deadline (--shutdown-timeout)")
