package e2e

// SOCKS5 clients as users run them: curl --socks5-hostname, OpenSSH
// through ncat as its ProxyCommand to an sshd started here, and Python's
// PySocks, against --socks5.listen-address of a proxy and of an lb.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// socks5Addr is the address a proxy or lb started with
// --socks5.listen-address=127.0.0.1:0 bound, from its log.
func socks5Addr(t testing.TB, p *process) string {
	t.Helper()
	p.waitLog(t, startTimeout, 1, "socks5 proxy listening")
	addr := p.lines("socks5 proxy listening")[0]["address"]
	if addr == "" {
		t.Fatalf("%s: socks5 proxy listening without an address", p.name)
	}
	return addr
}

// needProgram returns the path of a client program the SOCKS5 tests run;
// without it the test fails under CI (.ci/run installs it) and is
// skipped otherwise.
func needProgram(t testing.TB, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not installed (CI is set: .ci/run must install %s)", name, pkg)
		}
		t.Skipf("%s not installed (apt-get install %s)", name, pkg)
	}
	return path
}

// TestSocks5Curl: curl --socks5-hostname with the agent ID and noauth, or
// a client JWT, reaches an origin through the agent by name (the agent
// resolves it) and by IPv4 literal; failures come back as the reply codes
// the docs give, and the proxy logs them with the HTTP status's reason.
func TestSocks5Curl(t *testing.T) {
	web := startHTTPOrigin(t, false)
	p := startProxy(t, "--socks5.listen-address=127.0.0.1:0")
	socks := socks5Addr(t, p.process)
	startAgent(t, p, "4711", fmt.Sprintf("--agent-client.host-whitelist=localhost:%d,127.0.0.1:%d", web.port, web.port))

	for _, target := range []string{fmt.Sprintf("http://localhost:%d/hello", web.port), "http://" + web.addr + "/hello"} {
		out, err := curl(t, "--socks5-hostname", socks, "--proxy-user", "4711:noauth", target)
		if err != nil || out != "hello\n" {
			t.Fatalf("curl --socks5-hostname %s: %q, %v", target, out, err)
		}
	}
	p.waitLog(t, clientTimeout, 1, "tunnel closed", "method", "SOCKS5-CONNECT", "destination", fmt.Sprintf("localhost:%d", web.port))

	for _, tc := range []struct {
		name, user, target string
		curlSays, reason   string
	}{
		{"agent offline", "4712", fmt.Sprintf("http://localhost:%d/hello", web.port), "(3)", "agent 4712 is not connected"},
		{"agent allowlist", "4711", "http://localhost:1/hello", "(2)", "not allowed by the agent's allowlist"},
		{"bad credentials", "", fmt.Sprintf("http://localhost:%d/hello", web.port), "rejected", "empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := curl(t, "--socks5-hostname", socks, "--proxy-user", tc.user+":noauth", tc.target)
			if err == nil || !strings.Contains(err.Error(), tc.curlSays) {
				t.Fatalf("curl: %v, want an error with %q", err, tc.curlSays)
			}
			p.waitLog(t, clientTimeout, 1, "request refused", "component", "socks5", "agent", tc.user)
			found := false
			for _, l := range p.lines("request refused", "component", "socks5", "agent", tc.user) {
				found = found || strings.Contains(l["reason"], tc.reason)
			}
			if !found {
				t.Errorf("no 'request refused' line with reason %q", tc.reason)
			}
		})
	}
}

