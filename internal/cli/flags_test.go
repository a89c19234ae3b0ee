package cli_test

import (
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// referenceFlags are the flags of grepplabs/reverse-http
// (/work/shared/reference/cli.md) that this binary must accept with the same
// names: it is a drop-in successor, so scripts, unit files and config files
// written for the reference keep working.
var referenceFlags = map[string][]string{
	"proxy": {
		"--log.format", "--log.level",
		"--agent-server.listen-address",
		"--agent-server.tls.refresh",
		"--agent-server.tls.file.key",
		"--agent-server.tls.file.cert",
		"--agent-server.tls.file.client-ca",
		"--agent-server.tls.file.client-crl",
		"--agent-server.agent.dial-timeout",
		"--http-proxy.listen-address",
		"--http-proxy.tls.enable",
		"--http-proxy.tls.refresh",
		"--http-proxy.tls.file.key",
		"--http-proxy.tls.file.cert",
		"--http-proxy.tls.file.client-ca",
		"--http-proxy.tls.file.client-crl",
		"--http-proxy.tls.key-password",
		"--http-proxy.host-whitelist",
		"--auth.type",
		"--auth.jwt.public-key",
		"--auth.jwt.audience",
		"--store.type",
		"--store.http-proxy-address",
		"--store.memcached.address",
		"--store.memcached.timeout",
	},
	"agent": {
		"--log.format", "--log.level",
		"--agent-client.server-address",
		"--agent-client.host-whitelist",
		"--agent-client.tls.refresh",
		"--agent-client.tls.insecure-skip-verify",
		"--agent-client.tls.file.key",
		"--agent-client.tls.file.cert",
		"--agent-client.tls.file.root-ca",
		"--auth.type",
		"--auth.noauth.agent-id",
		"--auth.jwt.token",
	},
	"lb": {
		"--log.format", "--log.level",
		"--http-proxy.listen-address",
		"--http-proxy.tls.enable",
		"--http-proxy.tls.refresh",
		"--http-proxy.tls.file.key",
		"--http-proxy.tls.file.cert",
		"--http-proxy.tls.file.client-ca",
		"--http-proxy.tls.file.client-crl",
		"--http-proxy.tls.key-password",
		"--http-proxy.host-whitelist",
		"--http-connector.tls.enable",
		"--http-connector.tls.refresh",
		"--http-connector.tls.insecure-skip-verify",
		"--http-connector.tls.use-system-pool",
		"--http-connector.tls.file.key",
		"--http-connector.tls.file.cert",
		"--http-connector.tls.file.root-ca",
		"--http-connector.tls.file.key-password",
		"--auth.type",
		"--auth.jwt.public-key",
		"--auth.jwt.audience",
		"--store.type",
		"--store.memcached.address",
		"--store.memcached.timeout",
	},
	"auth key private": {"--log.format", "--log.level", "--algo", "-o", "--out"},
	"auth key public":  {"--log.format", "--log.level", "-i", "--in", "-o", "--out"},
	"auth jwt token": {
		"--log.format", "--log.level",
		"--agent-id", "--role", "--audience", "--duration", "-i", "--in", "-o", "--out",
	},
}

// referenceDefaults are the defaults of cli.md as `--help` shows them. Flags
// with a placeholder (FILE) show it instead of their default, in the
// reference too; TestAuthDefaultFiles checks those defaults by using them.
var referenceDefaults = map[string][]string{
	"proxy": {
		`--log.format="text"`, `--log.level="info"`,
		`--agent-server.listen-address=":4242"`,
		`--agent-server.tls.refresh=0s`,
		`--agent-server.agent.dial-timeout=10s`,
		`--http-proxy.listen-address=":3128"`,
		`--http-proxy.tls.refresh=0s`,
		`--auth.type="noauth"`,
		`--store.type="none"`,
		`--store.memcached.address="localhost:11211"`,
		`--store.memcached.timeout=1s`,
	},
	"agent": {
		`--agent-client.server-address="localhost:4242"`,
		`--agent-client.tls.refresh=0s`,
		`--auth.type="noauth"`,
	},
	"auth key private": {`--algo="ES256"`},
	"auth jwt token":   {`--role="client"`, `--duration=24h`},
}

// usedFlags returns the flag names in args ("--a.b=c" and "--a.b" give
// "--a.b", "-o" gives "-o").
func usedFlags(args []string) []string {
	var names []string
	for _, a := range args {
		if strings.HasPrefix(a, "-") && a != "-" {
			name, _, _ := strings.Cut(a, "=")
			names = append(names, name)
		}
	}
	return names
}

// TestReferenceFlagsAccepted runs every flag of the reference, with a value
// of its type, and checks the command gets past parsing and validation: the
// proxy and the agent start on loopback and exit 0 when their context is
// cancelled, the auth tools write their output. The table is checked to use
// every flag of referenceFlags, so a flag cannot be forgotten.
func TestReferenceFlagsAccepted(t *testing.T) {
	isolate(t)
	f := newFiles(t)
	out := t.TempDir()

	type tc struct {
		name string
		args []string
		// ready is the stderr line that shows a proxy or agent is running;
		// "" for commands that end by themselves.
		ready string
	}
	agent := func(extra ...string) []string {
		// Nothing listens on UDP 127.0.0.1:9; the agent retries until stopped.
		return append([]string{"agent", "--agent-client.server-address=127.0.0.1:9"}, extra...)
	}
	tests := []tc{
		{"proxy defaults", proxyArgs(), proxyReady},
		{"proxy flag and value as two args", []string{"proxy",
			"--agent-server.listen-address", "127.0.0.1:0", "--http-proxy.listen-address", "127.0.0.1:0"}, proxyReady},
		{"proxy log json trace", proxyArgs("--log.format=json", "--log.level=trace"), proxyReady},
		{"proxy log text debug", proxyArgs("--log.format=text", "--log.level=debug"), proxyReady},
		{"proxy log info", proxyArgs("--log.level=info"), proxyReady},
		{"proxy log warn", proxyArgs("--log.level=warn"), "level=WARN"},
		{"proxy agent-server TLS and mTLS", proxyArgs(
			"--agent-server.tls.refresh=1m",
			"--agent-server.tls.file.key="+f.proxyKey,
			"--agent-server.tls.file.cert="+f.proxyCert,
			"--agent-server.tls.file.client-ca="+f.caCert,
			"--agent-server.tls.file.client-crl="+f.crl,
			"--agent-server.agent.dial-timeout=3s",
		), proxyReady},
		{"proxy http-proxy TLS and mTLS", proxyArgs(
			"--http-proxy.tls.enable",
			"--http-proxy.tls.refresh=1m",
			"--http-proxy.tls.file.key="+f.proxyKey,
			"--http-proxy.tls.file.cert="+f.proxyCert,
			"--http-proxy.tls.file.client-ca="+f.caCert,
			"--http-proxy.tls.file.client-crl="+f.crl,
		), proxyReady},
		{"proxy http-proxy TLS encrypted key", proxyArgs(
			"--http-proxy.tls.enable",
			"--http-proxy.tls.file.key="+f.proxyKeyEnc,
			"--http-proxy.tls.file.cert="+f.proxyCert,
			"--http-proxy.tls.key-password="+keyPassword,
		), proxyReady},
		{"proxy host whitelist comma-separated", proxyArgs("--http-proxy.host-whitelist=example.com,*.example.org:443,10.0.0.0/8"), proxyReady},
		{"proxy host whitelist repeated", proxyArgs("--http-proxy.host-whitelist=example.com", "--http-proxy.host-whitelist=127.0.0.1:1000-2000"), proxyReady},
		{"proxy auth noauth", proxyArgs("--auth.type=noauth"), proxyReady},
		{"proxy auth jwt", proxyArgs("--auth.type=jwt", "--auth.jwt.public-key="+f.authPublic, "--auth.jwt.audience=aud"), proxyReady},
		{"proxy store none", proxyArgs(
			"--store.type=none",
			"--store.http-proxy-address=127.0.0.1:3128",
			"--store.memcached.address=localhost:11211",
			"--store.memcached.timeout=2s",
		), proxyReady},

		{"lb defaults", []string{"lb", "--http-proxy.listen-address=127.0.0.1:0"}, proxyReady},
		{"lb every flag", []string{"lb", "--log.format=text", "--log.level=debug",
			"--http-proxy.listen-address", "127.0.0.1:0",
			"--http-proxy.tls.enable", "--http-proxy.tls.refresh=1m",
			"--http-proxy.tls.file.key=" + f.proxyKeyEnc, "--http-proxy.tls.file.cert=" + f.proxyCert,
			"--http-proxy.tls.file.client-ca=" + f.caCert, "--http-proxy.tls.file.client-crl=" + f.crl,
			"--http-proxy.tls.key-password=" + keyPassword,
			"--http-proxy.host-whitelist=10.0.0.0/8,localhost:80",
			"--http-connector.tls.enable", "--http-connector.tls.refresh=1m",
			"--http-connector.tls.insecure-skip-verify", "--http-connector.tls.use-system-pool",
			"--http-connector.tls.file.key=" + f.agentKey, "--http-connector.tls.file.cert=" + f.agentCert,
			"--http-connector.tls.file.root-ca=" + f.caCert, "--http-connector.tls.file.key-password=unused",
			"--auth.type=jwt", "--auth.jwt.public-key=" + f.authPublic, "--auth.jwt.audience=aud",
			"--store.type=memcached", "--store.memcached.address=127.0.0.1:1", "--store.memcached.timeout=2s",
		}, proxyReady},

		{"agent noauth", agent("--auth.type=noauth", "--auth.noauth.agent-id=a1"), agentReady},
		{"agent defaults but the agent ID", []string{"agent", "--auth.noauth.agent-id=a1"}, agentReady},
		{"agent log json debug", agent("--auth.noauth.agent-id=a1", "--log.format=json", "--log.level=debug"), agentReady},
		{"agent host whitelist comma-separated", agent("--auth.noauth.agent-id=a1", "--agent-client.host-whitelist=localhost:80,10.0.0.0/8"), agentReady},
		{"agent host whitelist repeated", agent("--auth.noauth.agent-id=a1", "--agent-client.host-whitelist=localhost", "--agent-client.host-whitelist=*.example.com"), agentReady},
		{"agent mTLS", agent("--auth.noauth.agent-id=a1",
			"--agent-client.tls.refresh=1m",
			"--agent-client.tls.file.key="+f.agentKey,
			"--agent-client.tls.file.cert="+f.agentCert,
			"--agent-client.tls.file.root-ca="+f.caCert,
		), agentReady},
		{"agent insecure skip verify", agent("--auth.noauth.agent-id=a1", "--agent-client.tls.insecure-skip-verify"), agentReady},
		{"agent jwt token", agent("--auth.type=jwt", "--auth.jwt.token="+f.agentToken), agentReady},
		{"agent jwt token file", agent("--auth.type=jwt", "--auth.jwt.token=file:"+f.agentTokenF), agentReady},

		{"auth key private ES256", []string{"auth", "key", "private", "--algo=ES256", "-o", out + "/es.pem"}, ""},
		{"auth key private RS256", []string{"auth", "key", "private", "--algo", "RS256", "--out=" + out + "/rs.pem", "--log.level=debug", "--log.format=json"}, ""},
		{"auth key public short", []string{"auth", "key", "public", "-i", f.authPrivate, "-o", out + "/pub1.pem"}, ""},
		{"auth key public long", []string{"auth", "key", "public", "--in=" + f.authPrivate, "--out=" + out + "/pub2.pem", "--log.format=text", "--log.level=error"}, ""},
		{"auth jwt token short", []string{"auth", "jwt", "token", "--agent-id=4711", "-i", f.authPrivate, "-o", out + "/t1.jwt"}, ""},
		{"auth jwt token long", []string{"auth", "jwt", "token", "--agent-id", "4711", "--role=agent", "--audience=aud",
			"--duration=1h", "--in=" + f.authPrivate, "--out=" + out + "/t2.jwt", "--log.format=json", "--log.level=warn"}, ""},
		{"auth jwt token role client", []string{"auth", "jwt", "token", "--agent-id=4711", "--role=client", "-i", f.authPrivate, "-o", "-"}, ""},
	}

	used := map[string]map[string]bool{}
	for _, tc := range tests {
		cmd := strings.Join(slices.DeleteFunc(slices.Clone(tc.args), func(a string) bool {
			return strings.HasPrefix(a, "-") || !regexp.MustCompile(`^[a-z]+$`).MatchString(a)
		}), " ")
		if used[cmd] == nil {
			used[cmd] = map[string]bool{}
		}
		for _, name := range usedFlags(tc.args) {
			used[cmd][name] = true
		}
	}
	for cmd, names := range referenceFlags {
		for _, name := range names {
			if !used[cmd][name] {
				t.Errorf("the table never uses %s %s", cmd, name)
			}
		}
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.ready == "" {
				r := runCmd(t, "", waitTimeout, tc.args...)
				if r.code != 0 {
					t.Fatalf("%q exited with %d; stderr:\n%s", tc.args, r.code, r.stderr)
				}
				return
			}
			r := start(t, tc.args...)
			r.waitFor(tc.ready)
			if code := r.stop(); code != 0 {
				t.Fatalf("%q exited with %d after cancel; stderr:\n%s", tc.args, code, r.stderr)
			}
		})
	}
}

