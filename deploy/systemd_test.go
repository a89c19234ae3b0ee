package deploy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// unit reads a systemd unit into section -> key -> values (a key may repeat).
func unit(t *testing.T, path string) map[string]map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: bad line %q", rel(path), line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

// TestSystemdUnits checks the hardening each unit promises and its
// command line, and runs `systemd-analyze verify` on it: that fails on a
// unit systemd would refuse and prints any key it does not know, which
// this test counts as a failure too.
func TestSystemdUnits(t *testing.T) {
	units := glob(t, "deploy/systemd/reverse-http-*.service")
	roles := map[string]bool{}
	for _, path := range units {
		role := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(path), "reverse-http-"), ".service")
		roles[role] = true
		t.Run(role, func(t *testing.T) {
			u := unit(t, path)
			svc := u["Service"]
			for key, want := range map[string]string{
				"Type":                    "simple",
				"DynamicUser":             "yes",
				"NoNewPrivileges":         "yes",
				"ProtectSystem":           "strict",
				"ProtectHome":             "yes",
				"PrivateTmp":              "yes",
				"CapabilityBoundingSet":   "",
				"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
			} {
				if got := svc[key]; len(got) != 1 || got[0] != want {
					t.Errorf("[Service] %s=%q, want %q", key, got, want)
				}
			}
			if got := svc["SystemCallFilter"]; len(got) == 0 || got[0] != "@system-service" {
				t.Errorf("[Service] SystemCallFilter=%q, want @system-service first", got)
			}
			exec := svc["ExecStart"]
			if len(exec) != 1 {
				t.Fatalf("ExecStart=%q, want one", exec)
			}
			args := strings.Fields(exec[0])
			if args[0] != "/usr/local/bin/reverse-http" || len(args) < 2 || args[1] != role {
				t.Errorf("ExecStart=%q, want /usr/local/bin/reverse-http %s ...", exec[0], role)
			}
			checkArgs(t, "ExecStart", args[1:])
			if !strings.Contains(exec[0], "--config=/etc/reverse-http/config.yaml") {
				t.Errorf("ExecStart=%q: want --config=/etc/reverse-http/config.yaml", exec[0])
			}
			if u["Install"]["WantedBy"] == nil {
				t.Error("no [Install] WantedBy=")
			}
			// The readiness check the unit's comment gives is on the admin
			// address the example config sets for the role.
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			section, _ := exampleConfig(t)[role].(map[string]any)
			want := "curl -fsS http://" + fmt.Sprint(section["admin.listen-address"]) + "/readyz"
			if !strings.Contains(string(b), want) {
				t.Errorf("the comment does not say how to check readiness: want %q", want)
			}
		})
	}
	for _, role := range []string{"proxy", "agent", "lb"} {
		if !roles[role] {
			t.Errorf("no unit for %s", role)
		}
	}

	t.Run("systemd-analyze verify", func(t *testing.T) {
		tool := needTool(t, "systemd-analyze")
		// verify wants ExecStart's program to exist: point the copies at the
		// binary built for this test, and change nothing else.
		dir := t.TempDir()
		var copies []string
		for _, path := range units {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			b = []byte(strings.ReplaceAll(string(b), "/usr/local/bin/reverse-http", binary(t)))
			c := filepath.Join(dir, filepath.Base(path))
			if err := os.WriteFile(c, b, 0o644); err != nil {
				t.Fatal(err)
			}
			copies = append(copies, c)
		}
		out, err := exec.Command(tool, append([]string{"verify"}, copies...)...).CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	})
}

// exampleConfig reads deploy/systemd/config.yaml.
func exampleConfig(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy/systemd/config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatalf("config.yaml: %v", err)
	}
	return cfg
}

// TestSystemdConfigKeys checks that every key of the example config.yaml is
// a flag of its role (reverse-http ignores unknown keys in config files, so
// a typo there would go unnoticed) and that each credential path it names
// is loaded by that role's unit.
func TestSystemdConfigKeys(t *testing.T) {
	cfg := exampleConfig(t)
	global := flags(t, "proxy") // log.* are the same for every command
	cred := regexp.MustCompile(`^/run/credentials/(reverse-http-[a-z]+\.service)/(.+)$`)
	for key, v := range cfg {
		section, ok := v.(map[string]any)
		if !ok {
			if _, ok := global[key]; !ok || !strings.HasPrefix(key, "log.") {
				t.Errorf("top-level key %q is not a global flag (log.*)", key)
			}
			continue
		}
		if !commands[key] {
			t.Errorf("section %q is not a reverse-http command", key)
			continue
		}
		known := flags(t, key)
		for k, val := range section {
			if _, ok := known[k]; !ok {
				t.Errorf("%s: %q is not a flag of reverse-http %s", key, k, key)
			}
			if alias, ok := aliases[k]; ok {
				t.Errorf("%s: %q is kept for old configs: use %q", key, k, alias)
			}
			s, _ := val.(string)
			if m := cred.FindStringSubmatch(s); m != nil {
				u := unit(t, filepath.Join(repoRoot, "deploy/systemd", m[1]))
				found := false
				for _, lc := range u["Service"]["LoadCredential"] {
					found = found || strings.HasPrefix(lc, m[2]+":")
				}
				if !found || m[1] != "reverse-http-"+key+".service" {
					t.Errorf("%s: %s=%s: no LoadCredential=%s:... in %s", key, k, s, m[2], m[1])
				}
			}
		}
	}
}

