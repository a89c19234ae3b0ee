// Package allow implements the destination allowlist shared by the proxy and
// the agent: a list of patterns naming the hosts and ports a tunnel may reach.
//
// Each pattern is a host part with an optional port part. The host part is one
// of
//
//	localhost             a host name, matched exactly (ASCII case-insensitive)
//	*.zone                the name zone and every name below it (a.zone, a.b.zone)
//	127.0.0.1             an IPv4 address
//	2001:db8::1           an IPv6 address, bare (it then cannot carry a port)
//	[2001:db8::1]         an IPv6 address in brackets
//	10.0.0.1/8            an IPv4 CIDR (host bits are ignored: 10.0.0.0/8)
//	1000::/16             an IPv6 CIDR
//	[2001:db8::1]/64      an IPv6 CIDR with the address in brackets
//
// and the port part is one of
//
//	(nothing)             every port
//	:80                   port 80
//	:1000-2000            ports 1000 to 2000 inclusive
//
// so that, for example, localhost:80, *.zone:1000-2000, 10.0.0.1/8:80,
// 1000::/16:1000-2000 and [2001:db8::1]:80 are all patterns. Ports are 1-65535.
//
// Host names hold only ASCII letters, digits, '-', '_' and '.', in non-empty
// labels; internationalised names must be given in their xn-- form. A trailing
// dot is ignored in patterns and in requested names. A name whose last label is
// all digits (10.0.0.256, 127.1) is refused rather than taken for a host name:
// it is almost surely a mistyped address, and some resolvers read it as one.
//
// A requested name matches only name and zone patterns; a requested IP address
// matches only address and CIDR patterns, never a name, whatever it resolves
// to. Resolving names and checking the resulting addresses is the caller's job
// (see [List.AllowedName] and [List.AllowedIP]). An IPv4-mapped IPv6 address
// (::ffff:10.1.2.3) is treated as the IPv4 address it maps, in patterns and in
// requests; other IPv6 CIDRs, ::/0 included, never match IPv4 addresses. An
// IPv6 address with a zone (fe80::1%eth0) matches nothing.
//
// A destination is allowed when any pattern matches both its host and its
// port. A list without patterns allows every destination.
package allow

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// List is a parsed allowlist. The zero value and an empty list allow
// everything. A List is immutable once parsed and safe for concurrent use.
type List struct {
	names    map[string][]portRange // exact host names, lower case, no trailing dot
	zones    map[string][]portRange // "*.zone" patterns keyed by "zone"
	addrs    []addrRule             // addresses (as full-length prefixes) and CIDRs
	patterns []string               // normalised patterns in input order, for String
}

type addrRule struct {
	prefix netip.Prefix // masked; IPv4-mapped prefixes are stored as IPv4
	ports  portRange
}

// portRange is an inclusive range of ports; every valid port is 1-65535.
type portRange struct{ lo, hi uint16 }

var anyPort = portRange{lo: 1, hi: 65535}

func (r portRange) contains(port int) bool {
	return int(r.lo) <= port && port <= int(r.hi)
}

func (r portRange) String() string {
	switch {
	case r == anyPort:
		return ""
	case r.lo == r.hi:
		return ":" + strconv.Itoa(int(r.lo))
	default:
		return ":" + strconv.Itoa(int(r.lo)) + "-" + strconv.Itoa(int(r.hi))
	}
}

// maxName is the longest host name accepted, without its trailing dot.
const maxName = 253