// TestProxyFlagsTakeEffect checks, from the proxy's log, that accepted flags
// are not only parsed but used.
func TestProxyFlagsTakeEffect(t *testing.T) {
	isolate(t)
	f := newFiles(t)
	r := start(t, proxyArgs(
		"--http-proxy.host-whitelist=example.com,10.0.0.0/8",
		"--http-proxy.host-whitelist=localhost:80",
		"--auth.type=jwt", "--auth.jwt.public-key="+f.authPublic,
		"--http-proxy.tls.enable", "--http-proxy.tls.file.key="+f.proxyKey, "--http-proxy.tls.file.cert="+f.proxyCert,
	)...)
	line := r.waitFor(proxyReady)
	if code := r.stop(); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, r.stderr)
	}
	for key, want := range map[string]string{
		"scheme":    "https",
		"auth":      "jwt",
		"allowlist": "example.com,10.0.0.0/8,localhost:80",
	} {
		if got := logAttr(t, line, key); got != want {
			t.Errorf("%s=%q, want %q in %s", key, got, want, line)
		}
	}
	if addr := logAttr(t, line, "address"); !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Errorf("address=%q, want 127.0.0.1:port in %s", addr, line)
	}
}

// TestStoreMemcachedSettings: with --store.type=memcached the proxy starts
// (memcached being down is not fatal: it serves its own agents) and
// registers the address it was told, or its listen address.
func TestStoreMemcachedSettings(t *testing.T) {
	isolate(t)
	for _, tc := range []struct {
		args []string
		want string // route= in the log; "" means the listen port on this host
	}{
		{[]string{"--store.http-proxy-address=proxy-1.example:3128"}, "proxy-1.example:3128"},
		{nil, ""},
	} {
		r := start(t, proxyArgs(append([]string{"--store.type=memcached", "--store.memcached.address=127.0.0.1:1", "--store.ttl=9s"}, tc.args...)...)...)
		line := r.waitFor(`msg="route store"`)
		if code := r.stop(); code != 0 {
			t.Fatalf("exit %d; stderr:\n%s", code, r.stderr)
		}
		got := logAttr(t, line, "route")
		if tc.want != "" && got != tc.want || tc.want == "" && !strings.Contains(got, ":") {
			t.Errorf("route=%q, want %q in %s", got, tc.want, line)
		}
		if ttl := logAttr(t, line, "ttl"); ttl != "9s" {
			t.Errorf("ttl=%q, want 9s", ttl)
		}
	}
	r := runCmd(t, "", 5*time.Second, proxyArgs("--store.type=memcached", "--store.ttl=1s")...)
	if r.code == 0 || !strings.Contains(r.stderr, "--store.ttl") {
		t.Errorf("--store.ttl=1s: exit %d, stderr %q; want a refusal naming --store.ttl", r.code, r.stderr)
	}
}

