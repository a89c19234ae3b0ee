package cli

import (
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/alecthomas/kong"
)

// reloadEnv parses args as Main does and returns the Env a command's
// reload works with, and the parsed CLI.
func reloadEnv(t *testing.T, args []string) (*Env, *CLI) {
	t.Helper()
	t.Setenv("HOME", t.TempDir())
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, EnvPrefix) || name == "LOG_LEVEL" || name == "LOG_FORMAT" {
			t.Setenv(name, "")
			os.Unsetenv(name)
		}
	}
	cli, kctx, err := reparse(args)
	if err != nil {
		t.Fatal(err)
	}
	level := new(slog.LevelVar)
	level.Set(cli.Log.level())
	return &Env{Level: level, parsed: kctx, reparse: func() (*CLI, *kong.Context, error) { return reparse(args) }}, cli
}

func writeConfig(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// The agent's reload: allowlist and log level apply, a changed server
// address needs a restart, and a bad pattern or value is refused with
// nothing applied.
func TestAgentReload(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	writeConfig(t, cfg, "agent:\n  agent-client.host-whitelist: [a.test:443]\n")
	e, cli := reloadEnv(t, []string{"agent", "--config", cfg, "--auth.noauth.agent-id", "4711"})
	load := cli.Agent.reloader(e, nil)

	u, err := load()
	if err != nil || len(u.Changed) != 0 || len(u.Restart) != 0 {
		t.Fatalf("unchanged file: %+v, %v; want nothing changed", u, err)
	}
	if !u.Allow.Allowed("a.test", 443) || u.Allow.Allowed("b.test", 443) {
		t.Fatalf("allowlist %s", u.Allow)
	}

	writeConfig(t, cfg, "log.level: debug\nagent:\n  agent-client.host-whitelist: [b.test:443]\n  agent-client.server-address: elsewhere:4242\n")
	if u, err = load(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"--log.level", "--agent-client.host-whitelist"}; !slices.Equal(u.Changed, want) {
		t.Fatalf("changed %v, want %v", u.Changed, want)
	}
	if want := []string{"--agent-client.server-address"}; !slices.Equal(u.Restart, want) {
		t.Fatalf("restart %v, want %v", u.Restart, want)
	}
	if !u.Allow.Allowed("b.test", 443) || u.Allow.Allowed("a.test", 443) {
		t.Fatalf("allowlist %s", u.Allow)
	}
	if e.Level.Level() != slog.LevelInfo {
		t.Fatal("the level changed before Apply")
	}
	u.Apply()
	if e.Level.Level() != slog.LevelDebug {
		t.Fatalf("level %v after Apply, want debug", e.Level.Level())
	}
	// Applied: the same file changes nothing more, but the address still
	// waits for a restart.
	if u, err = load(); err != nil || len(u.Changed) != 0 || !slices.Equal(u.Restart, []string{"--agent-client.server-address"}) {
		t.Fatalf("same file again: %+v, %v", u, err)
	}

	for _, bad := range []struct{ content, want string }{
		{"log.level: info\nagent:\n  agent-client.host-whitelist: [10.0.0.0/33]\n", "--agent-client.host-whitelist"},
		{"log.level: loud\n", "log.level"},
		{"agent:\n  agent-client.max-streams: 0\n", "--agent-client.max-streams"},
	} {
		writeConfig(t, cfg, bad.content)
		_, err := load()
		t.Logf("refused: %v", err)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: %v, want an error naming %s", bad.content, err, bad.want)
		}
	}
	if e.Level.Level() != slog.LevelDebug {
		t.Fatal("a refused reload changed the level")
	}
	os.Remove(cfg)
	if _, err := load(); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Errorf("config file gone: %v, want an error naming --config", err)
	}
}
