package cli_test

import (
	"net"
	"strings"
	"testing"
	"time"
)

// TestSOCKS5Flag: --socks5.listen-address is off by default, and proxy and
// lb serve SOCKS5 on it whether it comes from the flag, its environment
// variable or a config file; an address in use stops the role with an
// error naming the flag.
func TestSOCKS5Flag(t *testing.T) {
	dir := isolate(t)
	r := start(t, proxyArgs()...)
	r.waitFor(proxyReady)
	if code := r.stop(); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, r.stderr)
	}
	if strings.Contains(r.stderr.String(), "socks5 proxy listening") {
		t.Errorf("SOCKS5 on by default:\n%s", r.stderr)
	}

	lb := []string{"lb", "--http-proxy.listen-address=127.0.0.1:0", "--store.memcached.address=127.0.0.1:1"}
	for _, tc := range []struct {
		name string
		args []string
		env  string
	}{
		{name: "proxy flag", args: proxyArgs("--socks5.listen-address=127.0.0.1:0")},
		{name: "proxy env", args: proxyArgs(), env: "127.0.0.1:0"},
		{name: "proxy config", args: proxyArgs("--config", writeFile(t, dir, "p.yaml", "proxy:\n  socks5.listen-address: 127.0.0.1:0\n"))},
		{name: "lb flag", args: append(lb, "--socks5.listen-address=127.0.0.1:0")},
		{name: "lb config", args: append(lb, "--config", writeFile(t, dir, "l.yaml", "lb:\n  socks5.listen-address: 127.0.0.1:0\n"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("REVERSE_HTTP_SOCKS5_LISTEN_ADDRESS", tc.env)
			}
			r := start(t, tc.args...)
			line := r.waitFor("socks5 proxy listening")
			addr := logAttr(t, line, "address")
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatalf("socks5 address %q from %s: %v", addr, line, err)
			}
			c.Write([]byte{5, 1, 2})
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			b := make([]byte, 2)
			if _, err := c.Read(b); err != nil || b[0] != 5 || b[1] != 2 {
				t.Errorf("greeting answered % x, %v; want 05 02", b, err)
			}
			c.Close()
			if code := r.stop(); code != 0 {
				t.Fatalf("exit %d; stderr:\n%s", code, r.stderr)
			}
		})
	}

	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, args := range [][]string{proxyArgs(), lb} {
		res := runCmd(t, "", 10*time.Second, append(args, "--socks5.listen-address="+taken.Addr().String())...)
		if res.code == 0 || !strings.Contains(res.stderr, "--socks5.listen-address: listen tcp "+taken.Addr().String()) {
			t.Errorf("%s with the SOCKS5 address in use: exit %d, stderr %q; want an error naming --socks5.listen-address", args[0], res.code, res.stderr)
		}
	}
}
