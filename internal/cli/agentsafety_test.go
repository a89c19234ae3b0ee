package cli_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTLSErrorKeepsPath: a path containing "tls." is printed as given, with
// only the setting name made a full flag.
func TestTLSErrorKeepsPath(t *testing.T) {
	dir := isolate(t)
	f := newFiles(t)
	missing := filepath.Join(dir, "etc", "mytls.pem")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"agent root CA", []string{"agent", "--agent-client.server-address=127.0.0.1:9", "--auth.noauth.agent-id=a1",
			"--agent-client.tls.file.root-ca=" + missing},
			`--agent-client.tls.file.root-ca "` + missing + `": open ` + missing + `: no such file or directory`},
		{"proxy cert", proxyArgs("--agent-server.tls.file.cert="+missing, "--agent-server.tls.file.key="+f.proxyKey),
			`--agent-server.tls.file.cert "` + missing + `": open ` + missing + `:`},
		{"connector key password", proxyArgs("--http-connector.tls.enable",
			"--http-connector.tls.file.cert="+f.proxyCert, "--http-connector.tls.file.key="+f.proxyKeyEnc),
			"--http-connector.tls.file.key-password is not set"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCmd(t, "", 5*time.Second, tc.args...)
			if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("exit %d, stderr:\n%s\nwant it to contain %s", r.code, r.stderr, tc.want)
			}
			if strings.Contains(r.stderr, "my--") {
				t.Errorf("path rewritten: %s", r.stderr)
			}
		})
	}
}

// TestAgentIDUnselectable: an ID no client could select is refused at
// start-up, naming the flag.
func TestAgentIDUnselectable(t *testing.T) {
	isolate(t)
	f := newFiles(t)
	for _, tc := range []struct{ id, want string }{
		{"a:b", `--auth.noauth.agent-id "a:b": contains ':', which separates user and password in Proxy-Authorization, so no client could select this agent`},
		{"a\tb", `--auth.noauth.agent-id "a\tb": control character U+0009`},
		{"", "--auth.noauth.agent-id: required"},
	} {
		r := runCmd(t, "", 5*time.Second, "agent", "--agent-client.server-address=127.0.0.1:9", "--auth.noauth.agent-id="+tc.id)
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("agent ID %q: exit %d, stderr:\n%s\nwant %s", tc.id, r.code, r.stderr, tc.want)
		}
	}
	r := runCmd(t, "", 5*time.Second, "auth", "jwt", "token", "--agent-id=a:b", "-i", f.authPrivate, "-o", "-")
	if r.code == 0 || !strings.Contains(r.stderr, "contains ':'") {
		t.Errorf("token for agent a:b: exit %d, stderr:\n%s", r.code, r.stderr)
	}
}

// TestInlineTokenWarning: an inline --auth.jwt.token gets a one-line
// warning and never appears in the log; file:PATH gets no warning.
func TestInlineTokenWarning(t *testing.T) {
	isolate(t)
	f := newFiles(t)
	const warning = "--auth.jwt.token is given inline on the command line, where other local users can read it in the process list; $REVERSE_HTTP_AUTH_JWT_TOKEN is better, --auth.jwt.token=file:PATH is safest"
	for _, tc := range []struct {
		name string
		args []string
		warn bool
	}{
		{"inline", []string{"--auth.jwt.token=" + f.agentToken}, true},
		{"inline, separate value", []string{"--auth.jwt.token", f.agentToken}, true},
		{"file", []string{"--auth.jwt.token=file:" + f.agentTokenF}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"agent", "--agent-client.server-address=127.0.0.1:9", "--agent-client.handshake-timeout=200ms",
				"--auth.type=jwt"}, tc.args...)
			r := start(t, args...)
			r.waitFor(agentReady)
			r.waitFor("connection to proxy") // it tried, and failed, to connect
			if code := r.stop(); code != 0 {
				t.Errorf("exit %d", code)
			}
			log := r.stderr.String()
			if got := strings.Count(log, warning); got != map[bool]int{true: 1, false: 0}[tc.warn] {
				t.Errorf("warning %d times, want warn=%v:\n%s", got, tc.warn, log)
			}
			if strings.Contains(log, f.agentToken) || strings.Contains(log, strings.Split(f.agentToken, ".")[2]) {
				t.Errorf("the token is in the log:\n%s", log)
			}
		})
	}
}
