package cli_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzConfigFile feeds arbitrary bytes to both config loaders through
// cli.Main, with a quick command whose inputs and outputs are pinned by flags
// (flags override files, so a fuzzed file cannot redirect them). Whatever the
// file holds, cli.Main must not panic, and must either succeed or explain
// itself on stderr.
func FuzzConfigFile(f *testing.F) {
	isolate(f)
	key := newFiles(f).authPrivate
	for _, seed := range []string{
		`{"agent_id": "seed"}`,
		`{"agentId": "seed", "role": "agent", "audience": "aud", "duration": "1h"}`,
		`{"log": {"level": "debug", "format": "json"}, "duration": "90m"}`,
		`{"log.level": "trace", "role": "client"}`,
		"auth:\n  jwt:\n    token:\n      agent-id: seed\n      role: agent\n      duration: 2h\n",
		"auth-jwt-token-agent-id: seed\nlog.level: warn\n",
		"log.format: json\nproxy:\n  http-proxy.host-whitelist: [a, b]\n",
		"auth:\n  jwt:\n    token:\n      agent-id: 4711\n",
		`{"duration": 5}`,
		`{"role": ["agent"]}`,
		`{"help": true}`,
		"auth: {jwt: {token: {duration: 1.5, audience: [a, b]}}}\n",
		"? [a]\n: b\n",
		"a: &x [*x]\n",
		"",
		"{",
		"- a\n- b\n",
		"null",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		for _, name := range []string{"c.json", "c.yaml"} {
			cfg := filepath.Join(dir, name)
			if err := os.WriteFile(cfg, data, 0o600); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(dir, name+".jwt")
			r := runCmd(t, "", 10*time.Second,
				"auth", "jwt", "token", "--agent-id", "x", "--config", cfg, "-i", key, "-o", out)
			if r.code != 0 && !strings.Contains(r.stderr, "error") {
				t.Fatalf("%s: exit %d without an error message; stderr: %q", name, r.code, r.stderr)
			}
			if r.code == 0 && r.stdout == "" { // not --help
				if tok, err := os.ReadFile(out); err != nil || strings.Count(string(tok), ".") != 2 {
					t.Fatalf("%s: exit 0 but no token in %s: %q, %v", name, out, tok, err)
				}
			}
		}
	})
}
