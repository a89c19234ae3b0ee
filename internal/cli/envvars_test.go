package cli_test

// Environment variables: REVERSE_HTTP_ + the flag's name, upper-cased, "."
// and "-" as "_". Precedence: flag > environment > config file > default.
// These tests use t.Setenv, so none of them is parallel.

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

// envSetting is one flag of one command, set in each of the four ways,
// and how to see which value won.
type envSetting struct {
	name  string
	args  []string // the command and what it needs besides the flag
	flag  string   // without "--"
	env   string   // its variable
	yaml  string   // a config file setting the flag to want["config"]
	want  map[string]string
	ready string                                 // the log line that shows the value
	read  func(t *testing.T, line string) string // the value in that line
}

func envSettings() []envSetting {
	attr := func(key string) func(*testing.T, string) string {
		return func(t *testing.T, line string) string { return logAttr(t, line, key) }
	}
	return []envSetting{
		{
			name: "proxy", args: proxyArgs(),
			flag: "http-proxy.host-whitelist", env: "REVERSE_HTTP_HTTP_PROXY_HOST_WHITELIST",
			yaml:  "proxy:\n  http-proxy.host-whitelist: config.example\n",
			want:  map[string]string{"default": "", "config": "config.example", "env": "env.example", "flag": "flag.example"},
			ready: proxyReady, read: attr("allowlist"),
		},
		{
			name: "agent", args: []string{"agent", "--auth.noauth.agent-id=a1", "--agent-client.handshake-timeout=200ms"},
			flag: "agent-client.server-address", env: "REVERSE_HTTP_AGENT_CLIENT_SERVER_ADDRESS",
			yaml:  "agent:\n  agent-client.server-address: 127.0.0.1:3\n",
			want:  map[string]string{"default": "localhost:4242", "config": "127.0.0.1:3", "env": "127.0.0.1:2", "flag": "127.0.0.1:1"},
			ready: agentReady, read: attr("server"),
		},
		{
			name: "lb", args: []string{"lb", "--http-proxy.listen-address=127.0.0.1:0"},
			flag: "store.memcached.address", env: "REVERSE_HTTP_STORE_MEMCACHED_ADDRESS",
			yaml:  "lb:\n  store.memcached.address: 127.0.0.1:11213\n",
			want:  map[string]string{"default": "localhost:11211", "config": "127.0.0.1:11213", "env": "127.0.0.1:11212", "flag": "127.0.0.1:11211"},
			ready: "route store", read: attr("servers"),
		},
	}
}

// TestEnvPrecedence: for a flag of proxy, agent and lb, the default applies
// alone; a config file beats the default; the environment beats the file;
// a flag beats both.
func TestEnvPrecedence(t *testing.T) {
	for _, s := range envSettings() {
		for _, tc := range []struct {
			name              string
			config, env, flag bool
			want              string
		}{
			{name: "default", want: "default"},
			{name: "config over default", config: true, want: "config"},
			{name: "env over default", env: true, want: "env"},
			{name: "env over config", config: true, env: true, want: "env"},
			{name: "flag over env and config", config: true, env: true, flag: true, want: "flag"},
		} {
			t.Run(s.name+"/"+tc.name, func(t *testing.T) {
				dir := isolate(t)
				args := append([]string(nil), s.args...)
				if tc.config {
					args = append(args, "--config", writeFile(t, dir, "c.yaml", s.yaml))
				}
				if tc.env {
					t.Setenv(s.env, s.want["env"])
				}
				if tc.flag {
					args = append(args, "--"+s.flag+"="+s.want["flag"])
				}
				r := start(t, args...)
				line := r.waitFor(s.ready)
				if code := r.stop(); code != 0 {
					t.Fatalf("exit %d; stderr:\n%s", code, r.stderr)
				}
				if got, want := s.read(t, line), s.want[tc.want]; got != want {
					t.Errorf("--%s is %q, want %q (the %s): %s", s.flag, got, want, tc.want, line)
				}
			})
		}
	}
}

