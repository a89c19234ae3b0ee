package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAgentIDFromCert: `certs --agent-id` writes client certificates for
// agent IDs; a proxy with --agent-server.tls.agent-id-from-cert admits an
// agent whose certificate names its ID (and tunnels work through it) and
// refuses one that presents a valid certificate of another ID, with a
// message naming the cause on both sides and auth_failed counted.
func TestAgentIDFromCert(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "pki")
	out := runTool(t, "certs", "--dir", dir, "--agent-id", "bound-1", "--agent-id", "bound 2")
	for _, n := range []string{"agent-bound-1.pem", "agent-bound-1-key.pem", "agent-bound 2.pem", "agent-bound 2-key.pem"} {
		p := filepath.Join(dir, n)
		if _, err := os.Stat(p); err != nil || !strings.Contains(out, p) {
			t.Fatalf("certs --agent-id did not write %s (%v):\n%s", p, err, out)
		}
	}
	web := startHTTPOrigin(t, false)

	for _, tc := range []struct{ mode, reason string }{
		{"cn", `the proxy requires the agent ID to match the client certificate's CN: certificate CN is "bound 2", agent ID is "bound-1"`},
		{"san", `agent ID is "bound-1", certificate SANs are URI:"urn:reverse-http:agent:bound%202"`},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			p := startProxyArgs(t, false,
				"--metrics.listen-address=127.0.0.1:0",
				"--agent-server.tls.file.cert="+filepath.Join(dir, "proxy.pem"),
				"--agent-server.tls.file.key="+filepath.Join(dir, "proxy-key.pem"),
				"--agent-server.tls.file.client-ca="+filepath.Join(dir, "ca.pem"),
				"--agent-server.tls.agent-id-from-cert="+tc.mode)
			agent := func(id, certID string) []string {
				return []string{"agent",
					"--agent-client.server-address=" + p.agentAddr,
					"--agent-client.tls.file.root-ca=" + filepath.Join(dir, "ca.pem"),
					"--agent-client.tls.file.cert=" + filepath.Join(dir, "agent-"+certID+".pem"),
					"--agent-client.tls.file.key=" + filepath.Join(dir, "agent-"+certID+"-key.pem"),
					"--agent-client.backoff-max=500ms",
					"--auth.noauth.agent-id=" + id,
				}
			}
			// Its own certificate: admitted, and a tunnel works.
			startAgentArgs(t, p, "bound 2", agent("bound 2", "bound 2")...)
			if out, err := curl(t, "--proxy", "http://bound%202:noauth@"+p.httpAddr, "--proxytunnel", web.url("/hello")); err != nil || out != "hello\n" {
				t.Errorf("curl through the bound agent: %q %v", out, err)
			}

			// A valid certificate of another agent: refused.
			imp := startProcess(t, "impostor", agent("bound-1", "bound 2")...)
			imp.waitLog(t, startTimeout, 1, "proxy refused authentication")
			if got := imp.lines("proxy refused authentication")[0]["reason"]; !strings.Contains(got, tc.reason) {
				t.Errorf("agent logged reason %q, want it to contain %q", got, tc.reason)
			}
			p.waitLog(t, startTimeout, 1, "agent refused: its ID does not match its client certificate", "agent", "bound-1")
			l := p.lines("agent refused: its ID does not match its client certificate", "agent", "bound-1")[0]
			if !strings.Contains(l["reason"], tc.reason) || !strings.HasPrefix(l["remote"], "127.0.0.1:") {
				t.Errorf("proxy refusal line lacks the reason or remote: %v", l)
			}
			if n := p.count("agent connected", "agent", "bound-1"); n != 0 {
				t.Errorf("proxy registered the impostor %d times", n)
			}
			checkMetrics(t, "proxy", metricsAddr(t, p.process), map[string]func(float64) bool{
				`reverse_http_agent_connections_total{outcome="authenticated"}`: eq(1),
				`reverse_http_agent_connections_total{outcome="auth_failed"}`:   atLeast(1),
			})
			// The bound agent is still there.
			if status, body, err := get(p.httpAddr, "bound 2", web.url("/hello")); err != nil || status != 200 {
				t.Errorf("GET through the bound agent after the refusal: %d %q %v", status, body, err)
			}
		})
	}

	t.Run("without client CA", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, binPath, "proxy",
			"--agent-server.listen-address=127.0.0.1:0", "--http-proxy.listen-address=127.0.0.1:0",
			"--agent-server.tls.file.cert="+filepath.Join(dir, "proxy.pem"),
			"--agent-server.tls.file.key="+filepath.Join(dir, "proxy-key.pem"),
			"--agent-server.tls.agent-id-from-cert=cn")
		cmd.Env = childEnv()
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		if err == nil {
			t.Fatal("proxy started with --agent-server.tls.agent-id-from-cert and no client CA")
		}
		for _, flag := range []string{"--agent-server.tls.agent-id-from-cert", "--agent-server.tls.file.client-ca"} {
			if !strings.Contains(stderr.String(), flag) {
				t.Errorf("start-up error does not name %s:\n%s", flag, stderr.String())
			}
		}
	})
}