// TestHelp: `--help` of every command exits 0 and lists the reference's
// flags with the reference's defaults.
func TestHelp(t *testing.T) {
	isolate(t)
	for cmd, names := range referenceFlags {
		t.Run(cmd, func(t *testing.T) {
			for _, help := range []string{"--help", "-h"} {
				args := append(strings.Fields(cmd), help)
				r := runCmd(t, "", waitTimeout, args...)
				if r.code != 0 {
					t.Fatalf("%q exited with %d; stderr:\n%s", args, r.code, r.stderr)
				}
				if !strings.Contains(r.stdout, "Usage: reverse-http "+cmd) {
					t.Errorf("%q: no usage line for %q:\n%s", args, cmd, r.stdout)
				}
				for _, name := range names {
					// A flag is listed as "--name=" or "--name " (bool), a short
					// one as "-o, --out".
					re := regexp.MustCompile(`(^|[\s,])` + regexp.QuoteMeta(name) + `[=,\s]`)
					if !re.MatchString(r.stdout) {
						t.Errorf("%q does not list %s:\n%s", args, name, r.stdout)
					}
				}
				for _, d := range referenceDefaults[cmd] {
					if !strings.Contains(r.stdout, d) {
						t.Errorf("%q does not show the reference's default %s", args, d)
					}
				}
			}
		})
	}
}

