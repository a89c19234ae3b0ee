package agent

import (
	"net"
	"net/netip"
	"strconv"
)

// Destination safety: what the agent refuses to dial whatever its allowlist
// says (its own listeners), and what it refuses with BlockLocal (loopback,
// link-local, unspecified and cloud metadata addresses). Both are checked on
// the resolved address that is then dialed, so a name that resolves to
// 127.0.0.1 is refused like the literal 127.0.0.1.

// localRanges are the ranges BlockLocal refuses, most specific first: an
// allowlist re-allows an address only with an address or CIDR pattern that
// lies inside the first range containing it, so the metadata addresses need
// a pattern naming exactly them (169.254.0.0/16 does not re-allow
// 169.254.169.254).
var localRanges = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("169.254.169.254/32"), "a cloud metadata address"},
	{netip.MustParsePrefix("fd00:ec2::254/128"), "a cloud metadata address"},
	{netip.MustParsePrefix("127.0.0.0/8"), "a loopback address"},
	{netip.MustParsePrefix("::1/128"), "a loopback address"},
	{netip.MustParsePrefix("169.254.0.0/16"), "a link-local address"},
	{netip.MustParsePrefix("fe80::/10"), "a link-local address"},
	// 0.0.0.0 and :: reach this host itself when dialed; the rest of
	// 0.0.0.0/8 is "this network" and never a remote destination.
	{netip.MustParsePrefix("0.0.0.0/8"), "an unspecified address"},
	{netip.MustParsePrefix("::/128"), "an unspecified address"},
}

// localRange returns the range of localRanges that holds ip (unmapped), if
// any.
func localRange(ip netip.Addr) (netip.Prefix, string, bool) {
	for _, r := range localRanges {
		if r.prefix.Contains(ip) {
			return r.prefix, r.what, true
		}
	}
	return netip.Prefix{}, "", false
}

// refusal says what ip:port is when the agent will not dial it, whatever
// name or address the client asked for, or "" when it may. A zone
// (fe80::1%eth0) does not change what an address is.
func (a *Agent) refusal(ip netip.Addr, port int) string {
	ip = ip.Unmap().WithZone("")
	if a.ownListener(ip, port) {
		return "one of the agent's own listeners"
	}
	if !a.cfg.BlockLocal {
		return ""
	}
	prefix, what, ok := localRange(ip)
	if !ok || a.allowList.Load().AllowedIPWithin(ip, port, prefix) {
		return ""
	}
	return what + ", refused by --agent-client.block-local"
}

// ownListener reports whether dialing ip:port would reach one of the
// agent's own listeners. A listener on an unspecified address (0.0.0.0,
// ::) listens on every local address; dialing an unspecified address
// reaches this host, so it counts as every local address too.
func (a *Agent) ownListener(ip netip.Addr, port int) bool {
	var wildcard bool
	for _, l := range a.cfg.OwnListeners {
		if int(l.Port()) != port {
			continue
		}
		lip := l.Addr().Unmap()
		switch {
		case lip == ip:
			return true
		case lip.IsUnspecified():
			wildcard = true
		case ip.IsUnspecified() && lip.IsLoopback():
			return true
		}
	}
	if !wildcard {
		return false
	}
	if ip.IsLoopback() || ip.IsUnspecified() {
		return true
	}
	for _, local := range a.localAddrs() {
		if local == ip {
			return true
		}
	}
	return false
}

// localAddrs returns the host's interface addresses, unmapped. It is only
// asked when a destination's port is that of a listener on a wildcard
// address, so ordinary tunnels do not pay for it.
func (a *Agent) localAddrs() []netip.Addr {
	if a.cfg.LocalAddrs != nil {
		return a.cfg.LocalAddrs()
	}
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		a.log.Warn("cannot list the host's addresses to protect the agent's own listeners", "error", err)
		return nil
	}
	out := make([]netip.Addr, 0, len(ifAddrs))
	for _, ia := range ifAddrs {
		if pfx, err := netip.ParsePrefix(ia.String()); err == nil {
			out = append(out, pfx.Addr().Unmap())
		}
	}
	return out
}

// refusedReason is the reason sent to the client when every address of
// target was refused; first is the first refused address and what it is.
func refusedReason(target string, first netip.Addr, port int, what string) string {
	if host, _, err := net.SplitHostPort(target); err == nil {
		if ip, err := netip.ParseAddr(host); err == nil && ip.Unmap() == first.Unmap() {
			return "destination " + target + " refused by the agent: it is " + what
		}
	}
	addr := net.JoinHostPort(first.String(), strconv.Itoa(port))
	return "destination " + target + " refused by the agent: it resolves to " + addr + ", " + what
}