// TestEnvNestedCommand: the variables reach a command two levels down
// (auth jwt token), with the same precedence.
func TestEnvNestedCommand(t *testing.T) {
	for _, tc := range []struct {
		name        string
		config      bool
		env         map[string]string
		args        []string
		wantSub     string
		wantAud     string
		wantMinutes float64
	}{
		{name: "env only", env: map[string]string{"REVERSE_HTTP_AGENT_ID": "env-id", "REVERSE_HTTP_AUDIENCE": "env-aud", "REVERSE_HTTP_DURATION": "5m"},
			wantSub: "env-id", wantAud: "env-aud", wantMinutes: 5},
		{name: "env over config", config: true, env: map[string]string{"REVERSE_HTTP_AUDIENCE": "env-aud"},
			wantSub: "config-id", wantAud: "env-aud", wantMinutes: 24 * 60},
		{name: "flag over env", env: map[string]string{"REVERSE_HTTP_AGENT_ID": "env-id", "REVERSE_HTTP_AUDIENCE": "env-aud"},
			args: []string{"--audience=flag-aud"}, wantSub: "env-id", wantAud: "flag-aud", wantMinutes: 24 * 60},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := isolate(t)
			f := newFiles(t)
			args := append([]string{"auth", "jwt", "token", "-i", f.authPrivate, "-o", "-"}, tc.args...)
			if tc.config {
				args = append(args, "--config", writeFile(t, dir, "c.yaml",
					"auth:\n  jwt:\n    token:\n      agent-id: config-id\n      audience: config-aud\n"))
			}
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			claims := parseClaims(t, mustRun(t, args...).stdout)
			if claims["agent_id"] != tc.wantSub {
				t.Errorf("agent_id %v, want %q", claims["agent_id"], tc.wantSub)
			}
			if aud, _ := json.Marshal(claims["aud"]); string(aud) != `["`+tc.wantAud+`"]` && string(aud) != `"`+tc.wantAud+`"` {
				t.Errorf("aud %s, want %q", aud, tc.wantAud)
			}
			// No iat (compact tokens): exp is that long from about now.
			exp, _ := claims["exp"].(float64)
			if got := math.Round((exp - float64(time.Now().Unix())) / 60); got != tc.wantMinutes {
				t.Errorf("token valid for %v minutes, want %v", got, tc.wantMinutes)
			}
		})
	}
}

// TestEnvConfigFile: REVERSE_HTTP_CONFIG names the --config file; --config
// beats it.
func TestEnvConfigFile(t *testing.T) {
	dir := isolate(t)
	f := newFiles(t)
	t.Setenv("REVERSE_HTTP_CONFIG", writeFile(t, dir, "env.yaml", "auth:\n  jwt:\n    token:\n      agent-id: env-file\n"))
	args := []string{"auth", "jwt", "token", "-i", f.authPrivate, "-o", "-"}
	if sub := parseClaims(t, mustRun(t, args...).stdout)["agent_id"]; sub != "env-file" {
		t.Errorf("agent_id %v with $REVERSE_HTTP_CONFIG, want env-file", sub)
	}
	flagFile := writeFile(t, dir, "flag.yaml", "auth:\n  jwt:\n    token:\n      agent-id: flag-file\n")
	if sub := parseClaims(t, mustRun(t, append(args, "--config", flagFile)...).stdout)["agent_id"]; sub != "flag-file" {
		t.Errorf("agent_id %v with --config and $REVERSE_HTTP_CONFIG, want flag-file", sub)
	}
}