// TestInvalidSettings: a bad setting ends the command with a non-zero status
// and one line on stderr that names the setting, so that a user (or a
// supervisor's log) sees at once what to fix. Long-running commands get a
// context that ends after a few seconds: one that starts despite the bad
// setting returns 0 then, and the test fails.
func TestInvalidSettings(t *testing.T) {
	dir := isolate(t)
	f := newFiles(t)
	badJSON := writeFile(t, dir, "bad.json", `{"agent_id": "x",`)
	badYAML := writeFile(t, dir, "bad.yaml", "auth:\n  jwt: [\n")
	listJSON := writeFile(t, dir, "list.json", `["agent_id", "x"]`)
	listYAML := writeFile(t, dir, "list.yaml", "- agent_id\n- x\n")
	numberID := writeFile(t, dir, "number.yaml", "auth:\n  jwt:\n    token:\n      agent-id: 4711\n")
	agent := func(extra ...string) []string {
		return append([]string{"agent", "--agent-client.server-address=127.0.0.1:9"}, extra...)
	}
	token := func(extra ...string) []string {
		return append([]string{"auth", "jwt", "token", "-i", f.authPrivate, "-o", "-"}, extra...)
	}

	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string // must appear in stderr
	}{
		// Unknown enum values.
		{"proxy auth type", nil, proxyArgs("--auth.type=foo"), "--auth.type"},
		{"agent auth type", nil, agent("--auth.type=foo", "--auth.noauth.agent-id=a1"), "--auth.type"},
		{"log level", nil, proxyArgs("--log.level=loud"), "--log.level"},
		{"log format", nil, proxyArgs("--log.format=xml"), "--log.format"},
		{"LOG_LEVEL", map[string]string{"LOG_LEVEL": "loud"}, proxyArgs(), "log.level"},
		{"LOG_FORMAT", map[string]string{"LOG_FORMAT": "xml"}, token("--agent-id=a1"), "log.format"},
		{"store type", nil, proxyArgs("--store.type=redis"), "--store.type"},
		{"key algo", nil, []string{"auth", "key", "private", "--algo=HS256", "-o", "-"}, "--algo"},
		{"token role", nil, token("--agent-id=a1", "--role=admin"), "--role"},

		// Durations.
		{"dial timeout not a duration", nil, proxyArgs("--agent-server.agent.dial-timeout=abc"), "--agent-server.agent.dial-timeout"},
		{"token duration not a duration", nil, token("--agent-id=a1", "--duration=forever"), "--duration"},
		{"token duration zero", nil, token("--agent-id=a1", "--duration=0"), "--duration"},
		{"token duration negative", nil, token("--agent-id=a1", "--duration=-1h"), "--duration"},
		{"agent-server tls refresh negative", nil, proxyArgs("--agent-server.tls.refresh=-1s"), "--agent-server.tls.refresh"},
		{"dial timeout negative", nil, proxyArgs("--agent-server.agent.dial-timeout=-1s"), "--agent-server.agent.dial-timeout"},
		{"http-proxy tls refresh negative", nil, proxyArgs("--http-proxy.tls.refresh=-1s"), "--http-proxy.tls.refresh"},
		{"memcached timeout negative", nil, proxyArgs("--store.memcached.timeout=-1s"), "--store.memcached.timeout"},
		{"agent-client tls refresh negative", nil, agent("--auth.noauth.agent-id=a1", "--agent-client.tls.refresh=-1s"), "--agent-client.tls.refresh"},

		// Allowlist patterns.
		{"proxy whitelist bad CIDR", nil, proxyArgs("--http-proxy.host-whitelist=10.0.0.0/33"), "--http-proxy.host-whitelist"},
		{"proxy whitelist bad port", nil, proxyArgs("--http-proxy.host-whitelist=example.com:0"), "--http-proxy.host-whitelist"},
		{"agent whitelist bare star", nil, agent("--auth.noauth.agent-id=a1", "--agent-client.host-whitelist=*"), "--agent-client.host-whitelist"},

		// Auth files.
		{"clients file missing", nil, proxyArgs("--auth.clients.file=/nonexistent"), "--auth.clients.file"},
		{"clients file malformed", nil, proxyArgs("--auth.clients.file=" + writeFile(t, dir, "clients.yaml", "clients: [\n")), "--auth.clients.file"},
		{"clients file unknown field", nil, proxyArgs("--auth.clients.file=" + writeFile(t, dir, "clients2.yaml", "clients:\n  - name: a\n    secret: x\n")), "--auth.clients.file"},
		{"revoked without jwt", nil, proxyArgs("--auth.jwt.revoked=" + writeFile(t, dir, "revoked", "a\n")), "--auth.jwt.revoked"},
		{"revoked malformed", nil, proxyArgs("--auth.type=jwt", "--auth.jwt.public-key="+f.authPublic, "--auth.jwt.revoked="+writeFile(t, dir, "revoked2", "a b\n")), "--auth.jwt.revoked"},
		{"agents claim empty", nil, proxyArgs("--auth.jwt.agents-claim="), "--auth.jwt.agents-claim"},

		// Key, certificate and token files.
		{"jwt public key missing", nil, proxyArgs("--auth.type=jwt", "--auth.jwt.public-key=/nonexistent"), "--auth.jwt.public-key"},
		{"jwt public key default missing", nil, proxyArgs("--auth.type=jwt"), "--auth.jwt.public-key"},
		{"jwt public key is a private key", nil, proxyArgs("--auth.type=jwt", "--auth.jwt.public-key="+f.authPrivate), "--auth.jwt.public-key"},
		{"agent-server cert missing", nil, proxyArgs("--agent-server.tls.file.cert=/nonexistent", "--agent-server.tls.file.key=/nonexistent"), "--agent-server.tls.file.cert"},
		{"agent-server key missing", nil, proxyArgs("--agent-server.tls.file.cert="+f.proxyCert, "--agent-server.tls.file.key=/nonexistent"), "--agent-server.tls.file.key"},
		{"agent-server cert without key", nil, proxyArgs("--agent-server.tls.file.cert=" + f.proxyCert), "--agent-server.tls.file.key"},
		{"agent-server client CA without cert", nil, proxyArgs("--agent-server.tls.file.client-ca=" + f.caCert), "--agent-server.tls.file.client-ca"},
		{"agent ID from cert without client CA", nil, proxyArgs("--agent-server.tls.agent-id-from-cert=cn"),
			"--agent-server.tls.agent-id-from-cert needs --agent-server.tls.file.client-ca"},
		{"agent ID from cert with server cert but no client CA", nil, proxyArgs("--agent-server.tls.agent-id-from-cert=san",
			"--agent-server.tls.file.cert="+f.proxyCert, "--agent-server.tls.file.key="+f.proxyKey), "--agent-server.tls.agent-id-from-cert needs --agent-server.tls.file.client-ca"},
		{"agent ID from cert unknown", nil, proxyArgs("--agent-server.tls.agent-id-from-cert=subject"), "--agent-server.tls.agent-id-from-cert"},
		{"http-proxy TLS without files", nil, proxyArgs("--http-proxy.tls.enable"), "--http-proxy.tls.file.cert"},
		{"http-proxy cert missing", nil, proxyArgs("--http-proxy.tls.enable", "--http-proxy.tls.file.cert=/nonexistent", "--http-proxy.tls.file.key="+f.proxyKey), "--http-proxy.tls.file.cert"},
		{"http-proxy encrypted key without password", nil, proxyArgs("--http-proxy.tls.enable",
			"--http-proxy.tls.file.cert="+f.proxyCert, "--http-proxy.tls.file.key="+f.proxyKeyEnc), "--http-proxy.tls.key-password"},
		{"http-proxy wrong key password", nil, proxyArgs("--http-proxy.tls.enable",
			"--http-proxy.tls.file.cert="+f.proxyCert, "--http-proxy.tls.file.key="+f.proxyKeyEnc, "--http-proxy.tls.key-password=wrong"), "--http-proxy.tls.key-password"},
		{"agent-client cert missing", nil, agent("--auth.noauth.agent-id=a1", "--agent-client.tls.file.cert=/nonexistent", "--agent-client.tls.file.key=/nonexistent"), "--agent-client.tls.file.cert"},
		{"agent-client root CA missing", nil, agent("--auth.noauth.agent-id=a1", "--agent-client.tls.file.root-ca=/nonexistent"), "--agent-client.tls.file.root-ca"},
		{"agent token file missing", nil, agent("--auth.type=jwt", "--auth.jwt.token=file:/nonexistent"), "--auth.jwt.token"},
		{"agent token missing", nil, agent("--auth.type=jwt"), "--auth.jwt.token"},
		{"token key missing", nil, []string{"auth", "jwt", "token", "--agent-id=a1", "-i", "/nonexistent", "-o", "-"}, "--in"},
		{"token key not a key", nil, []string{"auth", "jwt", "token", "--agent-id=a1", "-i", f.caCert, "-o", "-"}, "--in"},
		{"public key input missing", nil, []string{"auth", "key", "public", "-i", "/nonexistent", "-o", "-"}, "--in"},

		// Agent IDs.
		{"agent without agent ID", nil, agent(), "--auth.noauth.agent-id"},
		{"agent ID with a newline", nil, agent("--auth.noauth.agent-id=a\nb"), "--auth.noauth.agent-id"},
		{"token without agent ID", nil, token(), "--agent-id"},
		{"token empty agent ID", nil, token("--agent-id="), "--agent-id"},

		// Listen and server addresses that can never work.
		{"agent-server address without port", nil, proxyArgs("--agent-server.listen-address=bogus"), "--agent-server.listen-address"},
		{"http-proxy address without port", nil, proxyArgs("--http-proxy.listen-address=bogus"), "--http-proxy.listen-address"},
		{"agent server address without port", nil, agent("--auth.noauth.agent-id=a1", "--agent-client.server-address=bogus"), "--agent-client.server-address"},

		// Config files.
		{"config missing", nil, proxyArgs("--config", "/nonexistent"), "--config"},
		{"config= missing", nil, proxyArgs("--config=/nonexistent"), "--config"},
		{"config bad JSON", nil, token("--agent-id=a1", "--config", badJSON), badJSON},
		{"config bad YAML", nil, token("--agent-id=a1", "--config", badYAML), badYAML},
		{"config JSON not an object", nil, token("--agent-id=a1", "--config", listJSON), listJSON},
		{"config YAML not a map", nil, token("--agent-id=a1", "--config", listYAML), listYAML},
		{"config number for a string", nil, token("--config", numberID), "--agent-id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			r := runCmd(t, "", 5*time.Second, tc.args...)
			if r.code == 0 {
				t.Fatalf("%q exited 0; stderr:\n%s", tc.args, r.stderr)
			}
			msg := strings.TrimSuffix(r.stderr, "\n")
			if msg == "" || strings.Contains(msg, "\n") {
				t.Errorf("%q: want one line on stderr, got %d:\n%s", tc.args, strings.Count(r.stderr, "\n"), r.stderr)
			}
			if !strings.Contains(r.stderr, tc.want) {
				t.Errorf("%q: stderr does not name %s:\n%s", tc.args, tc.want, r.stderr)
			}
			if r.stdout != "" {
				t.Errorf("%q: wrote to stdout on error:\n%s", tc.args, r.stdout)
			}
		})
	}
}
