package front

import (
	"net"
	"net/netip"
	"sync"
)

// clientCounts counts what each client address has open: CONNECT tunnels
// and absolute-form requests in flight. An address has an entry only
// while it has something open, so the map holds at most one entry per
// open client connection.
type clientCounts struct {
	max int // 0: no limit, only counting

	mu   sync.Mutex
	open map[netip.Addr]int // bounded by the open client connections
}

func newClientCounts(max int) *clientCounts {
	return &clientCounts{max: max, open: make(map[netip.Addr]int)}
}

// clientAddr is the IP address of a request's RemoteAddr ("ip:port"),
// IPv4-mapped IPv6 addresses unmapped; the zero Addr if it has none.
func clientAddr(remote string) netip.Addr {
	if ap, err := netip.ParseAddrPort(remote); err == nil {
		return ap.Addr().Unmap()
	}
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	a, _ := netip.ParseAddr(host)
	return a.Unmap()
}

// acquire takes a place for addr; false if addr is at the limit.
func (c *clientCounts) acquire(addr netip.Addr) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.open[addr]
	if c.max > 0 && n >= c.max {
		return false
	}
	c.open[addr] = n + 1
	return true
}

// release gives back a place taken by acquire.
func (c *clientCounts) release(addr netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.open[addr] - 1; n > 0 {
		c.open[addr] = n
	} else {
		delete(c.open, addr)
	}
}

// count is what addr has open now.
func (c *clientCounts) count(addr netip.Addr) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.open[addr]
}