// TestEnvLogVariables: LOG_LEVEL and LOG_FORMAT keep working;
// REVERSE_HTTP_LOG_* win over them; both beat a config file.
func TestEnvLogVariables(t *testing.T) {
	for _, tc := range []struct {
		name   string
		env    map[string]string
		config string
		json   bool
	}{
		{name: "LOG_FORMAT", env: map[string]string{"LOG_FORMAT": "json"}, json: true},
		{name: "REVERSE_HTTP_LOG_FORMAT", env: map[string]string{"REVERSE_HTTP_LOG_FORMAT": "json"}, json: true},
		{name: "REVERSE_HTTP_LOG_FORMAT over LOG_FORMAT", env: map[string]string{"REVERSE_HTTP_LOG_FORMAT": "text", "LOG_FORMAT": "json"}},
		{name: "REVERSE_HTTP_LOG_FORMAT over LOG_FORMAT, json", env: map[string]string{"REVERSE_HTTP_LOG_FORMAT": "json", "LOG_FORMAT": "text"}, json: true},
		{name: "LOG_FORMAT over config", env: map[string]string{"LOG_FORMAT": "json"}, config: "log.format: text\n", json: true},
		{name: "config without env", config: "log.format: json\n", json: true},
		// An invalid LOG_LEVEL is not even read when REVERSE_HTTP_LOG_LEVEL is set.
		{name: "REVERSE_HTTP_LOG_LEVEL over invalid LOG_LEVEL", env: map[string]string{"REVERSE_HTTP_LOG_LEVEL": "info", "LOG_LEVEL": "loud"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := isolate(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			args := proxyArgs()
			if tc.config != "" {
				args = append(args, "--config", writeFile(t, dir, "c.yaml", tc.config))
			}
			r := start(t, args...)
			line := r.waitFor(proxyReady)
			if code := r.stop(); code != 0 {
				t.Fatalf("exit %d; stderr:\n%s", code, r.stderr)
			}
			if got := json.Valid([]byte(line)); got != tc.json {
				t.Errorf("JSON line %v, want %v: %s", got, tc.json, line)
			}
		})
	}
}

// TestEnvInvalid: a malformed value in a variable stops the command at start
// with one line that names the variable (and the flag).
func TestEnvInvalid(t *testing.T) {
	agent := []string{"agent", "--auth.noauth.agent-id=a1", "--agent-client.server-address=127.0.0.1:9"}
	lb := []string{"lb", "--http-proxy.listen-address=127.0.0.1:0"}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"proxy duration", map[string]string{"REVERSE_HTTP_SHUTDOWN_TIMEOUT": "abc"}, proxyArgs(), "REVERSE_HTTP_SHUTDOWN_TIMEOUT (--shutdown-timeout)"},
		{"proxy enum", map[string]string{"REVERSE_HTTP_STORE_TYPE": "redis"}, proxyArgs(), "REVERSE_HTTP_STORE_TYPE (--store.type)"},
		{"proxy int", map[string]string{"REVERSE_HTTP_LIMITS_AGENTS": "many"}, proxyArgs(), "REVERSE_HTTP_LIMITS_AGENTS (--limits.agents)"},
		{"agent int", map[string]string{"REVERSE_HTTP_AGENT_CLIENT_MAX_STREAMS": "x"}, agent, "REVERSE_HTTP_AGENT_CLIENT_MAX_STREAMS (--agent-client.max-streams)"},
		{"agent bool", map[string]string{"REVERSE_HTTP_AGENT_CLIENT_BLOCK_LOCAL": "maybe"}, agent, "REVERSE_HTTP_AGENT_CLIENT_BLOCK_LOCAL (--agent-client.block-local)"},
		{"lb duration", map[string]string{"REVERSE_HTTP_SHUTDOWN_TIMEOUT": "5"}, lb, "REVERSE_HTTP_SHUTDOWN_TIMEOUT (--shutdown-timeout)"},
		{"lb enum", map[string]string{"REVERSE_HTTP_STORE_TYPE": "none"}, lb, "REVERSE_HTTP_STORE_TYPE (--store.type)"},
		{"token duration", map[string]string{"REVERSE_HTTP_DURATION": "forever"}, []string{"auth", "jwt", "token", "--agent-id=a1", "-o", "-"}, "REVERSE_HTTP_DURATION (--duration)"},
		{"REVERSE_HTTP_LOG_LEVEL", map[string]string{"REVERSE_HTTP_LOG_LEVEL": "loud", "LOG_LEVEL": "info"}, proxyArgs(), "REVERSE_HTTP_LOG_LEVEL (--log.level)"},
		{"LOG_LEVEL", map[string]string{"LOG_LEVEL": "loud"}, proxyArgs(), "LOG_LEVEL (--log.level)"},
		{"env over a valid config", map[string]string{"REVERSE_HTTP_SHUTDOWN_TIMEOUT": "abc"}, proxyArgs("--config=CONFIG"), "REVERSE_HTTP_SHUTDOWN_TIMEOUT (--shutdown-timeout)"},
		{"config file missing", map[string]string{"REVERSE_HTTP_CONFIG": "/nonexistent"}, proxyArgs(), "REVERSE_HTTP_CONFIG"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := isolate(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			for i, a := range tc.args {
				if a == "--config=CONFIG" {
					tc.args[i] = "--config=" + writeFile(t, dir, "c.yaml", "proxy:\n  shutdown-timeout: 1s\n")
				}
			}
			r := runCmd(t, "", 5*time.Second, tc.args...)
			if r.code == 0 {
				t.Fatalf("%q exited 0; stderr:\n%s", tc.args, r.stderr)
			}
			msg := strings.TrimSuffix(r.stderr, "\n")
			if msg == "" || strings.Contains(msg, "\n") {
				t.Errorf("want one line on stderr, got:\n%s", r.stderr)
			}
			if !strings.Contains(msg, tc.want) {
				t.Errorf("stderr does not name %s:\n%s", tc.want, r.stderr)
			}
		})
	}
}