// TestSocks5JWT: with --auth.type=jwt a client token from `auth jwt token`
// for a 32-byte agent ID fits in the SOCKS5 password and opens a tunnel;
// the agent's own token does not.
func TestSocks5JWT(t *testing.T) {
	dir := t.TempDir()
	priv, pub := filepath.Join(dir, "key.pem"), filepath.Join(dir, "pub.pem")
	runTool(t, "auth", "key", "private", "-o", priv)
	runTool(t, "auth", "key", "public", "-i", priv, "-o", pub)
	id := strings.Repeat("a", 32)
	agentTok := filepath.Join(dir, "agent.jwt")
	runTool(t, "auth", "jwt", "token", "-i", priv, "--agent-id", id, "--role", "agent", "-o", agentTok)
	clientTok := strings.TrimSpace(runTool(t, "auth", "jwt", "token", "-i", priv, "--agent-id", id, "--role", "client", "-o", "-"))
	if len(clientTok) > 255 {
		t.Fatalf("client token for a 32-byte agent ID is %d bytes, over the 255 a SOCKS5 password holds", len(clientTok))
	}
	web := startHTTPOrigin(t, false)
	p := startProxy(t, "--socks5.listen-address=127.0.0.1:0", "--auth.type=jwt", "--auth.jwt.public-key="+pub)
	socks := socks5Addr(t, p.process)
	args := append(agentArgs(p), "--auth.type=jwt", "--auth.jwt.token=file:"+agentTok, "--agent-client.host-whitelist="+web.addr)
	startAgentArgs(t, p, id, args...)
	out, err := curl(t, "--socks5-hostname", socks, "--proxy-user", id+":"+clientTok, "http://"+web.addr+"/hello")
	if err != nil || out != "hello\n" {
		t.Fatalf("curl with a client token: %q, %v", out, err)
	}
	agentJWT, _ := os.ReadFile(agentTok)
	if _, err := curl(t, "--socks5-hostname", socks, "--proxy-user", id+":noauth", "http://"+web.addr+"/hello"); err == nil {
		t.Error("noauth accepted by a jwt proxy")
	}
	if len(agentJWT) <= 255 {
		if _, err := curl(t, "--socks5-hostname", socks, "--proxy-user", id+":"+strings.TrimSpace(string(agentJWT)), "http://"+web.addr+"/hello"); err == nil {
			t.Error("an agent token accepted as a client's")
		}
	}
	p.waitLog(t, clientTimeout, 1, "request refused", "component", "socks5", "status", "407")
}

