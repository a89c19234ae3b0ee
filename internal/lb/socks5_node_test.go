package lb_test

import (
	"crypto/tls"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/reverse-http/reverse-http/internal/agent"
	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/front"
	"github.com/reverse-http/reverse-http/internal/lb"
	"github.com/reverse-http/reverse-http/internal/proxy"
	"github.com/reverse-http/reverse-http/internal/roletest"
	"github.com/reverse-http/reverse-http/internal/route"
	"github.com/reverse-http/reverse-http/internal/route/memcachedtest"
	"github.com/reverse-http/reverse-http/internal/tlsconf"
)

// TestNodeSOCKS5: a SOCKS5 client of an lb reaches the agent through the
// proxy that holds it (lb -> proxy over HTTP CONNECT -> agent), and so
// does a SOCKS5 client of a second proxy that does not hold it; the lb
// stopped with the tunnel open drains it like an HTTP one and returns
// with every goroutine ended.
func TestNodeSOCKS5(t *testing.T) {
	mc := memcachedtest.Start(t)
	echo := roletest.Echo(t)
	check := roletest.Goroutines(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	key := route.DeriveClusterKey([]byte("a cluster secret of some length"))
	store := func() *route.Memcached {
		s, err := route.NewMemcached(route.Config{Servers: []string{mc}, Timeout: time.Second, ClusterKey: key, Log: log})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	cert, _, err := tlsconf.SelfSigned([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	newProxy := func() *proxy.Node {
		p := proxy.NewNode(proxy.NodeConfig{
			Agents:     proxy.Config{ListenAddr: "127.0.0.1:0", TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, Auth: auth.NoAuth()},
			Front:      front.Config{Auth: auth.NoAuth()},
			HTTPAddr:   "127.0.0.1:0",
			SOCKS5Addr: "127.0.0.1:0",
			Cluster: &proxy.ClusterConfig{Store: store(), TTL: 3 * time.Second, ReleaseTimeout: time.Second, Key: key,
				ForwardDialTimeout: 5 * time.Second},
			ShutdownTimeout: time.Second,
		}, log)
		if err := p.Listen(); err != nil {
			t.Fatal(err)
		}
		return p
	}
	holder, other := newProxy(), newProxy()
	stopHolder := roletest.Run(t, "proxy", holder.Run)
	stopOther := roletest.Run(t, "other proxy", other.Run)
	a := agent.New(agent.Config{
		ServerAddr: holder.AgentAddr().String(),
		TLS:        &tls.Config{InsecureSkipVerify: true},
		Credential: func() (string, error) { return "4711", nil },
	}, log)
	stopAgent := roletest.Run(t, "agent", a.Run)

	const shutdown = 500 * time.Millisecond
	l := lb.NewNode(lb.NodeConfig{
		Front: front.Config{Auth: auth.NoAuth()}, HTTPAddr: "127.0.0.1:0", SOCKS5Addr: "127.0.0.1:0", Store: store(), Key: key,
		ForwardDialTimeout: 5 * time.Second, ShutdownTimeout: shutdown,
	}, log)
	if err := l.Listen(); err != nil {
		t.Fatal(err)
	}
	stopLB := roletest.Run(t, "lb", l.Run)

	// Through the lb once the route is written.
	var tunnel interface{ Close() error }
	deadline := time.Now().Add(roletest.Wait)
	for tunnel == nil {
		if holder.Agents().Connected("4711") {
			if c, err := roletest.SOCKS5Dial(l.SOCKS5Addr().String(), "4711", "noauth", roletest.SOCKS5Request(1, echo)); err == nil {
				tunnel = c
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no SOCKS5 tunnel through the lb")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := l.Front().Tunnels(0); len(got) != 1 || got[0].Method != front.SOCKS5Method {
		t.Errorf("lb: open tunnels %+v, want the SOCKS5 one", got)
	}
	// Through the proxy that does not hold the agent.
	c := roletest.SOCKS5Connect(t, other.SOCKS5Addr().String(), "4711", echo)
	c.Close()

	start := time.Now()
	if err := stopLB(); err != nil {
		t.Fatalf("lb Run: %v", err)
	}
	if took := time.Since(start); took < shutdown {
		t.Errorf("lb stopped %s after its context ended, before the shutdown timeout (%s): the open tunnel was not waited for", took, shutdown)
	}
	tunnel.Close()
	if err := stopAgent(); err != nil {
		t.Fatalf("agent Run: %v", err)
	}
	for _, stop := range []func() error{stopOther, stopHolder} {
		if err := stop(); err != nil {
			t.Fatalf("proxy Run: %v", err)
		}
	}
	check()
}
