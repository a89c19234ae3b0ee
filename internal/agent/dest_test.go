package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/reverse-http/reverse-http/internal/allow"
	"github.com/reverse-http/reverse-http/internal/wire"
)

// acceptingListener is a TCP listener on 127.0.0.1 that accepts and closes
// connections until the test ends.
func acceptingListener(t *testing.T) (netip.AddrPort, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ap := netip.MustParseAddrPort(ln.Addr().String())
	return ap, strconv.Itoa(int(ap.Port()))
}

// fakeDNS answers names from a table and fails the test for any other.
func fakeDNS(t *testing.T, table map[string][]string) func(context.Context, string) ([]netip.Addr, error) {
	return func(_ context.Context, host string) ([]netip.Addr, error) {
		texts, ok := table[host]
		if !ok {
			t.Errorf("unexpected lookup of %q", host)
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		var out []netip.Addr
		for _, s := range texts {
			out = append(out, netip.MustParseAddr(s))
		}
		return out, nil
	}
}

func newSafetyAgent(t *testing.T, cfg Config, patterns ...string) *Agent {
	t.Helper()
	l, err := allow.Parse(patterns)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Allow = l
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 2e9
	}
	return New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// dialResult dials target and returns nil or the error, closing a conn.
func dialResult(a *Agent, target string) error {
	c, err := a.dial(context.Background(), target)
	if c != nil {
		c.Close()
	}
	return err
}

func TestDialRefusesOwnListeners(t *testing.T) {
	own, port := acceptingListener(t)
	dns := map[string][]string{
		"metrics.test": {"127.0.0.1"},
		"both.test":    {"::1", "127.0.0.1"},
	}
	// Without OwnListeners the listener is reachable: the checks below can fail.
	open := newSafetyAgent(t, Config{Lookup: fakeDNS(t, dns)})
	if err := dialResult(open, "127.0.0.1:"+port); err != nil {
		t.Fatalf("control: dial own listener without OwnListeners: %v", err)
	}
	for _, patterns := range [][]string{
		nil, // empty allowlist: everything else allowed
		{"127.0.0.1:" + port, "metrics.test:" + port, "both.test", "[::ffff:127.0.0.1]", "0.0.0.0/0"},
	} {
		a := newSafetyAgent(t, Config{Lookup: fakeDNS(t, dns), OwnListeners: []netip.AddrPort{own}}, patterns...)
		for _, target := range []string{
			"127.0.0.1:" + port,
			"[::ffff:127.0.0.1]:" + port,
			"metrics.test:" + port,
			"0.0.0.0:" + port, // dialing 0.0.0.0 reaches this host
		} {
			err := dialResult(a, target)
			var we *wire.Error
			if !errors.Is(err, wire.ErrDenied) || !errors.As(err, &we) || !strings.Contains(we.Reason, "agent's own listeners") {
				t.Errorf("allowlist %q: dial %s: %v, want denied as the agent's own listener", patterns, target, err)
			}
		}
	}
	a := newSafetyAgent(t, Config{Lookup: fakeDNS(t, dns), OwnListeners: []netip.AddrPort{own}})
	// A name with other addresses too: only those are dialed (nothing
	// listens on ::1 at that port), never the listener.
	if err := dialResult(a, "both.test:"+port); err == nil {
		t.Error("dial both.test: reached the agent's own listener")
	}
	if err := dialResult(a, "127.0.0.2:"+port); errors.Is(err, wire.ErrDenied) {
		t.Errorf("another loopback address on the same port: %v, want it dialed", err)
	}
}

func TestOwnListenerOnWildcardAddress(t *testing.T) {
	local := func() []netip.Addr {
		return []netip.Addr{netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("2001:db8::7")}
	}
	for _, listen := range []string{"0.0.0.0:9091", "[::]:9091"} {
		a := newSafetyAgent(t, Config{OwnListeners: []netip.AddrPort{netip.MustParseAddrPort(listen)}, LocalAddrs: local})
		for _, tc := range []struct {
			ip      string
			port    int
			refused bool
		}{
			{"127.0.0.1", 9091, true},
			{"127.9.9.9", 9091, true},
			{"::1", 9091, true},
			{"0.0.0.0", 9091, true},
			{"::", 9091, true},
			{"10.1.2.3", 9091, true},
			{"::ffff:10.1.2.3", 9091, true},
			{"2001:db8::7", 9091, true},
			{"10.1.2.4", 9091, false}, // another host
			{"127.0.0.1", 9092, false},
			{"10.1.2.3", 80, false},
		} {
			what := a.refusal(netip.MustParseAddr(tc.ip), tc.port)
			if (what != "") != tc.refused {
				t.Errorf("listener %s: %s port %d: refusal %q, want refused %v", listen, tc.ip, tc.port, what, tc.refused)
			}
		}
	}
}

func TestBlockLocal(t *testing.T) {
	_, port := acceptingListener(t) // stands for a service on loopback
	dns := map[string][]string{
		"metadata.test":  {"169.254.169.254"},
		"aws6.test":      {"fd00:ec2::254"},
		"mapped.test":    {"::ffff:127.0.0.1"},
		"local.test":     {"127.0.0.1"},
		"both.test":      {"::1", "127.0.0.1"},
		"linklocal.test": {"fe80::1"},
		"zero.test":      {"0.0.0.0"},
	}
	for _, tc := range []struct {
		name     string
		block    bool
		patterns []string
		target   string
		denied   bool
		reason   string // in the denial
	}{
		{"off: loopback reachable (reference behaviour)", false, nil, "127.0.0.1:" + port, false, ""},
		{"off: name to loopback", false, []string{"local.test"}, "local.test:" + port, false, ""},
		{"loopback literal", true, nil, "127.0.0.1:" + port, true, "it is a loopback address, refused by --agent-client.block-local"},
		{"IPv4-mapped loopback literal", true, nil, "[::ffff:127.0.0.1]:" + port, true, "loopback"},
		{"IPv6 loopback literal", true, nil, "[::1]:" + port, true, "loopback"},
		{"unspecified literal", true, nil, "0.0.0.0:" + port, true, "unspecified"},
		{"metadata literal", true, nil, "169.254.169.254:80", true, "cloud metadata"},
		{"mapped metadata literal", true, nil, "[::ffff:169.254.169.254]:80", true, "cloud metadata"},
		{"AWS IPv6 metadata literal", true, nil, "[fd00:ec2::254]:80", true, "cloud metadata"},
		{"link-local literal", true, nil, "169.254.1.1:80", true, "link-local"},
		{"name allowed by a name rule, resolving to metadata", true, []string{"metadata.test"}, "metadata.test:80", true, "it resolves to 169.254.169.254:80, a cloud metadata address"},
		{"name resolving to IPv6 metadata", true, nil, "aws6.test:80", true, "cloud metadata"},
		{"name resolving to mapped loopback", true, []string{"mapped.test"}, "mapped.test:" + port, true, "loopback"},
		{"name resolving to link-local IPv6", true, nil, "linklocal.test:80", true, "link-local"},
		{"name resolving to 0.0.0.0", true, nil, "zero.test:" + port, true, "unspecified"},
		{"name rule does not re-allow", true, []string{"local.test:" + port}, "local.test:" + port, true, "loopback"},
		{"exact IP rule re-allows the literal", true, []string{"127.0.0.1:" + port}, "127.0.0.1:" + port, false, ""},
		{"exact IP rule re-allows a resolved address", true, []string{"local.test:" + port, "127.0.0.1:" + port}, "local.test:" + port, false, ""},
		{"other addresses of a name are skipped", true, []string{"both.test", "127.0.0.1"}, "both.test:" + port, false, ""},
		{"mapped IP rule re-allows", true, []string{"[::ffff:127.0.0.1]"}, "[::ffff:127.0.0.1]:" + port, false, ""},
		{"CIDR inside the range re-allows", true, []string{"127.0.0.0/8"}, "127.0.0.1:" + port, false, ""},
		{"broad CIDR does not re-allow", true, []string{"0.0.0.0/0"}, "127.0.0.1:" + port, true, "loopback"},
		{"IP rule on another port does not re-allow", true, []string{"127.0.0.1:1"}, "127.0.0.1:" + port, true, "not allowed by the agent's allowlist"},
		{"link-local CIDR does not re-allow metadata", true, []string{"169.254.0.0/16"}, "169.254.169.254:80", true, "cloud metadata"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newSafetyAgent(t, Config{Lookup: fakeDNS(t, dns), BlockLocal: tc.block}, tc.patterns...)
			err := dialResult(a, tc.target)
			if !tc.denied {
				if err != nil {
					t.Fatalf("dial %s: %v, want it dialed", tc.target, err)
				}
				return
			}
			var we *wire.Error
			if !errors.Is(err, wire.ErrDenied) || !errors.As(err, &we) || !strings.Contains(we.Reason, tc.reason) {
				t.Fatalf("dial %s: %v, want denied with %q", tc.target, err, tc.reason)
			}
		})
	}
}

func TestBlockLocalReAllowsExactMetadataRule(t *testing.T) {
	a := newSafetyAgent(t, Config{BlockLocal: true}, "169.254.169.254:80", "[fe80::1]")
	for _, tc := range []struct {
		ip   string
		port int
		want bool // refused
	}{
		{"169.254.169.254", 80, false},
		{"::ffff:169.254.169.254", 80, false},
		{"169.254.169.254", 81, true},
		{"fe80::1", 22, false},
		{"fe80::1%eth0", 22, false},
		{"fe80::2%eth0", 22, true}, // a zone does not hide a link-local address
		{"fe80::2", 22, true},
		{"8.8.8.8", 53, false},
	} {
		if got := a.refusal(netip.MustParseAddr(tc.ip), tc.port) != ""; got != tc.want {
			t.Errorf("%s port %d: refused %v, want %v", tc.ip, tc.port, got, tc.want)
		}
	}
}
