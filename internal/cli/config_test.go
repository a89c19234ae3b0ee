package cli_test

// Config files, as the reference reads them: the same two loaders, so the
// files its users have keep working. cli.Main loads, in this order,
// /etc/reverse-http/config.json, ~/.reverse-http.json (kong.JSON),
// /etc/reverse-http/config.yaml, ~/.reverse-http.yaml (kong-yaml's Loader),
// then the --config FILE (JSON when it ends in .json, any case; YAML
// otherwise). For each flag not given on the command line kong asks every
// file and takes the LAST value found, so a later file overrides an earlier
// one and flags override them all. Missing default files are skipped; a
// missing --config file is an error.
//
// kong.JSON (kong@v1.17.0/resolver.go) ignores the command: a key is the
// flag's name, the same for every command that has the flag, written as
//
//	"agent_server.listen_address": ":4242"       dashes to underscores, flat
//	{"agent_server": {"listen_address": ":4242"}} or nested at each dot
//	"agentServer.ListenAddress": ":4242"         or kong's "snakeCase", which is
//	                                              really camelCase, flat only
//
// and "agent-server.listen-address" (dashes) is NOT found.
//
// kong-yaml's Loader (kong-yaml@v0.2.0/yaml.go) builds the path command
// words + flag name, joins it with "-" and splits it at every "-"; a map key
// may swallow any run of consecutive parts, rejoined with "-". Dots are not
// separators. So `proxy --http-proxy.listen-address` is found as
//
//	proxy:                                  nested by command, the usual form
//	  http-proxy.listen-address: ":3128"
//	proxy-http-proxy.listen-address: ":3128"  or flat
//
// but NOT as `http-proxy: {listen-address: ...}` (the "." is inside a part).
// `auth jwt token --agent-id` is `auth: {jwt: {token: {agent-id: x}}}` or
// `auth-jwt-token-agent-id: x`. Global flags (log.*) have no command words:
// `log.level: debug` at the top. Values keep their YAML/JSON type: a string
// flag given a number (agent-id: 4711) is refused, so quote it ("4711");
// lists fill repeated flags; durations are strings ("10s").

import (
	"encoding/base64"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// tokenClaims runs `auth jwt token` with args (the agent ID and the rest may
// come from config files) and returns the claims of the token it printed.
func tokenClaims(t *testing.T, key string, args ...string) map[string]any {
	t.Helper()
	return parseClaims(t, mustRun(t, append([]string{"auth", "jwt", "token", "-i", key, "-o", "-"}, args...)...).stdout)
}

// parseClaims decodes the payload of a JWT (without verifying it).
func parseClaims(t *testing.T, token string) map[string]any {
	t.Helper()
	parts := strings.Split(strings.TrimSpace(token), ".")
	if len(parts) != 3 {
		t.Fatalf("%q is not a JWT", token)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	return claims
}

func TestConfigFileFormats(t *testing.T) {
	tests := []struct {
		name, file, content string
	}{
		{"JSON snake case", "c.json", `{"agent_id": "from-file"}`},
		{"JSON camel case", "c.json", `{"agentId": "from-file"}`},
		{"JSON extension in capitals", "c.JSON", `{"agent_id": "from-file"}`},
		{"YAML nested by command", "c.yaml", "auth:\n  jwt:\n    token:\n      agent-id: from-file\n"},
		{"YAML flat", "c.yaml", "auth-jwt-token-agent-id: from-file\n"},
		{"YAML partly flat", "c.yaml", "auth-jwt:\n  token-agent-id: from-file\n"},
		{"YAML .yml", "c.yml", "auth:\n  jwt:\n    token:\n      agent-id: from-file\n"},
		{"YAML without extension", "config", "auth:\n  jwt:\n    token:\n      agent-id: \"from-file\"\n"},
		{"YAML quoted number", "c.yaml", "auth:\n  jwt:\n    token:\n      agent-id: \"4711\"\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := isolate(t)
			f := newFiles(t)
			cfg := writeFile(t, dir, tc.file, tc.content)
			want := "from-file"
			if strings.Contains(tc.content, "4711") {
				want = "4711"
			}
			for _, args := range [][]string{{"--config", cfg}, {"--config=" + cfg}} {
				claims := tokenClaims(t, f.authPrivate, args...)
				if claims["agent_id"] != want {
					t.Errorf("%q: agent_id=%v, want %q", args, claims["agent_id"], want)
				}
			}
		})
	}
}

// TestConfigFileTypes: durations, enums and strings from a config file reach
// the command.
func TestConfigFileTypes(t *testing.T) {
	for _, tc := range []struct{ file, content string }{
		{"c.json", `{"agent_id": "x1", "role": "agent", "audience": "aud", "duration": "2h"}`},
		{"c.yaml", "auth:\n  jwt:\n    token:\n      agent-id: x1\n      role: agent\n      audience: aud\n      duration: 2h\n"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			dir := isolate(t)
			f := newFiles(t)
			claims := tokenClaims(t, f.authPrivate, "--config", writeFile(t, dir, tc.file, tc.content))
			if claims["agent_id"] != "x1" || claims["role"] != "agent" {
				t.Errorf("agent_id=%v role=%v, want x1 agent", claims["agent_id"], claims["role"])
			}
			if aud, _ := json.Marshal(claims["aud"]); string(aud) != `["aud"]` && string(aud) != `"aud"` {
				t.Errorf("aud=%s, want aud", aud)
			}
			// No iat (compact tokens): exp is 2h from about now.
			if exp, _ := claims["exp"].(float64); math.Abs(exp-float64(time.Now().Unix())-(2*time.Hour).Seconds()) > 60 {
				t.Errorf("exp %v, want 2h from now", exp)
			}
		})
	}
}

