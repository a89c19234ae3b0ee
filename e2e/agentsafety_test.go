package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/wire"
)

// TestAgentSecretsNotServed: an agent started with an inline JWT serves a
// redacted /debug/pprof/cmdline, warns once about the inline token, never
// logs it, and refuses tunnels to its own metrics listener whatever its
// allowlist says, so a client cannot read the token through the agent.
func TestAgentSecretsNotServed(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	priv, pub := filepath.Join(dir, "priv.pem"), filepath.Join(dir, "pub.pem")
	runTool(t, "auth", "key", "private", "-o", priv)
	runTool(t, "auth", "key", "public", "-i", priv, "-o", pub)
	agentTok := strings.TrimSpace(runTool(t, "auth", "jwt", "token", "--agent-id", "4711", "--role", "agent", "--duration", "1h", "-i", priv, "-o", "-"))
	clientTok := strings.TrimSpace(runTool(t, "auth", "jwt", "token", "--agent-id", "4711", "--role", "client", "--duration", "1h", "-i", priv, "-o", "-"))
	signature := agentTok[strings.LastIndexByte(agentTok, '.')+1:]

	p := startProxy(t, "--auth.type=jwt", "--auth.jwt.public-key="+pub)
	a := startAgentArgs(t, p, "4711", append(agentArgs(p), "--auth.type=jwt", "--auth.jwt.token="+agentTok,
		"--metrics.listen-address=127.0.0.1:0", "--admin.pprof",
		// An allowlist that names the metrics address explicitly: still refused.
		"--agent-client.host-whitelist=127.0.0.0/8,localhost")...)
	a.waitLog(t, startTimeout, 1, "admin listening")
	metricsAddr := a.lines("admin listening")[0]["address"]
	_, port, _ := strings.Cut(metricsAddr, ":")

	// Directly: the command line is served with the token redacted.
	resp, err := http.Get("http://" + metricsAddr + "/debug/pprof/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "--auth.jwt.token=REDACTED") {
		t.Errorf("cmdline: %s %q, want the token flag redacted", resp.Status, body)
	}
	if strings.Contains(string(body), signature) {
		t.Errorf("cmdline serves the agent's token: %q", body)
	}

	// Through the agent: refused, absolute-form and CONNECT, by address and by name.
	for _, target := range []string{metricsAddr, "localhost:" + port} {
		c := proxyClient(p.httpAddr, "4711", clientTok)
		resp, err := c.Get("http://" + target + "/debug/pprof/cmdline")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		c.CloseIdleConnections()
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "agent's own listeners") {
			t.Errorf("GET %s through the agent: %s %q, want 403 naming the agent's own listeners", target, resp.Status, body)
		}
		r, raw, err := rawRequest(p.httpAddr, "CONNECT", []byte(connectHeader(target, basicAuth("4711", clientTok))))
		if err != nil {
			t.Fatal(err)
		}
		checkRefusal(t, r, raw, http.StatusForbidden)
	}

	if n := a.count("--auth.jwt.token is given inline on the command line, where other local users can read it in the process list; $REVERSE_HTTP_AUTH_JWT_TOKEN is better, --auth.jwt.token=file:PATH is safest"); n != 1 {
		t.Errorf("inline token warning logged %d times, want 1", n)
	}
	for _, proc := range []*process{a, p.process} {
		if strings.Contains(proc.log.String(), signature) {
			t.Errorf("%s log contains the agent's token", proc.name)
		}
	}
}

