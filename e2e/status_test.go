package e2e

import (
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestStatuses checks every refusal the proxy answers, for CONNECT and for
// absolute-form requests: the status, a one-line text/plain reason, and
// the Basic challenge with 407.
func TestStatuses(t *testing.T) {
	t.Parallel()
	web := startHTTPOrigin(t, false)
	refused := net.JoinHostPort("127.0.0.1", strconv.Itoa(closedPort(t)))
	p := startProxy(t,
		"--http-proxy.host-whitelist=127.0.0.0/8,localhost,*.invalid",
		"--agent-server.agent.dial-timeout=1s")
	startAgent(t, p, "4711", "--agent-client.host-whitelist=127.0.0.1,*.invalid")
	slow := startSilentAgent(t, p, "slow")
	ok := basicAuth("4711", "noauth")

	cases := []statusCase{
		{"no credentials", "", web.addr, 407, "proxy authentication required"},
		{"not Basic", "Bearer abc", web.addr, 407, "Basic"},
		{"bad base64", "Basic !!!", web.addr, 407, "base64"},
		{"no colon", "Basic " + base64.StdEncoding.EncodeToString([]byte("4711")), web.addr, 407, ":"},
		{"empty user", basicAuth("", "noauth"), web.addr, 407, "empty"},
		{"proxy allowlist", ok, "192.0.2.1:80", 403, "proxy's allowlist"},
		{"agent allowlist", ok, "localhost:" + strconv.Itoa(web.port), 403, "agent's allowlist"},
		{"agent not connected", basicAuth("nobody", "noauth"), web.addr, 503, "nobody"},
		{"refused", ok, refused, 502, "refused"},
		{"unresolvable", ok, "nonexistent.invalid:80", 502, "nonexistent.invalid"},
		{"agent silent", basicAuth("slow", "noauth"), web.addr, 504, "1s"},
	}
	// A group, so that the checks at the end run after all the parallel
	// subtests.
	t.Run("group", func(t *testing.T) { statusSubtests(t, p, web, cases) })

	// Both 504 requests reached the silent agent.
	if n := slow.accepted(); n != 2 {
		t.Errorf("the silent agent was asked for %d tunnels, want 2", n)
	}
	// Still serving after all that.
	mustGetHello(t, p, "4711", web)
}

type statusCase struct {
	name   string
	auth   string
	target string // host:port
	want   int
	reason string // a part of the reason
}

func statusSubtests(t *testing.T, p *proxyProc, web *httpOrigin, cases []statusCase) {
	ok := basicAuth("4711", "noauth")
	for _, tc := range cases {
		for _, method := range []string{"CONNECT", "GET"} {
			t.Run(method+" "+tc.name, func(t *testing.T) {
				t.Parallel()
				start := time.Now()
				var raw string
				if method == "CONNECT" {
					raw = connectHeader(tc.target, tc.auth)
				} else {
					raw = "GET http://" + tc.target + "/hello HTTP/1.1\r\nHost: " + tc.target + "\r\n"
					if tc.auth != "" {
						raw += "Proxy-Authorization: " + tc.auth + "\r\n"
					}
					raw += "\r\n"
				}
				resp, body, err := rawRequest(p.httpAddr, method, []byte(raw))
				if err != nil {
					t.Fatal(err)
				}
				took := time.Since(start)
				checkRefusal(t, resp, body, tc.want)
				if !strings.Contains(string(body), tc.reason) {
					t.Errorf("reason %q does not mention %q", body, tc.reason)
				}
				if tc.want == 504 && (took < 900*time.Millisecond || took > 5*time.Second) {
					t.Errorf("504 after %s, want about the 1s dial timeout", took)
				}
			})
		}
	}

	t.Run("CONNECT without port", func(t *testing.T) {
		t.Parallel()
		resp, body, err := rawRequest(p.httpAddr, "CONNECT", []byte("CONNECT example.com HTTP/1.1\r\nHost: example.com\r\n\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		checkRefusal(t, resp, body, 400)
	})

	t.Run("origin-form request", func(t *testing.T) {
		t.Parallel()
		resp, body, err := rawRequest(p.httpAddr, "GET", []byte("GET /hello HTTP/1.1\r\nHost: "+web.addr+"\r\nProxy-Authorization: "+ok+"\r\n\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		checkRefusal(t, resp, body, 400)
	})

	t.Run("Go client sees 407", func(t *testing.T) {
		t.Parallel()
		c := proxyClient(p.httpAddr, "", "")
		defer c.CloseIdleConnections()
		resp, err := c.Get(web.url("/hello"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		checkRefusal(t, resp, body, http.StatusProxyAuthRequired)
	})

	t.Run("curl sees 503", func(t *testing.T) {
		t.Parallel()
		out, err := curl(t, "--proxytunnel", "--proxy", "http://nobody:noauth@"+p.httpAddr, "--write-out", "%{http_connect}", web.url("/hello"))
		if err == nil || !strings.HasSuffix(out, "503") {
			t.Errorf("curl: %q, %v; want a failure with CONNECT status 503", out, err)
		}
	})
}

// TestClientGoneDuringDial closes the client's connection while the agent
// has not answered yet: the proxy gives up on the tunnel within its dial
// timeout. (It cannot tell a client that left from one that half-closed
// right behind its CONNECT, which TestHalfClose needs served, so it does
// not give up sooner.)
func TestClientGoneDuringDial(t *testing.T) {
	t.Parallel()
	p := startProxy(t, "--agent-server.agent.dial-timeout=2s")
	slow := startSilentAgent(t, p, "slow")
	c, err := net.DialTimeout("tcp", p.httpAddr, clientTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(connectHeader("127.0.0.1:9", basicAuth("slow", "noauth")))); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(10*time.Second, func() error {
		if slow.accepted() == 0 {
			return errors.New("the agent was not asked for a tunnel")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	gone := time.Now()
	if err := waitFor(5*time.Second, func() error {
		if slow.endedStreams() == 0 {
			return errors.New("the proxy still waits for the agent's answer")
		}
		return nil
	}); err != nil {
		t.Fatalf("%s after the client left: %v", time.Since(gone).Round(time.Millisecond), err)
	}
	t.Logf("proxy abandoned the tunnel %s after the client left", time.Since(gone).Round(time.Millisecond))
}