// TestConfigFileProxy: the proxy takes its listen addresses, allowlist and
// log format from a config file.
func TestConfigFileProxy(t *testing.T) {
	tests := []struct{ name, file, content string }{
		{"JSON nested", "proxy.json", `{
			"log": {"format": "json"},
			"agent_server": {"listen_address": "127.0.0.1:0"},
			"http_proxy": {"listen_address": "127.0.0.1:0", "host_whitelist": ["example.com", "10.0.0.0/8"]}
		}`},
		{"JSON flat", "proxy.json", `{
			"log.format": "json",
			"agent_server.listen_address": "127.0.0.1:0",
			"http_proxy.listen_address": "127.0.0.1:0",
			"http_proxy.host_whitelist": "example.com,10.0.0.0/8"
		}`},
		{"YAML", "proxy.yaml", `
log.format: json
proxy:
  agent-server.listen-address: 127.0.0.1:0
  http-proxy.listen-address: 127.0.0.1:0
  http-proxy.host-whitelist:
    - example.com
    - 10.0.0.0/8
`},
		{"YAML flat", "proxy.yaml", `
log.format: json
proxy-agent-server.listen-address: 127.0.0.1:0
proxy-http-proxy.listen-address: 127.0.0.1:0
proxy-http-proxy.host-whitelist: example.com,10.0.0.0/8
`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := isolate(t)
			r := start(t, "proxy", "--config", writeFile(t, dir, tc.file, tc.content))
			line := r.waitFor(proxyReady)
			if code := r.stop(); code != 0 {
				t.Fatalf("exit %d; stderr:\n%s", code, r.stderr)
			}
			if !strings.HasPrefix(line, "{") {
				t.Errorf("log.format from the file not applied: %s", line)
			}
			if addr := logAttr(t, line, "address"); !strings.HasPrefix(addr, "127.0.0.1:") {
				t.Errorf("http-proxy.listen-address from the file not applied: address=%q", addr)
			}
			if got := logAttr(t, line, "allowlist"); got != "example.com,10.0.0.0/8" {
				t.Errorf("http-proxy.host-whitelist from the file: allowlist=%q, want example.com,10.0.0.0/8", got)
			}
			agentServer := r.waitFor("agent server listening")
			if addr := logAttr(t, agentServer, "address"); !strings.HasPrefix(addr, "127.0.0.1:") {
				t.Errorf("agent-server.listen-address from the file not applied: %s", agentServer)
			}
		})
	}
}

// TestConfigFileAgent: the agent takes its ID and server from a config file;
// without them it would refuse to start.
func TestConfigFileAgent(t *testing.T) {
	for _, tc := range []struct{ file, content string }{
		{"agent.json", `{"auth": {"noauth": {"agent_id": "a1"}}, "agent_client": {"server_address": "127.0.0.1:9"}}`},
		{"agent.yaml", "agent:\n  auth.noauth.agent-id: a1\n  agent-client.server-address: 127.0.0.1:9\n"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			dir := isolate(t)
			r := start(t, "agent", "--config", writeFile(t, dir, tc.file, tc.content))
			line := r.waitFor(agentReady)
			if code := r.stop(); code != 0 {
				t.Fatalf("exit %d; stderr:\n%s", code, r.stderr)
			}
			if got := logAttr(t, line, "server"); got != "127.0.0.1:9" {
				t.Errorf("server=%q, want 127.0.0.1:9 from the file: %s", got, line)
			}
		})
	}
}

