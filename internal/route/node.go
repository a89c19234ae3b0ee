package route

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
)

// A node lease says that the proxy at an address is a live member of the
// cluster. Its value is one line:
//
//	rhn1 <started> <expires> <mac>
//
// started and expires are Unix milliseconds; mac is the hex HMAC-SHA256,
// under the cluster key, of "reverse-http node lease v1\n" addr "\n"
// started "\n" expires, or "-" without a cluster key. The signed expiry
// keeps a copied lease from making a dead node look alive for longer than
// the lease it copied; memcached's own expiration drops it sooner.

const leaseMagic = "rhn1"

// MaxClockSkew is how far another node's clock may be ahead of ours before
// its leases look expired early.
const MaxClockSkew = 5 * time.Second

// DeriveClusterKey turns the contents of a cluster key file into the key
// that signs node leases.
func DeriveClusterKey(secret []byte) []byte {
	sum := sha256.Sum256(append([]byte("reverse-http cluster key\x00"), secret...))
	return sum[:]
}

func (m *Memcached) leaseValue(addr string, started, expires time.Time) string {
	s, e := strconv.FormatInt(started.UnixMilli(), 10), strconv.FormatInt(expires.UnixMilli(), 10)
	mac := "-"
	if len(m.key) > 0 {
		mac = m.mac(addr, s, e)
	}
	return leaseMagic + " " + s + " " + e + " " + mac
}

func (m *Memcached) mac(addr, started, expires string) string {
	h := hmac.New(sha256.New, m.key)
	h.Write([]byte("reverse-http node lease v1\n" + addr + "\n" + started + "\n" + expires))
	return hex.EncodeToString(h.Sum(nil))
}

// checkLease validates the node lease value of addr at now.
func (m *Memcached) checkLease(addr string, value []byte, now time.Time) error {
	f := strings.Fields(string(value))
	if len(f) != 4 || f[0] != leaseMagic {
		return errors.New("malformed node lease")
	}
	if _, err := strconv.ParseInt(f[1], 10, 64); err != nil {
		return errors.New("malformed node lease")
	}
	exp, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		return errors.New("malformed node lease")
	}
	if len(m.key) > 0 {
		want := m.mac(addr, f[1], f[2])
		if !hmac.Equal([]byte(f[3]), []byte(want)) {
			return errors.New("node lease not signed with the cluster key")
		}
	}
	if time.UnixMilli(exp).Add(MaxClockSkew).Before(now) {
		return errors.New("node lease expired")
	}
	return nil
}

// Publish writes the node lease of the proxy at addr, started at started,
// valid for ttl, to every server. It fails only if no server took it.
func (m *Memcached) Publish(ctx context.Context, addr string, started time.Time, ttl time.Duration) error {
	key := NodeKey(addr)
	if !legalKey(key) {
		return fmt.Errorf("address %q cannot be a memcached key", addr)
	}
	v := []byte(m.leaseValue(addr, started, m.now().Add(ttl)))
	errs, allFailed := m.each(func(sv *server) error {
		return m.do(ctx, sv, "set", func(mc *memcache.Client) error {
			return mc.Set(&memcache.Item{Key: key, Value: v, Expiration: seconds(ttl)})
		})
	})
	if allFailed {
		return errors.Join(errs...)
	}
	return nil
}

// Withdraw deletes the node lease of addr everywhere: its routes are not
// followed any more.
func (m *Memcached) Withdraw(ctx context.Context, addr string) error {
	key := NodeKey(addr)
	errs, allFailed := m.each(func(sv *server) error {
		err := m.do(ctx, sv, "delete", func(mc *memcache.Client) error { return mc.Delete(key) })
		if errors.Is(err, memcache.ErrCacheMiss) {
			return nil
		}
		return err
	})
	if allFailed {
		return errors.Join(errs...)
	}
	return nil
}

// Members returns which of addrs hold a valid node lease on some server.
// A server that does not answer counts for nothing.
func (m *Memcached) Members(ctx context.Context, addrs []string) map[string]bool {
	live := make(map[string]bool, len(addrs))
	keys := make([]string, 0, len(addrs))
	byKey := make(map[string]string, len(addrs))
	for _, a := range addrs {
		if k := NodeKey(a); legalKey(k) {
			keys = append(keys, k)
			byKey[k] = a
		}
	}
	if len(keys) == 0 {
		return live
	}
	var mu sync.Mutex
	now := m.now()
	m.each(func(sv *server) error {
		items, err := m.getMulti(ctx, sv, keys)
		mu.Lock()
		defer mu.Unlock()
		for k, it := range items {
			a := byKey[k]
			if m.checkLease(a, it.Value, now) == nil {
				live[a] = true
			}
		}
		return err
	})
	return live
}
