package proxy_test

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/reverse-http/reverse-http/internal/agent"
	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/front"
	"github.com/reverse-http/reverse-http/internal/proxy"
	"github.com/reverse-http/reverse-http/internal/roletest"
	"github.com/reverse-http/reverse-http/internal/run"
)

// TestNodeSOCKS5: a proxy node with a SOCKS5 listener tunnels through its
// agent there; stopped with a SOCKS5 tunnel open, it stops accepting on
// the SOCKS5 port at once, lets the tunnel run until the shutdown
// timeout, then closes it, and Run returns with every goroutine ended.
func TestNodeSOCKS5(t *testing.T) {
	echo := roletest.Echo(t)
	check := roletest.Goroutines(t)
	const shutdown = 500 * time.Millisecond
	n := proxy.NewNode(proxy.NodeConfig{
		Agents:          proxy.Config{ListenAddr: "127.0.0.1:0", TLS: serverTLS(t), Auth: auth.NoAuth(), DialTimeout: 5 * time.Second},
		Front:           front.Config{Auth: auth.NoAuth()},
		HTTPAddr:        "127.0.0.1:0",
		SOCKS5Addr:      "127.0.0.1:0",
		ShutdownTimeout: shutdown,
	}, testLogger(t))
	if err := n.Listen(); err != nil {
		t.Fatal(err)
	}
	socksAddr := n.SOCKS5Addr().String()
	stopProxy := roletest.Run(t, "proxy", n.Run)
	a := agent.New(agent.Config{
		ServerAddr: n.AgentAddr().String(),
		TLS:        &tls.Config{InsecureSkipVerify: true},
		Credential: func() (string, error) { return "4711", nil },
	}, testLogger(t).With("agent", "4711"))
	stopAgent := roletest.Run(t, "agent", a.Run)
	waitFor(t, "agent 4711", func() bool { return n.Agents().Connected("4711") })

	tunnel := roletest.SOCKS5Connect(t, socksAddr, "4711", echo)
	if got := n.Front().Tunnels(0); len(got) != 1 || got[0].Method != front.SOCKS5Method {
		t.Errorf("open tunnels %+v, want the SOCKS5 one", got)
	}
	start := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- stopProxy() }()
	waitFor(t, "the SOCKS5 port to close", func() bool {
		c, err := net.DialTimeout("tcp", socksAddr, time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	if took := time.Since(start); took >= shutdown {
		t.Errorf("the SOCKS5 port closed %s after the stop, want at once (before the %s drain)", took, shutdown)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("proxy Run: %v", err)
	}
	if took := time.Since(start); took < shutdown || took > shutdown+3*time.Second {
		t.Errorf("proxy stopped %s after its context ended, want the shutdown timeout (%s)", took, shutdown)
	}
	tunnel.SetReadDeadline(time.Now().Add(roletest.Wait))
	if _, err := io.ReadAll(tunnel); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("tunnel after the proxy stopped: %v, want it closed", err)
	}
	if err := stopAgent(); err != nil {
		t.Fatalf("agent Run: %v", err)
	}
	tunnel.Close()
	check()
}

// TestNodeSOCKS5ListenError: a SOCKS5 address in use is a
// *run.ListenError for "socks5", and nothing else stays bound.
func TestNodeSOCKS5ListenError(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	http, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpAddr := http.Addr().String()
	http.Close()
	n := proxy.NewNode(proxy.NodeConfig{
		Agents:     proxy.Config{ListenAddr: "127.0.0.1:0", TLS: serverTLS(t), Auth: auth.NoAuth()},
		Front:      front.Config{Auth: auth.NoAuth()},
		HTTPAddr:   httpAddr,
		SOCKS5Addr: taken.Addr().String(),
	}, testLogger(t))
	err = n.Listen()
	var le *run.ListenError
	if !errors.As(err, &le) || le.Part != "socks5" {
		t.Fatalf("Listen = %v, want a ListenError for socks5", err)
	}
	ln, err := net.Listen("tcp", httpAddr)
	if err != nil {
		t.Fatalf("the HTTP port stayed bound: %v", err)
	}
	ln.Close()
}
