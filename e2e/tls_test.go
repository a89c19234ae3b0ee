package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAgentVerifiesProxy checks that an agent refuses a proxy certificate
// it cannot verify, and connects when told which CA to trust or to skip
// verification.
func TestAgentVerifiesProxy(t *testing.T) {
	t.Parallel()
	p := startProxy(t)
	untrusting := startProcess(t, "agent without CA", "agent",
		"--agent-client.server-address="+p.agentAddr, "--auth.noauth.agent-id=no-ca", "--agent-client.backoff-max=500ms")
	untrusting.waitLog(t, startTimeout, 2, "connection to proxy ended")
	for _, l := range untrusting.lines("connection to proxy ended") {
		if !strings.Contains(l["error"], "certificate") {
			t.Errorf("agent without the CA: error %q, want a certificate error", l["error"])
		}
	}
	startAgent(t, p, "skip-verify", "--agent-client.tls.insecure-skip-verify")
	if n := p.count("agent connected", "agent", "no-ca"); n != 0 {
		t.Errorf("proxy registered the agent that cannot verify it %d times", n)
	}

	// A proxy without certificate files uses a self-signed one, which the
	// local CA does not vouch for.
	self := startProxyArgs(t, false)
	wrongCA := startProcess(t, "agent with the wrong CA", append(agentArgs(self),
		"--auth.noauth.agent-id=wrong-ca", "--agent-client.backoff-max=500ms")...)
	wrongCA.waitLog(t, startTimeout, 1, "connection to proxy ended")
	if l := wrongCA.lines("connection to proxy ended")[0]; !strings.Contains(l["error"], "certificate") {
		t.Errorf("agent with the wrong CA: error %q, want a certificate error", l["error"])
	}
	if n := self.count("agent connected", "agent", "wrong-ca"); n != 0 {
		t.Errorf("proxy registered the agent that cannot verify it %d times", n)
	}
	startAgent(t, self, "skip-verify", "--agent-client.tls.insecure-skip-verify")
}

// TestProxyOverTLS runs the client-facing proxy over TLS
// (--http-proxy.tls.enable): curl and Go's client reach it as an https
// proxy, with CONNECT and absolute-form requests.
func TestProxyOverTLS(t *testing.T) {
	t.Parallel()
	web := startHTTPOrigin(t, false)
	webTLS := startHTTPOrigin(t, true)
	p := startProxy(t, "--http-proxy.tls.enable",
		"--http-proxy.tls.file.cert="+filepath.Join(certDir, "proxy.pem"),
		"--http-proxy.tls.file.key="+filepath.Join(certDir, "proxy-key.pem"))
	startAgent(t, p, "4711")
	caFile := filepath.Join(certDir, "ca.pem")

	for _, tunnel := range []bool{true, false} {
		args := []string{"--proxy", "https://4711:noauth@" + p.httpAddr, "--proxy-cacert", caFile,
			"--write-out", "connect=%{http_connect} status=%{http_code}"}
		want := "hello\nconnect=000 status=200"
		if tunnel {
			args = append(args, "--proxytunnel")
			want = "hello\nconnect=200 status=200"
		}
		out, err := curl(t, append(args, web.url("/hello"))...)
		if err != nil || out != want {
			t.Errorf("curl through the https proxy (tunnel %v): %q %v, want %q", tunnel, out, err, want)
		}
	}

	// Go: one pool trusts both the proxy's CA and the TLS origin.
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	roots.AddCert(webTLS.srv.Certificate())
	u := proxyURL(p.httpAddr, "4711", "noauth")
	u.Scheme = "https"
	c := &http.Client{Timeout: clientTimeout, Transport: &http.Transport{
		Proxy:           http.ProxyURL(u),
		TLSClientConfig: &tls.Config{RootCAs: roots},
	}}
	defer c.CloseIdleConnections()
	for _, url := range []string{web.url("/hello"), "https://" + webTLS.addr + "/hello"} {
		resp, err := c.Get(url)
		if err != nil {
			t.Errorf("GET %s through the https proxy: %v", url, err)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "hello\n" {
			t.Errorf("GET %s through the https proxy: %s %q", url, resp.Status, body)
		}
	}

	// Plain HTTP to the TLS port is not served.
	resp, _, err := rawRequest(p.httpAddr, "GET", []byte("GET "+web.url("/hello")+" HTTP/1.1\r\nHost: x\r\nProxy-Authorization: "+basicAuth("4711", "noauth")+"\r\n\r\n"))
	if err == nil && resp.StatusCode == 200 {
		t.Error("plain HTTP to the TLS proxy port was served")
	}
}