// TestEnvMalformedButUnused: a malformed variable does not matter where it
// is not used: under a flag that overrides it, or for another command.
func TestEnvMalformedButUnused(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
	}{
		{"overridden by a flag", map[string]string{"REVERSE_HTTP_SHUTDOWN_TIMEOUT": "abc"}, proxyArgs("--shutdown-timeout=1s")},
		{"agent's variable on a proxy", map[string]string{"REVERSE_HTTP_AGENT_CLIENT_MAX_STREAMS": "x"}, proxyArgs()},
		{"token's duration on a proxy", map[string]string{"REVERSE_HTTP_DURATION": "forever"}, proxyArgs()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isolate(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			r := start(t, tc.args...)
			r.waitFor(proxyReady)
			if code := r.stop(); code != 0 {
				t.Fatalf("exit %d; stderr:\n%s", code, r.stderr)
			}
		})
	}
}

// TestEnvSecrets: a token and a key password from the environment work,
// and their values appear nowhere: not in the log, not in an error, not in
// --help. A token from the environment gets no inline-token warning (it is
// not in the process list).
func TestEnvSecrets(t *testing.T) {
	isolate(t)
	f := newFiles(t)

	t.Run("agent token", func(t *testing.T) {
		t.Setenv("REVERSE_HTTP_AUTH_TYPE", "jwt")
		t.Setenv("REVERSE_HTTP_AUTH_JWT_TOKEN", f.agentToken)
		r := start(t, "agent", "--agent-client.server-address=127.0.0.1:9", "--agent-client.handshake-timeout=200ms")
		r.waitFor(agentReady)
		r.waitFor("connection to proxy") // it tried, and failed, to connect
		if code := r.stop(); code != 0 {
			t.Errorf("exit %d", code)
		}
		log := r.stderr.String()
		if strings.Contains(log, "inline") {
			t.Errorf("inline-token warning for a token from the environment:\n%s", log)
		}
		if strings.Contains(log, strings.Split(f.agentToken, ".")[2]) {
			t.Errorf("the token is in the log:\n%s", log)
		}
	})

	t.Run("wrong key password", func(t *testing.T) {
		const password = "env-password-1234"
		t.Setenv("REVERSE_HTTP_HTTP_PROXY_TLS_KEY_PASSWORD", password)
		r := runCmd(t, "", 5*time.Second, proxyArgs("--http-proxy.tls.enable",
			"--http-proxy.tls.file.cert="+f.proxyCert, "--http-proxy.tls.file.key="+f.proxyKeyEnc)...)
		if r.code == 0 {
			t.Fatalf("exit 0 with a wrong password; stderr:\n%s", r.stderr)
		}
		if !strings.Contains(r.stderr, "--http-proxy.tls.key-password") {
			t.Errorf("error does not name the setting:\n%s", r.stderr)
		}
		if strings.Contains(r.stderr+r.stdout, password) {
			t.Errorf("the password is in the output:\n%s%s", r.stdout, r.stderr)
		}
	})

	t.Run("right key password", func(t *testing.T) {
		t.Setenv("REVERSE_HTTP_HTTP_PROXY_TLS_KEY_PASSWORD", keyPassword)
		r := start(t, proxyArgs("--http-proxy.tls.enable",
			"--http-proxy.tls.file.cert="+f.proxyCert, "--http-proxy.tls.file.key="+f.proxyKeyEnc)...)
		if line := r.waitFor(proxyReady); logAttr(t, line, "scheme") != "https" {
			t.Errorf("not https: %s", line)
		}
		if code := r.stop(); code != 0 {
			t.Errorf("exit %d; stderr:\n%s", code, r.stderr)
		}
	})

	t.Run("help", func(t *testing.T) {
		t.Setenv("REVERSE_HTTP_AUTH_JWT_TOKEN", f.agentToken)
		t.Setenv("REVERSE_HTTP_HTTP_PROXY_TLS_KEY_PASSWORD", "env-password-1234")
		t.Setenv("REVERSE_HTTP_HTTP_CONNECTOR_TLS_FILE_KEY_PASSWORD", "env-password-5678")
		for _, cmd := range []string{"agent", "proxy", "lb"} {
			r := mustRun(t, cmd, "--help")
			for _, secret := range []string{strings.Split(f.agentToken, ".")[2], "env-password-1234", "env-password-5678"} {
				if strings.Contains(r.stdout+r.stderr, secret) {
					t.Errorf("%s --help shows a secret from the environment:\n%s", cmd, r.stdout)
				}
			}
		}
	})
}
