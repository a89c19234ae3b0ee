package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// clientTimeout bounds one client operation (a request, a tunnel set-up).
const clientTimeout = 30 * time.Second

// basicAuth is a Proxy-Authorization value.
func basicAuth(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

// proxyURL is http://user:password@addr.
func proxyURL(addr, user, password string) *url.URL {
	u := &url.URL{Scheme: "http", Host: addr}
	if user != "" || password != "" {
		u.User = url.UserPassword(user, password)
	}
	return u
}

// proxyClient is an http.Client that uses the proxy at addr as user.
// Each client has its own connections.
func proxyClient(addr, user, password string) *http.Client {
	return &http.Client{
		Timeout: clientTimeout,
		Transport: &http.Transport{
			Proxy:              http.ProxyURL(proxyURL(addr, user, password)),
			DisableCompression: true,
			ForceAttemptHTTP2:  false,
		},
	}
}

// connectHeader is a CONNECT request for target; auth, when not empty, is
// its Proxy-Authorization.
func connectHeader(target, auth string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n", target, target)
	if auth != "" {
		fmt.Fprintf(&b, "Proxy-Authorization: %s\r\n", auth)
	}
	b.WriteString("\r\n")
	return b.String()
}

// tunnel is a raw client connection to the proxy after a CONNECT.
type tunnel struct {
	net.Conn
	br   *bufio.Reader // reads the response, then the tunnel bytes
	resp *http.Response
}

func (c *tunnel) Read(p []byte) (int, error) { return c.br.Read(p) }

// dialConnect sends CONNECT target to the proxy at addr, followed in the
// same write by payload, and reads the response. On a status other than
// 200 the body is left to read in resp.Body. The deadline of the returned
// connection is clientTimeout from now.
func dialConnect(addr, target, auth string, payload []byte) (*tunnel, error) {
	c, err := net.DialTimeout("tcp", addr, clientTimeout)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(clientTimeout))
	req := append([]byte(connectHeader(target, auth)), payload...)
	if _, err := c.Write(req); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: read response: %w", target, err)
	}
	return &tunnel{Conn: c, br: br, resp: resp}, nil
}

// mustConnect opens a tunnel and fails the test unless the proxy answers 200.
func mustConnect(t testing.TB, addr, target, auth string) *tunnel {
	t.Helper()
	tn, err := dialConnect(addr, target, auth, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tn.resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(tn.resp.Body)
		tn.Close()
		t.Fatalf("CONNECT %s: %s: %s", target, tn.resp.Status, body)
	}
	return tn
}

// rawRequest writes raw bytes to addr, reads one response and returns it
// with its body read.
func rawRequest(addr, method string, raw []byte) (*http.Response, []byte, error) {
	c, err := net.DialTimeout("tcp", addr, clientTimeout)
	if err != nil {
		return nil, nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(clientTimeout))
	if _, err := c.Write(raw); err != nil {
		return nil, nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// checkRefusal checks a refusal: the status, a text/plain body of one
// non-empty line, and for 407 the Basic challenge.
func checkRefusal(t testing.TB, resp *http.Response, body []byte, want int) {
	t.Helper()
	if resp.StatusCode != want {
		t.Errorf("status %s, want %d; body %q", resp.Status, want, body)
		return
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("status %d: Content-Type %q, want text/plain", want, ct)
	}
	line := strings.TrimSuffix(string(body), "\n")
	if strings.TrimSpace(line) == "" || strings.ContainsAny(line, "\r\n") {
		t.Errorf("status %d: body %q, want one non-empty line", want, body)
	}
	if want == http.StatusProxyAuthRequired {
		if got := resp.Header.Get("Proxy-Authenticate"); got != `Basic realm="reverse-http"` {
			t.Errorf("407: Proxy-Authenticate %q, want %q", got, `Basic realm="reverse-http"`)
		}
	}
}

// curl runs curl with args and returns its stdout.
func curl(t testing.TB, args ...string) (string, error) {
	t.Helper()
	path, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, append([]string{"--silent", "--show-error", "--max-time", "20"}, args...)...)
	cmd.Env = childEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("curl %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}
