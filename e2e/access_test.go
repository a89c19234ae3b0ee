package e2e

// Client access control (docs/auth.md): a clients file of NAME:SECRET
// clients with agent and destination policies, client certificates on
// the HTTPS listener, client tokens with policies, and revocation (a
// client removed or expired, a jti listed) that closes open tunnels
// within a second on every front.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// revokeWithin is how soon after an auth file changed the tunnels of a
// client it revokes must be closed.
const revokeWithin = time.Second

// addClient runs `auth client add` and returns the password NAME:SECRET.
func addClient(t testing.TB, file string, args ...string) string {
	t.Helper()
	out := strings.TrimSpace(runTool(t, append([]string{"auth", "client", "add", "--file", file}, args...)...))
	if name, secret, ok := strings.Cut(out, ":"); !ok || name != args[len(args)-1] || secret == "" {
		t.Fatalf("auth client add printed %q, want NAME:SECRET", out)
	}
	return out
}

// socksConnect opens a SOCKS5 tunnel (RFC 1928/1929) to host:port with
// user and password; it returns the connection, or the step that failed
// and the reply code.
func socksConnect(addr, user, password, host string, port int) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, clientTimeout)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(clientTimeout))
	fail := func(err error) (net.Conn, error) {
		c.Close()
		return nil, err
	}
	br := bufio.NewReader(c)
	buf := []byte{5, 1, 2, 1, byte(len(user))}
	buf = append(append(buf, user...), byte(len(password)))
	buf = append(buf, password...)
	buf = append(append(buf, 5, 1, 0, 3, byte(len(host))), host...)
	buf = binary.BigEndian.AppendUint16(buf, uint16(port))
	if _, err := c.Write(buf); err != nil {
		return fail(err)
	}
	var m [2]byte
	if _, err := io.ReadFull(br, m[:]); err != nil || m[1] != 2 {
		return fail(fmt.Errorf("method: %x %v", m, err))
	}
	if _, err := io.ReadFull(br, m[:]); err != nil || m[1] != 0 {
		return fail(fmt.Errorf("authentication refused: %x %v", m, err))
	}
	var rep [10]byte
	if _, err := io.ReadFull(br, rep[:]); err != nil || rep[1] != 0 {
		return fail(fmt.Errorf("connect refused: reply %d %v", rep[1], err))
	}
	c.SetDeadline(time.Time{})
	return &bufConn{Conn: c, r: br}, nil
}

