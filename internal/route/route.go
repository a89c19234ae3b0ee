// Package route keeps "agent ID -> HTTP proxy address" routes for a cluster
// of proxies as leases: a route expires unless the proxy holding the agent
// renews it, and a proxy only ever removes or renews a route that still
// names itself.
//
// In memcached the key is the agent ID (as the reference writes it) and
// the value the proxy's HTTP address, so reference lb nodes can read our
// routes. IDs that cannot be memcached keys (spaces, over 250 bytes) are
// stored under "rh:" and the hex SHA-256 of the ID.
package route

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
)

// ErrNotFound: no route for the agent.
var ErrNotFound = errors.New("no route")

// Store holds routes. Implementations are safe for concurrent use.
type Store interface {
	// Lookup returns the address of the proxy that holds agentID.
	Lookup(agentID string) (addr string, err error)
	// Claim makes addr the route of agentID for ttl, whatever it was: the
	// agent has just connected to the proxy at addr.
	Claim(agentID, addr string, ttl time.Duration) error
	// Renew extends the lease of agentID's route if it names addr, and
	// creates it if it is gone (the store lost it). It returns false when
	// the route names another proxy.
	Renew(agentID, addr string, ttl time.Duration) (owned bool, err error)
	// Release removes agentID's route if it still names addr.
	Release(agentID, addr string) error
}

// Key is the memcached key of agentID's route.
func Key(agentID string) string {
	if len(agentID) <= 250 && !strings.ContainsFunc(agentID, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return agentID
	}
	sum := sha256.Sum256([]byte(agentID))
	return "rh:" + hex.EncodeToString(sum[:])
}

// Memcached is a Store in memcached.
type Memcached struct {
	mc *memcache.Client
}

// NewMemcached uses the memcached server at addr with the given I/O timeout.
func NewMemcached(addr string, timeout time.Duration) *Memcached {
	mc := memcache.New(addr)
	if timeout > 0 {
		mc.Timeout = timeout
	}
	mc.MaxIdleConns = 8
	return &Memcached{mc: mc}
}

// seconds is a memcached expiration for ttl, at least one second.
func seconds(ttl time.Duration) int32 {
	s := math.Ceil(ttl.Seconds())
	if s < 1 {
		return 1
	}
	return int32(min(s, 30*24*3600-1)) // beyond 30 days memcached reads a date
}

func (m *Memcached) Lookup(agentID string) (string, error) {
	it, err := m.mc.Get(Key(agentID))
	if errors.Is(err, memcache.ErrCacheMiss) {
		return "", ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("memcached: %w", err)
	}
	return ParseAddr(it.Value)
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

func (m *Memcached) Claim(agentID, addr string, ttl time.Duration) error {
	err := m.mc.Set(&memcache.Item{Key: Key(agentID), Value: []byte(addr), Expiration: seconds(ttl)})
	if err != nil {
		return fmt.Errorf("memcached: %w", err)
	}
	return nil
}

// casRetries bounds the compare-and-swap loops against concurrent writers.
const casRetries = 5

func (m *Memcached) Renew(agentID, addr string, ttl time.Duration) (bool, error) {
	key := Key(agentID)
	for range casRetries {
		it, err := m.mc.Get(key)
		if errors.Is(err, memcache.ErrCacheMiss) {
			err = m.mc.Add(&memcache.Item{Key: key, Value: []byte(addr), Expiration: seconds(ttl)})
			if errors.Is(err, memcache.ErrNotStored) {
				continue // another proxy added it first: look again
			}
			if err != nil {
				return false, fmt.Errorf("memcached: %w", err)
			}
			return true, nil
		}
		if err != nil {
			return false, fmt.Errorf("memcached: %w", err)
		}
		if string(it.Value) != addr {
			return false, nil
		}
		it.Expiration = seconds(ttl)
		err = m.mc.CompareAndSwap(it)
		if errors.Is(err, memcache.ErrCASConflict) || errors.Is(err, memcache.ErrNotStored) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("memcached: %w", err)
		}
		return true, nil
	}
	return false, fmt.Errorf("memcached: route of agent %s changed %d times while renewing", agentID, casRetries)
}

// Release swaps the route, if it still names addr, for one that expired
// already: memcached has no conditional delete, but a compare-and-swap with
// a negative expiration is one.
func (m *Memcached) Release(agentID, addr string) error {
	key := Key(agentID)
	for range casRetries {
		it, err := m.mc.Get(key)
		if errors.Is(err, memcache.ErrCacheMiss) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("memcached: %w", err)
		}
		if string(it.Value) != addr {
			return nil // another proxy holds the agent now
		}
		it.Expiration = -1
		err = m.mc.CompareAndSwap(it)
		if errors.Is(err, memcache.ErrCASConflict) {
			continue
		}
		if err != nil && !errors.Is(err, memcache.ErrNotStored) && !errors.Is(err, memcache.ErrCacheMiss) {
			return fmt.Errorf("memcached: %w", err)
		}
		return nil
	}
	return fmt.Errorf("memcached: route of agent %s changed %d times while releasing", agentID, casRetries)
}
