package agent_test

import (
	"crypto/tls"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/reverse-http/reverse-http/internal/agent"
	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/front"
	"github.com/reverse-http/reverse-http/internal/proxy"
	"github.com/reverse-http/reverse-http/internal/roletest"
	"github.com/reverse-http/reverse-http/internal/tlsconf"
)

// TestRunEndsEverything: an agent stopped with a tunnel open through it
// returns from Run with every goroutine it started ended (its metrics
// server's too), and the tunnel is closed.
func TestRunEndsEverything(t *testing.T) {
	echo := roletest.Echo(t)
	check := roletest.Goroutines(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cert, _, err := tlsconf.SelfSigned([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	n := proxy.NewNode(proxy.NodeConfig{
		Agents:          proxy.Config{ListenAddr: "127.0.0.1:0", TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, Auth: auth.NoAuth()},
		Front:           front.Config{Auth: auth.NoAuth()},
		HTTPAddr:        "127.0.0.1:0",
		ShutdownTimeout: time.Second,
	}, log)
	if err := n.Listen(); err != nil {
		t.Fatal(err)
	}
	stopProxy := roletest.Run(t, "proxy", n.Run)
	a := agent.New(agent.Config{
		ServerAddr: n.AgentAddr().String(),
		TLS:        &tls.Config{InsecureSkipVerify: true},
		Credential: func() (string, error) { return "4711", nil },
		AdminAddr:  "127.0.0.1:0",
		// Stopped with a tunnel open: it gets this long.
		ShutdownTimeout: 500 * time.Millisecond,
	}, log)
	stopAgent := roletest.Run(t, "agent", a.Run)
	deadline := time.Now().Add(roletest.Wait)
	for !n.Agents().Connected("4711") {
		if time.Now().After(deadline) {
			t.Fatal("agent did not connect")
		}
		time.Sleep(10 * time.Millisecond)
	}
	tunnel := roletest.Connect(t, n.HTTPAddr().String(), "4711", echo)
	start := time.Now()
	if err := stopAgent(); err != nil {
		t.Fatalf("agent Run: %v", err)
	}
	if took := time.Since(start); took < 500*time.Millisecond || took > 3*time.Second {
		t.Errorf("agent stopped %s after its context ended, want its shutdown timeout (500ms): the open tunnel waited for", took)
	}
	tunnel.SetReadDeadline(time.Now().Add(roletest.Wait))
	if _, err := io.ReadAll(tunnel); err != nil {
		t.Logf("tunnel after the agent stopped: %v", err)
	}
	tunnel.Close()
	if err := stopProxy(); err != nil {
		t.Fatalf("proxy Run: %v", err)
	}
	check()
}
