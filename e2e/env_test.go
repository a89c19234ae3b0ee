package e2e

import (
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestEnvOnly: a proxy and an agent configured by REVERSE_HTTP_* variables
// alone, with no flag but the command: the proxy listens where the
// environment says and the agent, pointed at it the same way, registers.
func TestEnvOnly(t *testing.T) {
	httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t, "tcp")))
	agentAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t, "udp")))
	proxy := startProcessEnv(t, "proxy", []string{
		"REVERSE_HTTP_HTTP_PROXY_LISTEN_ADDRESS=" + httpAddr,
		"REVERSE_HTTP_AGENT_SERVER_LISTEN_ADDRESS=" + agentAddr,
		"REVERSE_HTTP_AGENT_SERVER_TLS_FILE_CERT=" + filepath.Join(certDir, "proxy.pem"),
		"REVERSE_HTTP_AGENT_SERVER_TLS_FILE_KEY=" + filepath.Join(certDir, "proxy-key.pem"),
		"REVERSE_HTTP_SHUTDOWN_TIMEOUT=2s",
	}, "proxy")
	proxy.waitLog(t, startTimeout, 1, "http proxy listening", "address", httpAddr)
	proxy.waitLog(t, startTimeout, 1, "agent server listening", "address", agentAddr)

	agent := startProcessEnv(t, "agent", []string{
		"REVERSE_HTTP_AGENT_CLIENT_SERVER_ADDRESS=" + agentAddr,
		"REVERSE_HTTP_AGENT_CLIENT_TLS_FILE_ROOT_CA=" + filepath.Join(certDir, "ca.pem"),
		"REVERSE_HTTP_AUTH_NOAUTH_AGENT_ID=env-agent",
	}, "agent")
	if err := proxy.waitLogErr(startTimeout, 1, "agent connected", "agent", "env-agent"); err != nil {
		t.Fatalf("%v\nagent log:\n%s", err, agent.log.String())
	}
	agent.waitLog(t, time.Second, 1, "agent starting", "server", agentAddr)
}