// homeHint explains why a home config file in $HOME is not read.
const homeHint = "kong.ExpandPath expands ~ with user.Current() (the passwd entry), not $HOME"

// TestConfigPrecedence: ~/.reverse-http.json < ~/.reverse-http.yaml <
// --config FILE < flags, where ~ is $HOME.
func TestConfigPrecedence(t *testing.T) {
	const (
		homeJSON = `{"agent_id": "home-json", "audience": "home-json"}`
		homeYAML = "auth:\n  jwt:\n    token:\n      agent-id: home-yaml\n      audience: home-yaml\n"
	)
	tests := []struct {
		name               string
		homeJSON, homeYAML bool
		explicit           string // file name of --config, "" for none
		args               []string
		want               string
	}{
		{name: "home JSON", homeJSON: true, want: "home-json"},
		{name: "home YAML", homeYAML: true, want: "home-yaml"},
		{name: "home YAML over home JSON", homeJSON: true, homeYAML: true, want: "home-yaml"},
		{name: "--config JSON over home files", homeJSON: true, homeYAML: true, explicit: "x.json", want: "explicit"},
		{name: "--config YAML over home files", homeJSON: true, homeYAML: true, explicit: "x.yaml", want: "explicit"},
		{name: "flag over home file", homeYAML: true, args: []string{"--agent-id=flag", "--audience=flag"}, want: "flag"},
		{name: "flag over --config", homeJSON: true, explicit: "x.yaml", args: []string{"--agent-id", "flag", "--audience", "flag"}, want: "flag"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := isolate(t)
			f := newFiles(t)
			home := os.Getenv("HOME")
			if tc.homeJSON {
				writeFile(t, home, ".reverse-http.json", homeJSON)
			}
			if tc.homeYAML {
				writeFile(t, home, ".reverse-http.yaml", homeYAML)
			}
			args := tc.args
			switch filepath.Ext(tc.explicit) {
			case ".json":
				args = append(args, "--config", writeFile(t, dir, tc.explicit, `{"agent_id": "explicit", "audience": "explicit"}`))
			case ".yaml":
				args = append(args, "--config", writeFile(t, dir, tc.explicit, "auth:\n  jwt:\n    token:\n      agent-id: explicit\n      audience: explicit\n"))
			}
			args = append([]string{"auth", "jwt", "token", "-i", f.authPrivate, "-o", "-"}, args...)
			hint := ""
			if tc.homeJSON || tc.homeYAML {
				hint = " (" + homeHint + ")"
			}
			r := runCmd(t, "", waitTimeout, args...)
			if r.code != 0 {
				t.Fatalf("%q exited with %d%s; stderr:\n%s", args, r.code, hint, r.stderr)
			}
			claims := parseClaims(t, r.stdout)
			if claims["agent_id"] != tc.want {
				t.Errorf("agent ID %v, want %q%s", claims["agent_id"], tc.want, hint)
			}
			if aud, _ := json.Marshal(claims["aud"]); string(aud) != `["`+tc.want+`"]` && string(aud) != `"`+tc.want+`"` {
				t.Errorf("aud %s, want %q", aud, tc.want)
			}
		})
	}
}

// TestConfigFlagOverridesFile: a flag wins over a file even when the file's
// value would not work.
func TestConfigFlagOverridesFile(t *testing.T) {
	dir := isolate(t)
	cfg := writeFile(t, dir, "proxy.yaml", "proxy:\n  agent-server.listen-address: bogus\n  http-proxy.listen-address: bogus\n")
	r := start(t, append([]string{"--config", cfg}, proxyArgs()...)...)
	r.waitFor(proxyReady)
	if code := r.stop(); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, r.stderr)
	}
}

// TestConfigHomeProxy: the proxy reads ~/.reverse-http.yaml without
// --config, the way the reference's users run it.
func TestConfigHomeProxy(t *testing.T) {
	isolate(t)
	writeFile(t, os.Getenv("HOME"), ".reverse-http.yaml",
		"log.format: json\nproxy:\n  agent-server.listen-address: 127.0.0.1:0\n  http-proxy.listen-address: 127.0.0.1:0\n")
	r := start(t, "proxy")
	line := r.waitFor(proxyReady)
	if code := r.stop(); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, r.stderr)
	}
	if !strings.HasPrefix(line, "{") || !strings.HasPrefix(logAttr(t, line, "address"), "127.0.0.1:") {
		t.Errorf("$HOME/.reverse-http.yaml not applied (%s): %s", homeHint, line)
	}
}
