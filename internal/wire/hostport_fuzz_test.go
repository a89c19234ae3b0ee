package wire

import (
	"net"
	"strconv"
	"strings"
	"testing"
)

// FuzzSplitHostPort checks the CONNECT authority parser that both the
// proxy (a client's CONNECT) and the agent (the proxy's tunnel request)
// run on untrusted bytes: what it accepts names exactly one destination
// that the agent's dialer reads the same way, and what it refuses gets a
// one-line reason (reasons reach logs and clients' response bodies).
// Seeds: f.Add below and testdata/fuzz/FuzzSplitHostPort.
func FuzzSplitHostPort(f *testing.F) {
	for _, s := range []string{"example.com:443", "[::1]:80", "10.0.0.1:1", "h:65535"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, hostport string) {
		host, port, err := SplitHostPort(hostport)
		if err != nil {
			if host != "" || port != 0 {
				t.Fatalf("SplitHostPort(%q): error %v with %q, %d", hostport, err, host, port)
			}
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("SplitHostPort(%q): reason %q spans lines", hostport, err)
			}
			return
		}
		if host == "" || port < 1 || port > 65535 {
			t.Fatalf("SplitHostPort(%q) = %q, %d", hostport, host, port)
		}
		for _, c := range []byte(host) {
			if !validHostByte[c] {
				t.Fatalf("SplitHostPort(%q): host %q has byte %q", hostport, host, c)
			}
		}
		// The agent dials with net: it must see the same host and port.
		nh, np, err := net.SplitHostPort(hostport)
		if err != nil || nh != host {
			t.Fatalf("SplitHostPort(%q) = %q, but net.SplitHostPort = %q, %v", hostport, host, nh, err)
		}
		if n, err := strconv.Atoi(np); err != nil || n != port {
			t.Fatalf("SplitHostPort(%q) port %d, but net reads %q", hostport, port, np)
		}
		// Joined again, it splits to the same destination.
		joined := net.JoinHostPort(host, strconv.Itoa(port))
		h2, p2, err := SplitHostPort(joined)
		if err != nil || h2 != host || p2 != port {
			t.Fatalf("SplitHostPort(%q) = %q, %d; its join %q gives %q, %d, %v", hostport, host, port, joined, h2, p2, err)
		}
	})
}
