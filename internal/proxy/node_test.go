package proxy_test

import (
	"crypto/tls"
	"errors"
	"io"
	"syscall"
	"testing"
	"time"

	"github.com/reverse-http/reverse-http/internal/agent"
	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/front"
	"github.com/reverse-http/reverse-http/internal/proxy"
	"github.com/reverse-http/reverse-http/internal/roletest"
)

// TestNodeRunEndsEverything: a standalone proxy node stopped with a tunnel
// open lets it run until the shutdown timeout, then closes it, and Run
// returns with every goroutine the node started ended (the agent's too,
// once it is stopped).
func TestNodeRunEndsEverything(t *testing.T) {
	echo := roletest.Echo(t)
	check := roletest.Goroutines(t)
	const shutdown = 500 * time.Millisecond
	n := proxy.NewNode(proxy.NodeConfig{
		Agents:          proxy.Config{ListenAddr: "127.0.0.1:0", TLS: serverTLS(t), Auth: auth.NoAuth(), DialTimeout: 5 * time.Second},
		Front:           front.Config{Auth: auth.NoAuth()},
		HTTPAddr:        "127.0.0.1:0",
		AdminAddr:       "127.0.0.1:0",
		ShutdownTimeout: shutdown,
	}, testLogger(t))
	if err := n.Listen(); err != nil {
		t.Fatal(err)
	}
	stopProxy := roletest.Run(t, "proxy", n.Run)
	a := agent.New(agent.Config{
		ServerAddr: n.AgentAddr().String(),
		TLS:        &tls.Config{InsecureSkipVerify: true},
		Credential: func() (string, error) { return "4711", nil },
		AdminAddr:  "127.0.0.1:0",
	}, testLogger(t).With("agent", "4711"))
	stopAgent := roletest.Run(t, "agent", a.Run)
	waitFor(t, "agent 4711", func() bool { return n.Agents().Connected("4711") })

	tunnel := roletest.Connect(t, n.HTTPAddr().String(), "4711", echo)
	if got := n.Front().OpenTunnels(); got != 1 {
		t.Errorf("%d open tunnels, want 1", got)
	}
	start := time.Now()
	if err := stopProxy(); err != nil {
		t.Fatalf("proxy Run: %v", err)
	}
	if took := time.Since(start); took < shutdown || took > shutdown+3*time.Second {
		t.Errorf("proxy stopped %s after its context ended, want the shutdown timeout (%s): the open tunnel waited for", took, shutdown)
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