type bufConn struct {
	net.Conn
	r io.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// closedAfter reads r until it ends and sends on the channel when, or
// that it did not within clientTimeout.
func closedAfter(r io.Reader) <-chan time.Time {
	ch := make(chan time.Time, 1)
	go func() {
		io.Copy(io.Discard, r)
		ch <- time.Now()
	}()
	return ch
}

// waitRevoked waits for each reader of tunnels to end and fails unless each
// did within revokeWithin of since; it returns the slowest.
func waitRevoked(t testing.TB, since time.Time, tunnels map[string]<-chan time.Time) time.Duration {
	t.Helper()
	var slowest time.Duration
	for name, ch := range tunnels {
		select {
		case at := <-ch:
			d := at.Sub(since)
			t.Logf("%s closed %s after the file changed", name, d.Round(time.Millisecond))
			if d > revokeWithin {
				t.Errorf("%s closed %s after the file changed, want within %s", name, d.Round(time.Millisecond), revokeWithin)
			}
			slowest = max(slowest, d)
		case <-time.After(10 * time.Second):
			t.Errorf("%s still open 10s after the file changed", name)
		}
	}
	return slowest
}

// TestClientsFile: a noauth proxy with --auth.clients.file on its HTTP and
// SOCKS5 fronts. Clients get in with NAME:SECRET through curl and Go, on
// the agents and to the destinations their entry allows; a wrong secret,
// an unknown or expired client, noauth, another agent or destination are
// refused. Their identity is in the logs, the audit log, /tunnels and the
// per-client metric. Removing a client closes its open CONNECT, SOCKS5
// and absolute-form tunnels within a second, and refuses it from then on.
func TestClientsFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "clients.yaml")
	web := startHTTPOrigin(t, false)
	other := startHTTPOrigin(t, false)
	e := startEcho(t)
	ci := addClient(t, file, "--agents", "4711", "--destinations", web.addr+","+e.addr, "ci")
	ops := addClient(t, file, "--agents", "47*", "ops")
	audit := filepath.Join(dir, "audit.log")
	p := startProxy(t, "--auth.clients.file="+file, "--socks5.listen-address=127.0.0.1:0",
		"--admin.listen-address=127.0.0.1:0", "--audit.file="+audit)
	socks := socks5Addr(t, p.process)
	admin := metricsAddr(t, p.process)
	startAgent(t, p, "4711")
	startAgent(t, p, "4712")

	// Accepted: curl CONNECT and absolute-form, Go, SOCKS5.
	for _, args := range [][]string{
		{"--proxytunnel", "--proxy", "http://" + p.httpAddr, "--proxy-user", "4711:" + ci, web.url("/hello")},
		{"--proxy", "http://" + p.httpAddr, "--proxy-user", "4711:" + ci, web.url("/hello")},
		{"--socks5-hostname", socks, "--proxy-user", "4711:" + ci, web.url("/hello")},
		{"--proxytunnel", "--proxy", "http://" + p.httpAddr, "--proxy-user", "4712:" + ops, other.url("/hello")},
	} {
		if out, err := curl(t, args...); err != nil || out != "hello\n" {
			t.Errorf("curl %q: %q, %v", args, out, err)
		}
	}
	mustGetHelloAuth(t, p, "4711", ci, web)

	// Refused.
	name, _, _ := strings.Cut(ci, ":")
	for _, tc := range []struct {
		name, user, password, target string
		status                       int
	}{
		{"wrong secret", "4711", name + ":wrong", web.addr, 407},
		{"unknown client", "4711", "nobody:" + strings.Repeat("x", 32), web.addr, 407},
		{"noauth", "4711", "noauth", web.addr, 407},
		{"agent outside its agents", "4712", ci, web.addr, 407},
		{"destination outside its destinations", "4711", ci, other.addr, 403},
	} {
		resp, body, err := rawRequest(p.httpAddr, "CONNECT", []byte(connectHeader(tc.target, basicAuth(tc.user, tc.password))))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d %s", tc.name, resp.StatusCode, strings.TrimSpace(string(body)))
		checkRefusal(t, resp, body, tc.status)
		if _, err := socksConnect(socks, tc.user, tc.password, "127.0.0.1", portOf(t, tc.target)); err == nil {
			t.Errorf("SOCKS5 %s: accepted", tc.name)
		}
	}
	if _, err := curl(t, "--socks5-hostname", socks, "--proxy-user", "4711:"+name+":wrong", web.url("/hello")); err == nil {
		t.Error("curl SOCKS5 with a wrong secret: accepted")
	}

	// Identity: logs, audit, /tunnels, metrics.
	tn := mustConnect(t, p.httpAddr, e.addr, basicAuth("4711", ci))
	echoOnce(t, tn, "identity")
	var tunnels []map[string]any
	if code, body := adminGet(t, admin, "/tunnels"); code != 200 || json.Unmarshal([]byte(body), &tunnels) != nil ||
		len(tunnels) != 1 || tunnels[0]["identity"] != "client:ci" {
		t.Errorf("/tunnels: %d %s, want one tunnel of identity client:ci", code, body)
	}
	tn.Close()
	p.waitLog(t, clientTimeout, 1, "tunnel closed", "identity", "client:ci", "destination", e.addr)
	waitAudit(t, audit, "ci's tunnel", func(l auditLine) bool { return l.Identity == "client:ci" && l.Destination == e.addr })
	waitAudit(t, audit, "a refusal", func(l auditLine) bool { return l.Status == 403 && l.Identity == "client:ci" })
	_, metrics := adminGet(t, admin, "/metrics")
	for _, want := range []string{`reverse_http_client_tunnels_total{client="ci"}`, `reverse_http_client_tunnels_total{client="ops"}`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics has no %s", want)
		}
	}

	// Expiry: brief's tunnel ends when it expires; it is refused then.
	reloads := p.count("auth file reloaded")
	expiring := addClient(t, file, "--agents", "*", "--expires", "4s", "brief")
	p.waitLog(t, clientTimeout, reloads+1, "auth file reloaded")
	exp := mustConnect(t, p.httpAddr, e.addr, basicAuth("4711", expiring))
	select {
	case <-closedAfter(exp):
	case <-time.After(10 * time.Second):
		t.Error("the tunnel of a client expiring in 3s still open after 10s")
	}
	if s := connectStatus(t, p.httpAddr, e.addr, basicAuth("4711", expiring)); s != 407 {
		t.Errorf("expired client: %d, want 407", s)
	}

	// Revocation: ops's CONNECT, SOCKS5 and absolute-form tunnels close
	// within a second of its removal.
	open := map[string]<-chan time.Time{}
	ct := mustConnect(t, p.httpAddr, e.addr, basicAuth("4711", ops))
	echoOnce(t, ct, "before")
	open["CONNECT"] = closedAfter(ct)
	sc, err := socksConnect(socks, "4711", ops, "127.0.0.1", e.port)
	if err != nil {
		t.Fatal(err)
	}
	open["SOCKS5"] = closedAfter(sc)
	slow := make(chan time.Time, 1)
	started := web.slowStarted.Load()
	go func() {
		c := proxyClient(p.httpAddr, "4711", ops)
		resp, err := c.Get(web.url("/slow?ms=10000"))
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		slow <- time.Now()
	}()
	open["absolute-form"] = slow
	if err := waitFor(clientTimeout, func() error {
		if web.slowStarted.Load() == started {
			return errors.New("the slow request has not reached the origin")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	runTool(t, "auth", "client", "remove", "--file", file, "ops")
	changed := time.Now()
	slowest := waitRevoked(t, changed, open)
	t.Logf("revocation latency (clients file, HTTP/1.1 and SOCKS5): %s", slowest.Round(time.Millisecond))
	if s := connectStatus(t, p.httpAddr, e.addr, basicAuth("4711", ops)); s != 407 {
		t.Errorf("removed client: %d, want 407", s)
	}
	p.waitLog(t, clientTimeout, 1, "auth file reloaded", "changed", "--auth.clients.file")
	if p.count("closing a tunnel: its client's credentials were revoked or expired", "identity", "client:ops") < 3 {
		t.Errorf("want a line for each of ops's 3 tunnels")
	}
	// ci is untouched.
	mustGetHelloAuth(t, p, "4711", ci, web)

	// A broken file is refused with one line and the clients stay.
	before := p.count("auth file refused, keeping the one in force")
	writeFile(t, file, "clients: [\n")
	p.waitLog(t, clientTimeout, before+1, "auth file refused, keeping the one in force")
	mustGetHelloAuth(t, p, "4711", ci, web)
	time.Sleep(600 * time.Millisecond) // two more polls: still one line
	if n := p.count("auth file refused, keeping the one in force"); n != before+1 {
		t.Errorf("%d refusal lines for one broken file, want 1", n-before)
	}
	// SIGHUP reads it too, and refuses the whole reload.
	l := sighup(t, p.process, "configuration reload refused, keeping the previous configuration")
	if !strings.Contains(l["error"], "--auth.clients.file") || !strings.Contains(l["error"], file) {
		t.Errorf("reload refused with %q, want the flag and the file named", l["error"])
	}
	mustGetHelloAuth(t, p, "4711", ci, web)
}

func portOf(t testing.TB, hostport string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

// TestClientCertificates: an HTTPS proxy with client certificates
// (--http-proxy.tls.file.client-ca). With a clients file, a certificate
// whose CN is a client's name stands for its password, with its policy,
// through curl --proxy-cert and Go's HTTP/2 client; removing the client
// resets its HTTP/2 tunnel within a second. Without a certificate the
// handshake fails.
func TestClientCertificates(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pki := filepath.Join(dir, "pki")
	runTool(t, "certs", "--dir", pki, "--agent-id", "ci", "--agent-id", "ops", "--agent-id", "guest")
	file := filepath.Join(dir, "clients.yaml")
	e := startEcho(t)
	web := startHTTPOrigin(t, false)
	addClient(t, file, "--agents", "4711", "--destinations", web.addr, "ci")
	opsPassword := addClient(t, file, "--agents", "4711", "ops")
	p := startProxy(t, "--auth.clients.file="+file, "--http-proxy.tls.enable",
		"--http-proxy.tls.file.cert="+filepath.Join(pki, "proxy.pem"),
		"--http-proxy.tls.file.key="+filepath.Join(pki, "proxy-key.pem"),
		"--http-proxy.tls.file.client-ca="+filepath.Join(pki, "ca.pem"))
	startAgent(t, p, "4711")

	curlTLS := func(cert string, extra ...string) (string, error) {
		args := []string{"--proxy", "https://" + p.httpAddr, "--proxy-cacert", filepath.Join(pki, "ca.pem")}
		if cert != "" {
			args = append(args, "--proxy-cert", filepath.Join(pki, "agent-"+cert+".pem"), "--proxy-key", filepath.Join(pki, "agent-"+cert+"-key.pem"))
		}
		return curl(t, append(args, extra...)...)
	}
	for _, extra := range [][]string{
		{"--proxytunnel", "--proxy-user", "4711:", web.url("/hello")},
		{"--proxy-user", "4711:", web.url("/hello")},
	} {
		if out, err := curlTLS("ci", extra...); err != nil || out != "hello\n" {
			t.Errorf("curl --proxy-cert ci %q: %q, %v", extra, out, err)
		}
	}
	if _, err := curlTLS("ci", "--proxytunnel", "--proxy-user", "4711:", "http://"+e.addr+"/"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("ci's certificate to a destination outside its policy: %v, want 403", err)
	}
	if _, err := curlTLS("ci", "--proxytunnel", "--proxy-user", "4712:", web.url("/hello")); err == nil || !strings.Contains(err.Error(), "407") {
		t.Errorf("ci's certificate for another agent: %v, want 407", err)
	}
	if _, err := curlTLS("", "--proxytunnel", "--proxy-user", "4711:"+opsPassword, web.url("/hello")); err == nil {
		t.Error("no client certificate: accepted")
	}

	// A certificate whose CN is no client only gates the connection:
	// NAME:SECRET over HTTP/2 decides.
	guestCert, err := tlsKeyPair(filepath.Join(pki, "agent-guest.pem"), filepath.Join(pki, "agent-guest-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	g := newH2ClientCert(t, p.httpAddr, pki, guestCert)
	if err := g.echo(e.addr, basicAuth("4711", opsPassword), 1000, 3); err != nil {
		t.Errorf("HTTP/2 with NAME:SECRET: %v", err)
	}
	opsName, _, _ := strings.Cut(opsPassword, ":")
	if err := g.echo(e.addr, basicAuth("4711", opsName+":wrong"), 10, 1); err == nil || !strings.Contains(err.Error(), "407") {
		t.Errorf("HTTP/2 with a wrong secret: %v, want 407", err)
	}
	if err := g.echo(e.addr, basicAuth("4711", ""), 10, 1); err == nil || !strings.Contains(err.Error(), "407") {
		t.Errorf("HTTP/2 with a certificate that names no client and no password: %v, want 407", err)
	}

	// Go's HTTP/2 client with ops's certificate; then ops is removed.
	cert, err := tlsKeyPair(filepath.Join(pki, "agent-ops.pem"), filepath.Join(pki, "agent-ops-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	c := newH2ClientCert(t, p.httpAddr, pki, cert)
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte("4711:"))
	if err := c.echo(e.addr, auth, 64<<10, 7); err != nil {
		t.Fatalf("HTTP/2 tunnel with ops's certificate: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, pw, err := c.connect(ctx, e.addr, auth)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("HTTP/2 CONNECT: %v %v", resp, err)
	}
	defer pw.Close()
	pw.Write([]byte("ping"))
	got := make([]byte, 4)
	if _, err := io.ReadFull(resp.Body, got); err != nil {
		t.Fatal(err)
	}
	h2Closed := closedAfter(resp.Body)
	runTool(t, "auth", "client", "remove", "--file", file, "ops")
	slowest := waitRevoked(t, time.Now(), map[string]<-chan time.Time{"HTTP/2 CONNECT": h2Closed})
	t.Logf("revocation latency (client certificate, HTTP/2): %s", slowest.Round(time.Millisecond))
	p.waitLog(t, clientTimeout, 1, "tunnel closed", "identity", "cert:ops", "proto", "HTTP/2.0")
	if err := c.echo(e.addr, auth, 10, 1); err == nil || !strings.Contains(err.Error(), "407") {
		t.Errorf("removed client's certificate: %v, want 407", err)
	}
}

// TestJWTClientPolicy: --auth.type=jwt with a clients file and a
// revocation list. Client tokens name agents (patterns) and destinations
// and are held to them; NAME:SECRET clients work alongside; a token whose
// jti is added to --auth.jwt.revoked is refused, and its open CONNECT
// and SOCKS5 tunnels close within a second.
func TestJWTClientPolicy(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	priv, pub := filepath.Join(dir, "key.pem"), filepath.Join(dir, "pub.pem")
	runTool(t, "auth", "key", "private", "-o", priv)
	runTool(t, "auth", "key", "public", "-i", priv, "-o", pub)
	revoked := filepath.Join(dir, "revoked")
	writeFile(t, revoked, "# revoked tokens\n")
	file := filepath.Join(dir, "clients.yaml")
	ci := addClient(t, file, "--agents", "4711", "ci")
	web := startHTTPOrigin(t, false)
	e := startEcho(t)
	token := func(args ...string) string {
		return strings.TrimSpace(runTool(t, append([]string{"auth", "jwt", "token", "-i", priv, "-o", "-"}, args...)...))
	}
	agentTok := filepath.Join(dir, "agent.jwt")
	runTool(t, "auth", "jwt", "token", "-i", priv, "--role", "agent", "--agent-id", "4711", "-o", agentTok)
	p := startProxy(t, "--auth.type=jwt", "--auth.jwt.public-key="+pub, "--auth.jwt.revoked="+revoked,
		"--auth.clients.file="+file, "--socks5.listen-address=127.0.0.1:0")
	socks := socks5Addr(t, p.process)
	startAgentArgs(t, p, "4711", append(agentArgs(p), "--auth.type=jwt", "--auth.jwt.token=file:"+agentTok)...)

	narrow := token("--agent-id", "4711", "--destinations", web.addr)
	patterns := token("--agent-id", "47*", "--agent-id", "site-1")
	wrongAgent := token("--agent-id", "4712")
	if out, err := curl(t, "--proxytunnel", "--proxy", "http://"+p.httpAddr, "--proxy-user", "4711:"+narrow, web.url("/hello")); err != nil || out != "hello\n" {
		t.Errorf("curl with a token for its destination: %q, %v", out, err)
	}
	if out, err := curl(t, "--socks5-hostname", socks, "--proxy-user", "4711:"+patterns, web.url("/hello")); err != nil || out != "hello\n" {
		t.Errorf("curl SOCKS5 with a token for 47*: %q, %v", out, err)
	}
	mustGetHelloAuth(t, p, "4711", ci, web)
	for _, tc := range []struct {
		name, password, target string
		status                 int
	}{
		{"destination outside the token's", narrow, e.addr, 403},
		{"agent outside the token's", wrongAgent, web.addr, 407},
		{"noauth", "noauth", web.addr, 407},
		{"agent token", strings.TrimSpace(readFileString(t, agentTok)), web.addr, 407},
	} {
		resp, body, err := rawRequest(p.httpAddr, "CONNECT", []byte(connectHeader(tc.target, basicAuth("4711", tc.password))))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d %s", tc.name, resp.StatusCode, strings.TrimSpace(string(body)))
		checkRefusal(t, resp, body, tc.status)
	}

	// Revocation.
	victim := token("--agent-id", "4711")
	ct := mustConnect(t, p.httpAddr, e.addr, basicAuth("4711", victim))
	echoOnce(t, ct, "before")
	sc, err := socksConnect(socks, "4711", victim, "127.0.0.1", e.port)
	if err != nil {
		t.Fatal(err)
	}
	open := map[string]<-chan time.Time{"CONNECT": closedAfter(ct), "SOCKS5": closedAfter(sc)}
	writeFile(t, revoked, "# revoked tokens\n"+jtiOf(t, victim)+"\n")
	slowest := waitRevoked(t, time.Now(), open)
	t.Logf("revocation latency (jti, HTTP/1.1 and SOCKS5): %s", slowest.Round(time.Millisecond))
	resp, body, err := rawRequest(p.httpAddr, "CONNECT", []byte(connectHeader(e.addr, basicAuth("4711", victim))))
	if err != nil {
		t.Fatal(err)
	}
	checkRefusal(t, resp, body, 407)
	if !strings.Contains(string(body), "revoked") {
		t.Errorf("revoked token: %q, want the reason", body)
	}
	// Others are untouched.
	mustGetHelloAuth(t, p, "4711", patterns, web)
}

func readFileString(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// jtiOf reads a token's jti without verifying it.
func jtiOf(t testing.TB, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q", token)
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		JTI string `json:"jti"`
	}
	if err := json.Unmarshal(raw, &c); err != nil || c.JTI == "" {
		t.Fatalf("no jti in %s: %v", raw, err)
	}
	return c.JTI
}

func tlsKeyPair(cert, key string) (tls.Certificate, error) { return tls.LoadX509KeyPair(cert, key) }

// newH2ClientCert is newH2Client trusting the CA in pki and presenting
// cert.
func newH2ClientCert(t testing.TB, proxy, pki string, cert tls.Certificate) *h2Client {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(pki, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	c := &h2Client{proxy: proxy}
	var protos http.Protocols
	protos.SetHTTP2(true)
	tr := &http.Transport{
		Protocols: &protos,
		HTTP2:     &http.HTTP2Config{StrictMaxConcurrentRequests: true},
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c.dials.Add(1)
			d := tls.Dialer{Config: &tls.Config{RootCAs: roots, NextProtos: []string{"h2"}, Certificates: []tls.Certificate{cert}}}
			return d.DialContext(ctx, network, addr)
		},
	}
	c.Client = &http.Client{Transport: tr}
	t.Cleanup(tr.CloseIdleConnections)
	return c
}

// TestAccessHA: an lb (HTTPS with client certificates) in front of a
// proxy that holds the agent, both with the same clients file and cluster
// key. A client authenticated by its certificate at the lb has no password
// to forward: the lb vouches for it in the signed Reverse-Http-Forwarded
// header, and the owning proxy applies the client's policy and logs its
// identity. A NAME:SECRET client is authenticated again by the owning
// proxy. Removing a client closes its tunnel through the lb within a
// second.
func TestAccessHA(t *testing.T) {
	progs := haNeed(t)
	dir := t.TempDir()
	pki := filepath.Join(dir, "pki")
	// guest is in no clients file: its certificate only gates the
	// connection, and the password is checked.
	runTool(t, "certs", "--dir", pki, "--agent-id", "ci", "--agent-id", "guest")
	key := writeTestFile(t, filepath.Join(dir, "cluster.key"), "an e2e cluster key of enough bytes\n")
	file := filepath.Join(dir, "clients.yaml")
	e := startEcho(t)
	web := startHTTPOrigin(t, false)
	addClient(t, file, "--agents", "4711", "--destinations", web.addr, "ci")
	ops := addClient(t, file, "--agents", "4711", "ops")
	mc := startMemcached(t, progs)
	p := startStoreProxy(t, mc, "--store.cluster-key="+key, "--auth.clients.file="+file)
	l := startLB(t, mc, "--store.cluster-key="+key, "--auth.clients.file="+file, "--http-proxy.tls.enable",
		"--http-proxy.tls.file.cert="+filepath.Join(pki, "proxy.pem"),
		"--http-proxy.tls.file.key="+filepath.Join(pki, "proxy-key.pem"),
		"--http-proxy.tls.file.client-ca="+filepath.Join(pki, "ca.pem"))
	startAgent(t, p, "4711")
	mc.waitRoute(t, startTimeout, "4711", p.httpAddr)

	curlAs := func(cn string, extra ...string) (string, error) {
		return curl(t, append([]string{"--proxy", "https://" + l.httpAddr, "--proxy-cacert", filepath.Join(pki, "ca.pem"),
			"--proxy-cert", filepath.Join(pki, "agent-"+cn+".pem"), "--proxy-key", filepath.Join(pki, "agent-"+cn+"-key.pem")}, extra...)...)
	}
	curlLB := func(extra ...string) (string, error) { return curlAs("ci", extra...) }
	if out, err := curlLB("--proxytunnel", "--proxy-user", "4711:", web.url("/hello")); err != nil || out != "hello\n" {
		t.Fatalf("certificate client through the lb: %q, %v", out, err)
	}
	p.waitLog(t, clientTimeout, 1, "tunnel closed", "identity", "cert:ci", "destination", web.addr)
	if out, err := curlLB("--proxy-user", "4711:", web.url("/hello")); err != nil || out != "hello\n" {
		t.Errorf("certificate client through the lb, absolute-form: %q, %v", out, err)
	}
	if _, err := curlLB("--proxytunnel", "--proxy-user", "4711:", "http://"+e.addr+"/"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("certificate client to a destination outside its policy: %v, want 403", err)
	}
	if out, err := curlAs("guest", "--proxytunnel", "--proxy-user", "4711:"+ops, web.url("/hello")); err != nil || out != "hello\n" {
		t.Fatalf("password client through the lb: %q, %v", out, err)
	}
	if _, err := curlAs("guest", "--proxytunnel", "--proxy-user", "4711:", web.url("/hello")); err == nil || !strings.Contains(err.Error(), "407") {
		t.Errorf("a certificate whose CN is no client, without a password: %v, want 407", err)
	}
	p.waitLog(t, clientTimeout, 1, "tunnel closed", "identity", "client:ops", "destination", web.addr)

	// Revocation through the lb.
	cert, err := tlsKeyPair(filepath.Join(pki, "agent-guest.pem"), filepath.Join(pki, "agent-guest-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := h2Roots(t)
	pem, _ := os.ReadFile(filepath.Join(pki, "ca.pem"))
	roots.AppendCertsFromPEM(pem)
	raw, err := tls.Dial("tcp", l.httpAddr, &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	fmt.Fprint(raw, connectHeader(e.addr, basicAuth("4711", ops)))
	br := bufio.NewReader(raw)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT through the lb as ops: %v %v", resp, err)
	}
	tn := &tunnel{Conn: raw, br: br, resp: resp}
	echoOnce(t, tn, "through the lb")
	closed := closedAfter(tn)
	runTool(t, "auth", "client", "remove", "--file", file, "ops")
	slowest := waitRevoked(t, time.Now(), map[string]<-chan time.Time{"CONNECT through the lb": closed})
	t.Logf("revocation latency (through an lb): %s", slowest.Round(time.Millisecond))
}
