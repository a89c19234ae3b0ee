package cli_test

import (
	"strings"
	"testing"
)

// TestAgentServerTCPListenAddress: the proxy listens for agents on TCP by
// default, at --agent-server.listen-address on TCP; an empty
// --agent-server.tcp.listen-address turns it off, from the flag, the
// environment or a config file.
func TestAgentServerTCPListenAddress(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		env    map[string]string
		config string
		want   bool // a TCP listener
	}{
		{name: "default", want: true},
		{name: "flag", args: []string{"--agent-server.tcp.listen-address=127.0.0.1:0"}, want: true},
		{name: "flag empty", args: []string{"--agent-server.tcp.listen-address="}},
		{name: "env empty", env: map[string]string{"REVERSE_HTTP_AGENT_SERVER_TCP_LISTEN_ADDRESS": ""}},
		{name: "config empty", config: "proxy:\n  agent-server.tcp.listen-address: \"\"\n"},
		{name: "flag over empty env", args: []string{"--agent-server.tcp.listen-address=127.0.0.1:0"},
			env: map[string]string{"REVERSE_HTTP_AGENT_SERVER_TCP_LISTEN_ADDRESS": ""}, want: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := isolate(t)
			args := proxyArgs(tc.args...)
			if tc.config != "" {
				args = append(args, "--config", writeFile(t, dir, "c.yaml", tc.config))
			}
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			r := start(t, args...)
			line := r.waitFor("agent server listening")
			r.waitFor(proxyReady)
			if code := r.stop(); code != 0 {
				t.Fatalf("exit %d; stderr:\n%s", code, r.stderr)
			}
			if got := strings.Contains(line, "tcp_address=127.0.0.1:"); got != tc.want {
				t.Fatalf("TCP listener for agents: %v, want %v: %s", got, tc.want, line)
			}
		})
	}
}

// TestAgentTransportFlag: --agent-client.transport takes auto, quic or
// tcp, and refuses anything else naming the flag.
func TestAgentTransportFlag(t *testing.T) {
	for _, v := range []string{"auto", "quic", "tcp"} {
		r := start(t, "agent", "--auth.noauth.agent-id=a1", "--agent-client.server-address=127.0.0.1:1",
			"--agent-client.handshake-timeout=200ms", "--agent-client.transport="+v)
		line := r.waitFor(agentReady)
		r.stop()
		if !strings.Contains(line, "transport="+v) {
			t.Errorf("--agent-client.transport=%s: %s", v, line)
		}
	}
	r := start(t, "agent", "--auth.noauth.agent-id=a1", "--agent-client.transport=udp")
	<-r.done
	if r.code == 0 || !strings.Contains(r.stderr.String(), "--agent-client.transport") {
		t.Fatalf("--agent-client.transport=udp: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	r = start(t, "agent", "--auth.noauth.agent-id=a1", "--agent-client.quic-probe-interval=10ms")
	<-r.done
	if r.code == 0 || !strings.Contains(r.stderr.String(), "--agent-client.quic-probe-interval: must be at least 1s") {
		t.Fatalf("--agent-client.quic-probe-interval=10ms: exit %d, stderr:\n%s", r.code, r.stderr)
	}
}
