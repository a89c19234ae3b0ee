package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestJWT runs proxy and agent with --auth.type=jwt, keys and tokens made
// by `reverse-http auth`, and checks who gets in.
func TestJWT(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	priv := filepath.Join(dir, "priv.pem")
	pub := filepath.Join(dir, "pub.pem")
	otherPriv := filepath.Join(dir, "other-priv.pem")
	runTool(t, "auth", "key", "private", "-o", priv)
	runTool(t, "auth", "key", "public", "-i", priv, "-o", pub)
	runTool(t, "auth", "key", "private", "-o", otherPriv)
	// token signs a token into a file and returns the file and the token.
	token := func(agentID, role, audience, duration, key string) (string, string) {
		file := filepath.Join(dir, strings.Join([]string{agentID, role, audience, duration, filepath.Base(key)}, "-")+".b64")
		args := []string{"auth", "jwt", "token", "--agent-id", agentID, "--role", role, "--duration", duration, "-i", key, "-o", file}
		if audience != "" {
			args = append(args, "--audience", audience)
		}
		runTool(t, args...)
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		return file, strings.TrimSpace(string(b))
	}
	web := startHTTPOrigin(t, false)
	p := startProxy(t, "--auth.type=jwt", "--auth.jwt.public-key="+pub, "--auth.jwt.audience=e2e")
	agentFile, agentTok := token("4711", "agent", "e2e", "1h", priv)
	startAgentArgs(t, p, "4711", append(agentArgs(p), "--auth.type=jwt", "--auth.jwt.token=file:"+agentFile)...)

	clientFile, clientTok := token("4711", "client", "e2e", "1h", priv)
	_, other := token("4712", "client", "e2e", "1h", priv)
	_, wrongAud := token("4711", "client", "not-e2e", "1h", priv)
	_, noAud := token("4711", "client", "", "1h", priv)
	_, otherKey := token("4711", "client", "e2e", "1h", otherPriv)

	t.Run("group", func(t *testing.T) {
		t.Run("client token", func(t *testing.T) {
			t.Parallel()
			status, body, err := get(p.httpAddr, "4711", web.url("/hello"))
			if err != nil || status != 407 {
				t.Errorf("password noauth: %d %q %v, want 407", status, body, err)
			}
			c := proxyClient(p.httpAddr, "4711", clientTok)
			defer c.CloseIdleConnections()
			resp, err := c.Get(web.url("/hello"))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("absolute-form with a client token: %s", resp.Status)
			}
			out, err := curl(t, "--proxytunnel", "--proxy", "http://"+p.httpAddr, "--proxy-user", "4711:"+clientTok, web.url("/hello"))
			if err != nil || out != "hello\n" {
				t.Errorf("curl CONNECT with the token from %s: %q %v", clientFile, out, err)
			}
		})

		rejected := []struct{ name, user, password string }{
			{"token for another agent", "4711", other},
			{"agent-role token", "4711", agentTok},
			{"wrong audience", "4711", wrongAud},
			{"no audience", "4711", noAud},
			{"signed by another key", "4711", otherKey},
			{"not a token", "4711", "noauth"},
			{"tampered", "4711", clientTok[:len(clientTok)-4] + "AAAA"},
		}
		for _, tc := range rejected {
			t.Run("rejects "+tc.name, func(t *testing.T) {
				t.Parallel()
				for _, method := range []string{"CONNECT", "GET"} {
					raw := connectHeader(web.addr, basicAuth(tc.user, tc.password))
					if method == "GET" {
						raw = "GET " + web.url("/hello") + " HTTP/1.1\r\nHost: " + web.addr + "\r\nProxy-Authorization: " + basicAuth(tc.user, tc.password) + "\r\n\r\n"
					}
					resp, body, err := rawRequest(p.httpAddr, method, []byte(raw))
					if err != nil {
						t.Fatal(err)
					}
					checkRefusal(t, resp, body, 407)
				}
			})
		}

		t.Run("token for an absent agent", func(t *testing.T) {
			t.Parallel()
			// Authenticated as 4712, which is not connected.
			resp, body, err := rawRequest(p.httpAddr, "CONNECT", []byte(connectHeader(web.addr, basicAuth("4712", other))))
			if err != nil {
				t.Fatal(err)
			}
			checkRefusal(t, resp, body, 503)
		})

		t.Run("expired token", func(t *testing.T) {
			t.Parallel()
			// exp is 1s after signing (whole seconds), the proxy allows 5s
			// of clock skew: accepted now, refused within 7s.
			signed := time.Now()
			_, expiring := token("4711", "client", "e2e", "1s", priv)
			try := func() int {
				tn, err := dialConnect(p.httpAddr, web.addr, basicAuth("4711", expiring), nil)
				if err != nil {
					t.Fatal(err)
				}
				tn.Close()
				return tn.resp.StatusCode
			}
			if s := try(); s != 200 {
				t.Fatalf("fresh short-lived token: %d, want 200", s)
			}
			var flipped time.Duration
			err := waitFor(15*time.Second, func() error {
				if s := try(); s != 407 {
					return fmt.Errorf("status %d, want 407", s)
				}
				flipped = time.Since(signed)
				return nil
			})
			if err != nil {
				t.Fatalf("1s token still accepted %s after it was signed: %v", time.Since(signed).Round(time.Millisecond), err)
			}
			if flipped < 4*time.Second {
				t.Errorf("1s token refused %s after signing, before exp + 5s leeway", flipped.Round(time.Millisecond))
			}
			t.Logf("1s token refused %s after it was signed (5s leeway)", flipped.Round(time.Millisecond))
		})

		t.Run("agent with a client token", func(t *testing.T) {
			t.Parallel()
			file, _ := token("4711", "client", "e2e", "1h", priv)
			before := p.count("agent authentication failed")
			bad := startProcess(t, "agent with client token", append(agentArgs(p),
				"--auth.type=jwt", "--auth.jwt.token=file:"+file, "--agent-client.backoff-max=500ms")...)
			// Refused, and refused again when it retries.
			p.waitLog(t, 15*time.Second, before+2, "agent authentication failed")
			bad.waitLog(t, 15*time.Second, 2, "proxy refused authentication")
			if n := p.count("agent connected", "agent", "4711"); n != 1 {
				t.Errorf("proxy registered agent 4711 %d times, want 1 (the agent-role token's)", n)
			}
		})
	})

	mustGetHelloAuth(t, p, "4711", clientTok, web)
}

// mustGetHelloAuth fails the test unless /hello answers through the proxy
// with these credentials.
func mustGetHelloAuth(t testing.TB, p *proxyProc, user, password string, web *httpOrigin) {
	t.Helper()
	c := proxyClient(p.httpAddr, user, password)
	defer c.CloseIdleConnections()
	resp, err := c.Get(web.url("/hello"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /hello as %s: %s", user, resp.Status)
	}
}
