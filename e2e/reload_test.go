package e2e

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// reloadTimeout bounds the wait for a reload's log line after SIGHUP.
const reloadTimeout = 10 * time.Second

// sighup sends SIGHUP to p and waits for one more line msg with kv. It
// returns that line.
func sighup(t *testing.T, p *process, msg string, kv ...string) logLine {
	t.Helper()
	n := p.count(msg, kv...)
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, reloadTimeout, n+1, msg, kv...)
	lines := p.lines(msg, kv...)
	return lines[len(lines)-1]
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	// Through a temporary file and a rename, as an editor or a config
	// management tool does: a SIGHUP never reads half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// connectStatus opens a CONNECT tunnel and returns its status; a 200
// tunnel is closed.
func connectStatus(t *testing.T, addr, target, auth string) int {
	t.Helper()
	tn, err := dialConnect(addr, target, auth, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tn.Close()
	return tn.resp.StatusCode
}

// echoes checks that the tunnel still carries bytes both ways.
func echoes(t *testing.T, tn *tunnel, msg string) {
	t.Helper()
	if _, err := tn.Write([]byte(msg)); err != nil {
		t.Fatalf("write to the open tunnel: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(tn, got); err != nil || string(got) != msg {
		t.Fatalf("open tunnel echoed %q, %v; want %q", got, err, msg)
	}
}

// TestReload: proxy and agent read their config files again on SIGHUP.
// The agent's new allowlist denies new tunnels while an open one keeps
// moving bytes; the proxy's log level changes; an invalid allowlist is
// refused with one line and the previous one stays in force.
func TestReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	kept, denied := startEcho(t), startEcho(t)
	proxyConf := filepath.Join(dir, "proxy.yaml")
	agentConf := filepath.Join(dir, "agent.yaml")
	writeFile(t, proxyConf, "log.level: info\n")
	agentYAML := func(patterns string) string {
		return "agent:\n  agent-client.host-whitelist: [" + patterns + "]\n"
	}
	writeFile(t, agentConf, agentYAML(kept.addr+", "+denied.addr))

	p := startProxy(t, "--config="+proxyConf)
	a := startAgent(t, p, "4711", "--config="+agentConf)
	auth := basicAuth("4711", "noauth")
	open := mustConnect(t, p.httpAddr, denied.addr, auth)
	defer open.Close()
	echoes(t, open, "before the reload")

	// Nothing changed yet.
	sighup(t, a, "configuration reloaded: nothing changed")

	writeFile(t, agentConf, agentYAML(kept.addr))
	writeFile(t, proxyConf, "log.level: debug\n")
	var took []string
	l := sighup(t, a, "configuration reloaded")
	if l["changed"] != "--agent-client.host-whitelist" {
		t.Errorf("agent: changed=%q, want --agent-client.host-whitelist", l["changed"])
	}
	took = append(took, "agent "+l["took"])
	l = sighup(t, p.process, "configuration reloaded")
	if l["changed"] != "--log.level" {
		t.Errorf("proxy: changed=%q, want --log.level", l["changed"])
	}
	took = append(took, "proxy "+l["took"])

	if got := connectStatus(t, p.httpAddr, denied.addr, auth); got != http.StatusForbidden {
		t.Errorf("new tunnel to the now denied %s: %d, want 403", denied.addr, got)
	}
	if got := connectStatus(t, p.httpAddr, kept.addr, auth); got != http.StatusOK {
		t.Errorf("new tunnel to the allowed %s: %d, want 200", kept.addr, got)
	}
	echoes(t, open, "after the reload")

	// An invalid pattern: one line naming the flag, the allowlist in force
	// stays.
	writeFile(t, agentConf, agentYAML("10.0.0.0/33"))
	l = sighup(t, a, "configuration reload refused, keeping the previous configuration")
	if !strings.Contains(l["error"], "--agent-client.host-whitelist") || l["level"] != "ERROR" {
		t.Errorf("refusal line %v: want level ERROR and an error naming --agent-client.host-whitelist", l)
	}
	if n := a.count("configuration reload refused, keeping the previous configuration"); n != 1 {
		t.Errorf("%d refusal lines, want 1", n)
	}
	if got := connectStatus(t, p.httpAddr, denied.addr, auth); got != http.StatusForbidden {
		t.Errorf("after the refused reload, %s: %d, want 403 (the previous allowlist)", denied.addr, got)
	}
	if got := connectStatus(t, p.httpAddr, kept.addr, auth); got != http.StatusOK {
		t.Errorf("after the refused reload, %s: %d, want 200 (the previous allowlist)", kept.addr, got)
	}
	echoes(t, open, "after the refused reload")

	// A setting that needs a restart: warned, the rest applies.
	writeFile(t, agentConf, agentYAML(kept.addr+", "+denied.addr)+"  agent-client.max-streams: 50\n")
	l = sighup(t, a, "configuration reloaded")
	if l["changed"] != "--agent-client.host-whitelist" {
		t.Errorf("agent: changed=%q, want --agent-client.host-whitelist", l["changed"])
	}
	if a.count("setting --agent-client.max-streams changed on reload: restart to apply") != 1 {
		t.Error("no restart warning for --agent-client.max-streams")
	}
	if got := connectStatus(t, p.httpAddr, denied.addr, auth); got != http.StatusOK {
		t.Errorf("allowed again, %s: %d, want 200", denied.addr, got)
	}
	echoes(t, open, "at the end")
	if n := p.count("agent disconnected"); n != 0 {
		t.Errorf("the agent disconnected %d times during the reloads", n)
	}
	t.Logf("reload took: %s", strings.Join(took, ", "))
}

// TestReloadJWTKey: the proxy's public key file is replaced and SIGHUP
// rotates it: a token of the new key works, one of the old key is
// refused, and the agent connected with the old key stays.
func TestReloadJWTKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	oldPriv, newPriv := filepath.Join(dir, "old.pem"), filepath.Join(dir, "new.pem")
	oldPub, newPub := filepath.Join(dir, "old-pub.pem"), filepath.Join(dir, "new-pub.pem")
	pub := filepath.Join(dir, "pub.pem")
	for _, k := range [][2]string{{oldPriv, oldPub}, {newPriv, newPub}} {
		runTool(t, "auth", "key", "private", "-o", k[0])
		runTool(t, "auth", "key", "public", "-i", k[0], "-o", k[1])
	}
	copyFile := func(from, to string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, to, string(b))
	}
	copyFile(oldPub, pub)
	token := func(role, key string) string {
		file := filepath.Join(dir, role+"-"+filepath.Base(key)+".jwt")
		runTool(t, "auth", "jwt", "token", "--agent-id", "4711", "--role", role, "--duration", "1h", "-i", key, "-o", file)
		return file
	}
	read := func(file string) string {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	echo := startEcho(t)
	p := startProxy(t, "--auth.type=jwt", "--auth.jwt.public-key="+pub)
	startAgentArgs(t, p, "4711", append(agentArgs(p), "--auth.type=jwt", "--auth.jwt.token=file:"+token("agent", oldPriv))...)
	oldClient, newClient := basicAuth("4711", read(token("client", oldPriv))), basicAuth("4711", read(token("client", newPriv)))
	open := mustConnect(t, p.httpAddr, echo.addr, oldClient)
	defer open.Close()
	if got := connectStatus(t, p.httpAddr, echo.addr, newClient); got != http.StatusProxyAuthRequired {
		t.Fatalf("token of the new key before the reload: %d, want 407", got)
	}

	copyFile(newPub, pub)
	l := sighup(t, p.process, "configuration reloaded")
	if l["changed"] != "--auth.jwt.public-key" {
		t.Errorf("changed=%q, want --auth.jwt.public-key", l["changed"])
	}
	t.Logf("key rotation took %s", l["took"])
	if got := connectStatus(t, p.httpAddr, echo.addr, newClient); got != http.StatusOK {
		t.Errorf("token of the new key after the reload: %d, want 200", got)
	}
	if got := connectStatus(t, p.httpAddr, echo.addr, oldClient); got != http.StatusProxyAuthRequired {
		t.Errorf("token of the old key after the reload: %d, want 407", got)
	}
	echoes(t, open, "tunnel opened with the old key")
	if n := p.count("agent disconnected"); n != 0 {
		t.Errorf("the agent disconnected %d times", n)
	}
	// A key file that does not parse: refused, the new key stays.
	writeFile(t, pub, "not a key\n")
	l = sighup(t, p.process, "configuration reload refused, keeping the previous configuration")
	if !strings.Contains(l["error"], "--auth.jwt.public-key") {
		t.Errorf("refusal %q does not name --auth.jwt.public-key", l["error"])
	}
	if got := connectStatus(t, p.httpAddr, echo.addr, newClient); got != http.StatusOK {
		t.Errorf("after the refused reload: %d, want 200", got)
	}
	t.Logf("refused reload took %s", l["took"])
}