// Parse parses patterns. Each element may itself hold several comma-separated
// patterns (as a CLI flag value "a,b" does); whitespace around each pattern is
// trimmed and empty patterns are skipped, so a list of only empty elements
// allows everything. Repeated patterns are kept once. Every malformed pattern
// is reported, each quoted with what is wrong with it.
func Parse(patterns []string) (*List, error) {
	l := &List{}
	seen := make(map[string]bool)
	var errs []error
	for _, elem := range patterns {
		for p := range strings.SplitSeq(elem, ",") {
			p = strings.TrimSpace(p)
			if p == "" {
				continue
			}
			r, err := parseRule(p)
			if err != nil {
				errs = append(errs, fmt.Errorf("allowlist pattern %q: %w", p, err))
				continue
			}
			norm := r.String()
			if seen[norm] {
				continue
			}
			seen[norm] = true
			l.patterns = append(l.patterns, norm)
			l.insert(r)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return l, nil
}

type ruleKind uint8

const (
	kindName ruleKind = iota // an exact host name
	kindZone                 // "*." and a name
	kindAddr                 // an address or a CIDR, as a prefix
)

// rule is one parsed pattern.
type rule struct {
	kind   ruleKind
	name   string       // kindName, kindZone: lower case, no trailing dot
	prefix netip.Prefix // kindAddr: masked; IPv4-mapped prefixes as IPv4
	ports  portRange
}

// String returns the normalised pattern, which parses back to r.
func (r rule) String() string {
	switch r.kind {
	case kindName:
		return r.name + r.ports.String()
	case kindZone:
		return "*." + r.name + r.ports.String()
	}
	if !r.prefix.IsSingleIP() {
		return r.prefix.String() + r.ports.String()
	}
	addr := r.prefix.Addr()
	if addr.Is6() && r.ports != anyPort {
		return "[" + addr.String() + "]" + r.ports.String()
	}
	return addr.String() + r.ports.String()
}

func (l *List) insert(r rule) {
	var m *map[string][]portRange
	switch r.kind {
	case kindAddr:
		l.addrs = append(l.addrs, addrRule{prefix: r.prefix, ports: r.ports})
		return
	case kindName:
		m = &l.names
	case kindZone:
		m = &l.zones
	}
	if *m == nil {
		*m = make(map[string][]portRange)
	}
	(*m)[r.name] = append((*m)[r.name], r.ports)
}

// parseRule parses one trimmed, non-empty pattern.
func parseRule(p string) (rule, error) {
	host, portText, err := splitPattern(p)
	if err != nil {
		return rule{}, err
	}
	r := rule{ports: anyPort}
	if portText != "" {
		if r.ports, err = parsePorts(portText); err != nil {
			return rule{}, err
		}
	}
	switch {
	case host == "":
		return rule{}, errors.New("empty host")
	case host == "*":
		return rule{}, errors.New("a bare '*' is not a pattern; use an empty allowlist to allow every destination")
	case isAddrLike(host):
		r.kind = kindAddr
		r.prefix, err = parsePrefix(host)
		return r, err
	case strings.HasPrefix(host, "*."):
		r.kind, host = kindZone, host[2:]
		if host == "" || host == "." {
			return rule{}, errors.New("empty zone after '*.'")
		}
	default:
		r.kind = kindName
	}
	if strings.Contains(host, "*") {
		return rule{}, errors.New("'*' is only allowed as a leading '*.'")
	}
	host = strings.TrimSuffix(host, ".")
	if reason := checkName(host); reason != "" {
		return rule{}, errors.New(reason)
	}
	r.name = strings.ToLower(host)
	return r, nil
}

// splitPattern splits a pattern into its host part and its port part (without
// the colon), keeping a CIDR's "/bits" with the host and removing brackets.
func splitPattern(p string) (host, ports string, err error) {
	if strings.HasPrefix(p, "[") {
		end := strings.IndexByte(p, ']')
		if end < 0 {
			return "", "", errors.New("missing ']'")
		}
		host, rest := p[1:end], p[end+1:]
		if strings.Contains(host, "[") || strings.ContainsAny(rest, "[]") {
			return "", "", errors.New("unbalanced brackets")
		}
		if !strings.Contains(host, ":") {
			return "", "", errors.New("brackets are only for IPv6 addresses")
		}
		if strings.HasPrefix(rest, "/") {
			return splitCIDR(host, rest)
		}
		switch {
		case rest == "":
			return host, "", nil
		case rest[0] != ':':
			return "", "", errors.New("unexpected text after ']'")
		case rest == ":":
			return "", "", errors.New("empty port")
		}
		return host, rest[1:], nil
	}
	if strings.ContainsAny(p, "[]") {
		return "", "", errors.New("unbalanced brackets")
	}
	if slash := strings.IndexByte(p, '/'); slash >= 0 {
		return splitCIDR(p[:slash], p[slash:])
	}
	if strings.Count(p, ":") > 1 {
		// A bare IPv6 address: it cannot carry a port.
		if _, err := netip.ParseAddr(p); err != nil {
			return "", "", errors.New("invalid IPv6 address, or too many colons for host:port (an IPv6 address takes a port as [address]:port)")
		}
		return p, "", nil
	}
	host, ports, found := strings.Cut(p, ":")
	if found && ports == "" {
		return "", "", errors.New("empty port")
	}
	return host, ports, nil
}

// splitCIDR splits a CIDR pattern into its prefix and its port part; addr is
// the address and rest starts with the '/'. The port follows the prefix
// length, so an IPv6 CIDR needs no brackets.
func splitCIDR(addr, rest string) (prefix, ports string, err error) {
	bits, ports, found := strings.Cut(rest, ":")
	if found && ports == "" {
		return "", "", errors.New("empty port")
	}
	return addr + bits, ports, nil
}

// parsePorts parses "N" or "A-B".
func parsePorts(s string) (portRange, error) {
	loText, hiText, isRange := strings.Cut(s, "-")
	lo, ok := parsePort(loText)
	if !ok {
		return portRange{}, fmt.Errorf("invalid port %q: want a number 1-65535", loText)
	}
	if !isRange {
		return portRange{lo: lo, hi: lo}, nil
	}
	hi, ok := parsePort(hiText)
	if !ok {
		return portRange{}, fmt.Errorf("invalid port %q: want a number 1-65535", hiText)
	}
	if lo > hi {
		return portRange{}, fmt.Errorf("invalid port range %d-%d: start is above end", lo, hi)
	}
	return portRange{lo: lo, hi: hi}, nil
}

// parsePort parses a decimal port 1-65535 without allocating. Unlike
// strconv.Atoi it refuses signs.
func parsePort(s string) (uint16, bool) {
	if s == "" || len(s) > 5 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if n < 1 || n > 65535 {
		return 0, false
	}
	return uint16(n), true
}

// parsePrefix parses the host part of an address or CIDR pattern into a
// masked prefix; an address becomes a single-address prefix.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "%") {
		return netip.Prefix{}, errors.New("IPv6 zones are not allowed")
	}
	if !strings.Contains(s, "/") {
		addr, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, errors.New("invalid IP address")
		}
		addr = addr.Unmap()
		return netip.PrefixFrom(addr, addr.BitLen()), nil
	}
	prefix, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, errors.New("invalid CIDR")
	}
	if a := prefix.Addr(); a.Is4In6() && prefix.Bits() >= 96 {
		prefix = netip.PrefixFrom(a.Unmap(), prefix.Bits()-96)
	}
	return prefix.Masked(), nil
}