// TestSystemdConfigRuns starts a proxy and an agent from the example
// config.yaml, as the units do (--config), with its addresses moved to free
// loopback ports and its credential paths to a fresh CA, and waits until
// the agent's /readyz says it is connected: the file is not only
// well-formed, it works, and the units' readiness check is the right one.
func TestSystemdConfigRuns(t *testing.T) {
	bin := binary(t)
	dir := t.TempDir()
	if out, err := exec.Command(bin, "certs", "--dir", dir).CombinedOutput(); err != nil {
		t.Fatalf("certs: %v\n%s", err, out)
	}
	// Kept open while the test runs so no other process takes them.
	tcp := func() (string, func()) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return ln.Addr().String(), func() { ln.Close() }
	}
	// The proxy listens for agents on this port over UDP (QUIC) and TCP
	// (the TCP fallback): take one free on both.
	var udp net.PacketConn
	var udpTCP net.Listener
	for i := 0; ; i++ {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if udpTCP, err = net.Listen("tcp", c.LocalAddr().String()); err == nil {
			udp = c
			break
		}
		c.Close()
		if i == 20 {
			t.Fatalf("no port free on both UDP and TCP: %v", err)
		}
	}
	agentAddr := udp.LocalAddr().String()
	httpAddr, closeHTTP := tcp()
	proxyAdmin, closePM := tcp()
	agentAdmin, closeAM := tcp()

	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy/systemd/config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for old, repl := range map[string]string{
		"/run/credentials/reverse-http-proxy.service/": dir + "/",
		"/run/credentials/reverse-http-agent.service/": dir + "/",
		`"proxy.example.com:4242"`:                     `"` + agentAddr + `"`,
		`agent-server.listen-address: ":4242"`:         `agent-server.listen-address: "` + agentAddr + `"`,
		`http-proxy.listen-address: ":3128"`:           `http-proxy.listen-address: "` + httpAddr + `"`,
		`"127.0.0.1:9090"`:                             `"` + proxyAdmin + `"`,
		`"127.0.0.1:9092"`:                             `"` + agentAdmin + `"`,
	} {
		if !strings.Contains(s, old) {
			t.Fatalf("config.yaml has no %q any more: update this test", old)
		}
		s = strings.ReplaceAll(s, old, repl)
	}
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := func(role string, release ...func()) *exec.Cmd {
		for _, r := range release {
			r()
		}
		cmd := exec.CommandContext(ctx, bin, role, "--config="+cfg)
		cmd.Env = append(os.Environ(), "HOME="+dir) // no ~/.reverse-http.* of the user
		log, err := os.Create(filepath.Join(dir, role+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = log, log
		cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Signal(os.Interrupt)
			cmd.Wait()
			if t.Failed() {
				b, _ := os.ReadFile(log.Name())
				t.Logf("%s log:\n%s", role, b)
			}
		})
		return cmd
	}
	start("proxy", func() { udp.Close(); udpTCP.Close() }, closeHTTP, closePM)
	get := func(addr, path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	ready := func(addr string) func() bool {
		return func() bool {
			code, body := get(addr, "/readyz")
			return code == http.StatusOK && body == "ready"
		}
	}
	waitFor(t, ctx, "the proxy's /readyz", ready(proxyAdmin))
	start("agent", closeAM)
	waitFor(t, ctx, "agent 4711 connected (its /readyz)", ready(agentAdmin))
	waitFor(t, ctx, "reverse_http_agents_connected 1 on the proxy", func() bool {
		_, body := get(proxyAdmin, "/metrics")
		return strings.Contains(body, "\nreverse_http_agents_connected 1\n")
	})
	for _, addr := range []string{proxyAdmin, agentAdmin} {
		if code, body := get(addr, "/healthz"); code != http.StatusOK || body != "ok" {
			t.Errorf("%s/healthz: %d %q", addr, code, body)
		}
		// config.yaml says the profiler is served only with admin.pprof.
		if code, _ := get(addr, "/debug/pprof/"); code != http.StatusNotFound {
			t.Errorf("%s/debug/pprof/: %d, want 404 without admin.pprof", addr, code)
		}
	}
}

func waitFor(t *testing.T, ctx context.Context, what string, ok func() bool) {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !ok() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}