// TestSocks5SSH: OpenSSH reaches an sshd started here (own host key and
// config in a temp dir, a loopback port) through the agent, with ncat as
// its ProxyCommand speaking SOCKS5 with credentials and the host name
// resolved by the agent.
func TestSocks5SSH(t *testing.T) {
	sshd := "/usr/sbin/sshd"
	if _, err := os.Stat(sshd); err != nil {
		if path, lerr := exec.LookPath("sshd"); lerr == nil {
			sshd = path
		} else if os.Getenv("CI") != "" {
			t.Fatalf("sshd not installed (CI is set: .ci/run must install openssh-server)")
		} else {
			t.Skip("sshd not installed (apt-get install openssh-server)")
		}
	}
	ssh := needProgram(t, "ssh", "openssh-client")
	keygen := needProgram(t, "ssh-keygen", "openssh-client")
	ncat := needProgram(t, "ncat", "ncat")
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		// sshd started by root wants its privilege separation directory,
		// which a container without an init never made.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	for _, k := range []string{"host", "client"} {
		if out, err := exec.Command(keygen, "-q", "-t", "ed25519", "-N", "", "-C", "e2e", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v\n%s", err, out)
		}
	}
	pubKey, err := os.ReadFile(filepath.Join(dir, "client.pub"))
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(dir, "authorized_keys"), string(pubKey))
	port := freePort(t, "tcp")
	config := writeTestFile(t, filepath.Join(dir, "sshd_config"), fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
PidFile %s
AuthorizedKeysFile %s
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers %s
`, port, filepath.Join(dir, "host"), filepath.Join(dir, "sshd.pid"), filepath.Join(dir, "authorized_keys"), me.Username))
	d, err := startExternal(t, "sshd", sshd, "-D", "-e", "-f", config)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopExternal(t, d) })
	if err := waitFor(startTimeout, func() error {
		if d.exited() {
			return fmt.Errorf("sshd exited: %v\n%s", d.err, d.log.String())
		}
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		t.Fatalf("sshd did not start: %v", err)
	}

	p := startProxy(t, "--socks5.listen-address=127.0.0.1:0")
	socks := socks5Addr(t, p.process)
	startAgent(t, p, "4711", fmt.Sprintf("--agent-client.host-whitelist=localhost:%d", port))
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, ssh, "-F", "/dev/null",
		"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "IdentitiesOnly=yes", "-i", filepath.Join(dir, "client"),
		"-o", "ProxyCommand="+ncat+" --proxy-type socks5 --proxy "+socks+" --proxy-auth 4711:noauth --proxy-dns remote %h %p",
		"-p", strconv.Itoa(port), "-l", me.Username, "localhost", "echo through-socks5")
	cmd.Env = childEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil || strings.TrimSpace(stdout.String()) != "through-socks5" {
		t.Fatalf("ssh through SOCKS5: %v, stdout %q\nstderr:\n%s\nsshd:\n%s", err, stdout.String(), stderr.String(), d.log.String())
	}
	p.waitLog(t, clientTimeout, 1, "tunnel closed", "method", "SOCKS5-CONNECT", "destination", fmt.Sprintf("localhost:%d", port))
}

// TestSocks5Python: PySocks (Debian's python3-socks, for /usr/bin/python3)
// tunnels to a name the agent resolves and to an IPv6 literal, and sees
// the reply codes of an agent that is not connected and of a BIND.
func TestSocks5Python(t *testing.T) {
	python := "/usr/bin/python3"
	if out, err := exec.Command(python, "-c", "import socks").CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s cannot import socks: %v %s (CI is set: .ci/run must install python3-socks)", python, err, out)
		}
		t.Skipf("%s cannot import socks (apt-get install python3-socks): %s", python, out)
	}
	web := startHTTPOrigin(t, false)
	targets := []string{"localhost:" + strconv.Itoa(web.port)}
	if ln, err := net.Listen("tcp", "[::1]:0"); err == nil {
		ln.Close() // IPv6 loopback works here: an origin on it too
		web6 := startHTTPOrigin6(t)
		targets = append(targets, web6)
	}
	p := startProxy(t, "--socks5.listen-address=127.0.0.1:0")
	socks := socks5Addr(t, p.process)
	startAgent(t, p, "4711", "--agent-client.host-whitelist="+strings.Join(targets, ","))
	host, port, _ := net.SplitHostPort(socks)
	script := `
import socks, sys
host, port, target = sys.argv[1], int(sys.argv[2]), sys.argv[3]
th, tp = target.rsplit(":", 1)
th = th.strip("[]")
s = socks.socksocket()
s.set_proxy(socks.SOCKS5, host, port, rdns=True, username=sys.argv[4], password="noauth")
s.settimeout(20)
try:
    s.connect((th, int(tp)))
except socks.ProxyError as e:
    print("error:", e.msg)
    sys.exit(0)
s.sendall(b"GET /hello HTTP/1.0\r\nHost: x\r\n\r\n")
data = b""
while True:
    b = s.recv(4096)
    if not b:
        break
    data += b
print(data.decode().split("\r\n\r\n", 1)[1], end="")
`
	run := func(target, agent string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
		defer cancel()
		out, err := exec.CommandContext(ctx, python, "-c", script, host, port, target, agent).CombinedOutput()
		if err != nil {
			t.Fatalf("python %s: %v\n%s", target, err, out)
		}
		return string(out)
	}
	for _, target := range targets {
		if got := run(target, "4711"); got != "hello\n" {
			t.Errorf("PySocks to %s: %q, want hello", target, got)
		}
	}
	if got := run(targets[0], "4712"); !strings.Contains(got, "0x03") || !strings.Contains(got, "Network unreachable") {
		t.Errorf("PySocks for an agent not connected: %q, want reply 0x03 network unreachable", got)
	}
}

// startHTTPOrigin6 serves the HTTP origin on [::1] and returns its
// host:port.
func startHTTPOrigin6(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	o := startHTTPOrigin(t, false)
	// Forward [::1] to the IPv4 origin: the test is about the address
	// the client names, not about the origin.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", o.addr)
				if err != nil {
					return
				}
				defer u.Close()
				done := make(chan struct{})
				go func() { copyHalf(u, c); close(done) }()
				copyHalf(c, u)
				<-done
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// TestSocks5HA: a SOCKS5 client of an lb, and of a proxy that does not
// hold the agent, reaches the agent through the proxy that does.
func TestSocks5HA(t *testing.T) {
	c := startCluster(t, haConfig{proxies: 2, lbs: 1,
		proxyFlags: []string{"--socks5.listen-address=127.0.0.1:0"},
		lbFlags:    []string{"--socks5.listen-address=127.0.0.1:0"}})
	a := c.startAgent(t, "4711", c.proxies[0].agentAddr)
	web := c.origin("4711")
	other := c.proxies[1]
	if a.holder == other {
		other = c.proxies[0]
	}
	for _, front := range []*process{c.lbs[0].process, other.process} {
		socks := socks5Addr(t, front)
		out, err := curl(t, "--socks5-hostname", socks, "--proxy-user", "4711:noauth", "http://"+web.addr+"/hello")
		if err != nil || out != "hello\n" {
			t.Fatalf("curl through %s's SOCKS5: %q, %v", front.name, out, err)
		}
	}
	a.holder.waitLog(t, clientTimeout, 2, "tunnel closed", "method", "CONNECT", "destination", web.addr)
}

// writeTestFile writes data to path and returns path.
func writeTestFile(t testing.TB, path, data string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// copyHalf copies src to dst, then half-closes dst.
func copyHalf(dst, src net.Conn) {
	io.Copy(dst, src)
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}