// isAddrLike reports whether a host part is meant as an address or CIDR
// rather than a name: it holds a ':' or a '/', or it is all digits and dots
// (which no valid name is, as a name's last label is never all digits).
func isAddrLike(s string) bool {
	if s == "" {
		return false
	}
	if strings.ContainsAny(s, ":/") {
		return true
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c != '.' && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// checkName returns why s, without a trailing dot, is not a valid host name,
// or "" if it is. The reasons are constants, so checking does not allocate.
func checkName(s string) string {
	if s == "" {
		return "empty host"
	}
	if len(s) > maxName {
		return "host name longer than 253 characters"
	}
	labelStart, numeric := 0, true
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == '.' {
			switch n := i - labelStart; {
			case n == 0:
				return "empty label in host name"
			case n > 63:
				return "host name label longer than 63 characters"
			}
			if i == len(s) && numeric {
				return "host name ends in a numeric label (a mistyped IP address?)"
			}
			labelStart, numeric = i+1, true
			continue
		}
		switch c := s[i]; {
		case c >= '0' && c <= '9':
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '-', c == '_':
			numeric = false
		default:
			return "invalid character in host name (allowed: A-Z a-z 0-9 . - _)"
		}
	}
	return ""
}

// Empty reports whether l has no patterns, and so allows everything. A nil
// List is empty.
func (l *List) Empty() bool {
	return l == nil || len(l.patterns) == 0
}

// Allowed reports whether the destination host and port may be reached. host
// is a name or a literal IP address, without brackets; a name matches only
// name and zone patterns, an address only address and CIDR patterns. A port
// outside 1-65535 and a malformed host are refused, unless l is empty.
func (l *List) Allowed(host string, port int) bool {
	if l.Empty() {
		return true
	}
	if isAddrLike(host) {
		if strings.Contains(host, "%") {
			return false // a zone would make ParseAddr allocate; it matches nothing anyway
		}
		if addr, err := netip.ParseAddr(host); err == nil {
			return l.AllowedIP(addr, port)
		}
		return false
	}
	return l.AllowedName(host, port)
}

// AllowedHostPort is Allowed for an address in the form "host:port" or
// "[ipv6]:port". A malformed address, or one whose port is not 1-65535, is
// refused even by an empty list.
func (l *List) AllowedHostPort(hostport string) bool {
	host, port, ok := splitHostPort(hostport)
	return ok && l.Allowed(host, int(port))
}

// splitHostPort splits "host:port" or "[ipv6]:port" without allocating.
// Brackets may hold only an IPv6 address (anything with a ':').
func splitHostPort(s string) (host string, port uint16, ok bool) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return "", 0, false
	}
	host, portText := s[:i], s[i+1:]
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
		if !strings.Contains(host, ":") {
			return "", 0, false
		}
	} else if strings.Contains(host, ":") {
		return "", 0, false
	}
	if host == "" || strings.ContainsAny(host, "[]") {
		return "", 0, false
	}
	port, ok = parsePort(portText)
	return host, port, ok
}