// TestAgentBlockLocal: with --agent-client.block-local the agent refuses a
// service on loopback, even by a name its allowlist allows, unless an
// address pattern names it.
func TestAgentBlockLocal(t *testing.T) {
	t.Parallel()
	web := startHTTPOrigin(t, false)
	port := strings.TrimPrefix(web.addr, "127.0.0.1:")
	p := startProxy(t)
	startAgent(t, p, "open")
	startAgent(t, p, "blocked", "--agent-client.block-local")
	startAgent(t, p, "byname", "--agent-client.block-local", "--agent-client.host-whitelist=localhost")
	startAgent(t, p, "explicit", "--agent-client.block-local", "--agent-client.host-whitelist=localhost:"+port+",127.0.0.1:"+port)

	for _, tc := range []struct {
		agent, url string
		status     int
		reason     string
	}{
		{"open", web.url("/hello"), 200, ""}, // the reference's default
		{"blocked", web.url("/hello"), 403, "it is a loopback address, refused by --agent-client.block-local"},
		{"blocked", "http://[::ffff:127.0.0.1]:" + port + "/hello", 403, "loopback"},
		{"blocked", "http://169.254.169.254/latest/meta-data/", 403, "cloud metadata"},
		{"byname", "http://localhost:" + port + "/hello", 403, "it resolves to"},
		{"explicit", web.url("/hello"), 200, ""},
		{"explicit", "http://localhost:" + port + "/hello", 200, ""},
	} {
		status, body, err := get(p.httpAddr, tc.agent, tc.url)
		if err != nil || status != tc.status || !strings.Contains(body, tc.reason) {
			t.Errorf("agent %s, GET %s: %d %q %v, want %d with %q", tc.agent, tc.url, status, body, err, tc.status, tc.reason)
		}
	}
}

// TestNoauthAgentToJWTProxy: the agent is told the proxy wants a JWT.
func TestNoauthAgentToJWTProxy(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	priv, pub := filepath.Join(dir, "priv.pem"), filepath.Join(dir, "pub.pem")
	runTool(t, "auth", "key", "private", "-o", priv)
	runTool(t, "auth", "key", "public", "-i", priv, "-o", pub)
	p := startProxy(t, "--auth.type=jwt", "--auth.jwt.public-key="+pub)
	a := startProcess(t, "agent 4711", append(agentArgs(p), "--auth.noauth.agent-id=4711", "--agent-client.backoff-max=200ms")...)
	const hint = "this proxy requires an agent JWT (--auth.type=jwt --auth.jwt.token=file:PATH); the credential sent is not a JWT"
	a.waitLog(t, startTimeout, 1, "proxy refused authentication")
	if l := a.lines("proxy refused authentication")[0]; !strings.Contains(l["reason"], hint) {
		t.Errorf("agent log: reason %q, want %q", l["reason"], hint)
	}
	p.waitLog(t, startTimeout, 1, "agent authentication failed")
	if l := p.lines("agent authentication failed")[0]; !strings.Contains(l["error"], hint) {
		t.Errorf("proxy log: error %q, want %q", l["error"], hint)
	}
}

// TestProxyRefusesUnselectableAgentID: an agent ID with ':' (which no
// client can select) is refused by a noauth proxy with the reason, sent to
// the agent in the close reason and logged.
func TestProxyRefusesUnselectableAgentID(t *testing.T) {
	t.Parallel()
	p := startProxy(t)
	conn := dialQUIC(t, p)
	var msg bytes.Buffer
	if err := wire.WriteMessage(&msg, "a:b"); err != nil {
		t.Fatal(err)
	}
	_, err := sendAuth(conn, msg.Bytes())
	checkAppError(t, conn, err, wire.CodeAuthFailed)
	const reason = "contains ':', which separates user and password in Proxy-Authorization, so no client could select this agent"
	var ae *quic.ApplicationError
	if errors.As(context.Cause(conn.Context()), &ae) && !strings.Contains(ae.ErrorMessage, reason) {
		t.Errorf("close reason %q, want %q", ae.ErrorMessage, reason)
	}
	p.waitLog(t, startTimeout, 1, "agent authentication failed")
	if l := p.lines("agent authentication failed")[0]; !strings.Contains(l["error"], reason) {
		t.Errorf("proxy log: %q, want %q", l["error"], reason)
	}
}