// AllowedName reports whether the host name may be reached on port, by name
// and zone patterns only. With [List.AllowedIP] it lets a caller that resolves
// names itself check the name and each resolved address separately; how to
// combine the answers is the caller's policy. A literal IP address or a
// malformed name is never allowed, unless l is empty.
func (l *List) AllowedName(host string, port int) bool {
	if l.Empty() {
		return true
	}
	host = strings.TrimSuffix(host, ".")
	if checkName(host) != "" {
		return false
	}
	var buf [maxName]byte
	lower := buf[:len(host)]
	for i := 0; i < len(host); i++ {
		c := host[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower[i] = c
	}
	// The map index expressions below convert lower without allocating.
	if anyContains(l.names[string(lower)], port) {
		return true
	}
	for {
		if anyContains(l.zones[string(lower)], port) {
			return true
		}
		dot := strings.IndexByte(host, '.')
		if dot < 0 {
			return false
		}
		host, lower = host[dot+1:], lower[dot+1:]
	}
}

func anyContains(ranges []portRange, port int) bool {
	for _, r := range ranges {
		if r.contains(port) {
			return true
		}
	}
	return false
}

// AllowedIP reports whether the address may be reached on port, by address
// and CIDR patterns only. An IPv4-mapped IPv6 address is treated as IPv4. An
// invalid address or one with a zone is never allowed, unless l is empty.
func (l *List) AllowedIP(ip netip.Addr, port int) bool {
	if l.Empty() {
		return true
	}
	if !ip.IsValid() || ip.Zone() != "" {
		return false
	}
	ip = ip.Unmap()
	for _, r := range l.addrs {
		if r.ports.contains(port) && r.prefix.Contains(ip) {
			return true
		}
	}
	return false
}

// AllowedIPWithin reports whether an address or CIDR pattern that lies
// wholly inside within matches ip and port: 127.0.0.1:9090 and 127.0.0.0/8
// lie inside 127.0.0.0/8, 0.0.0.0/0 does not. It tells an address the
// operator named on purpose from one a broad pattern covers by accident. An
// empty list allows nothing here.
func (l *List) AllowedIPWithin(ip netip.Addr, port int, within netip.Prefix) bool {
	if l.Empty() || !ip.IsValid() || ip.Zone() != "" || !within.IsValid() {
		return false
	}
	ip = ip.Unmap()
	if a := within.Addr(); a.Is4In6() && within.Bits() >= 96 {
		within = netip.PrefixFrom(a.Unmap(), within.Bits()-96)
	}
	within = within.Masked()
	for _, r := range l.addrs {
		if r.ports.contains(port) && r.prefix.Contains(ip) &&
			r.prefix.Bits() >= within.Bits() && within.Contains(r.prefix.Addr()) {
			return true
		}
	}
	return false
}

// String returns the normalised patterns, comma-separated, for logs. It is ""
// for an empty list. Parsing the result gives an equal list.
func (l *List) String() string {
	if l == nil {
		return ""
	}
	return strings.Join(l.patterns, ",")
}
