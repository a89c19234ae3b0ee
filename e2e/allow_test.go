package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestAllowlists runs the proxy and the agent with allowlists of several
// pattern forms and checks which side lets which destination through.
func TestAllowlists(t *testing.T) {
	t.Parallel()
	web := startHTTPOrigin(t, false)
	echoSrv := startEcho(t)
	P, E := strconv.Itoa(web.port), strconv.Itoa(echoSrv.port)
	p := startProxy(t, "--http-proxy.host-whitelist="+strings.Join([]string{
		"127.0.0.0/8:" + P,      // CIDR, one port
		"localhost:" + E,        // name, one port
		"*.e2e.invalid:80-81",   // zone, port range
		"10.0.0.1/8",            // CIDR with host bits, every port
		"[2001:db8::1]/64:" + P, // IPv6 CIDR
	}, ","))
	startAgent(t, p, "4711", "--agent-client.host-whitelist="+strings.Join([]string{
		"127.0.0.1/32:" + P + "-" + P, // CIDR, port range
		"LOCALHOST",                   // name, case-insensitive, every port
		"a.e2e.invalid:80",            // name, one port
	}, ","))

	const (
		ok        = "ok"
		byProxy   = "proxy's allowlist"
		byAgent   = "agent's allowlist"
		unresolve = "cannot resolve"
	)
	cases := []struct {
		target string
		want   string
	}{
		{"127.0.0.1:" + P, ok},
		{"[::ffff:127.0.0.1]:" + P, ok}, // IPv4-mapped is the IPv4 address
		{"localhost:" + E, ok},
		{"LocalHost:" + E, ok},
		{"127.0.0.2:" + P, byAgent},
		{"[::ffff:127.0.0.2]:" + P, byAgent},
		{"10.1.2.3:" + P, byAgent},
		{"[2001:db8::2]:" + P, byAgent},
		{"a.e2e.invalid:80", unresolve},
		{"a.e2e.invalid:81", byAgent},
		{"b.e2e.invalid:80", byAgent},
		{"e2e.invalid:80", byAgent}, // a zone includes its apex
		{"127.0.0.1:" + E, byProxy},
		{"localhost:" + P, byProxy},
		{"a.e2e.invalid:82", byProxy},
		{"xe2e.invalid:80", byProxy},
		{"192.0.2.1:" + P, byProxy},
		{"[::1]:" + P, byProxy},
		{"[2001:db9::1]:" + P, byProxy},
	}
	auth := basicAuth("4711", "noauth")
	for _, tc := range cases {
		t.Run(tc.target, func(t *testing.T) {
			t.Parallel()
			tn, err := dialConnect(p.httpAddr, tc.target, auth, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tn.Close()
			if tc.want == ok {
				if tn.resp.StatusCode != 200 {
					body, _ := io.ReadAll(tn.resp.Body)
					t.Fatalf("CONNECT %s: %s %q, want 200", tc.target, tn.resp.Status, body)
				}
				if strings.HasSuffix(tc.target, ":"+E) {
					echoOnce(t, tn, "allowed "+tc.target)
				} else {
					io.WriteString(tn, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
					if all, _ := io.ReadAll(tn); !bytes.HasSuffix(all, []byte("\r\nhello\n")) {
						t.Errorf("GET /hello through the tunnel: %q", all)
					}
				}
				return
			}
			body, _ := io.ReadAll(tn.resp.Body)
			want := 403
			if tc.want == unresolve {
				want = 502
			}
			checkRefusal(t, tn.resp, body, want)
			if !strings.Contains(string(body), tc.want) {
				t.Errorf("reason %q, want it to mention %q", body, tc.want)
			}
		})
	}

	t.Run("absolute-form", func(t *testing.T) {
		t.Parallel()
		for target, want := range map[string]int{
			"127.0.0.1:" + P: 200,
			"127.0.0.2:" + P: 403,
			"localhost:" + P: 403,
		} {
			status, body, err := get(p.httpAddr, "4711", "http://"+target+"/hello")
			if err != nil || status != want {
				t.Errorf("GET http://%s/hello: %d %q %v, want %d", target, status, body, err, want)
			}
		}
	})

	t.Run("bad pattern fails startup", func(t *testing.T) {
		t.Parallel()
		for _, args := range [][]string{
			{"proxy", "--http-proxy.listen-address=127.0.0.1:0", "--agent-server.listen-address=127.0.0.1:0",
				"--http-proxy.host-whitelist=localhost:99999"},
			{"proxy", "--http-proxy.listen-address=127.0.0.1:0", "--agent-server.listen-address=127.0.0.1:0",
				"--http-proxy.host-whitelist=10.0.0.256"},
			{"agent", "--auth.noauth.agent-id=4711", "--agent-client.server-address=127.0.0.1:9",
				"--agent-client.host-whitelist=*.:80"},
		} {
			out, err := runExpectFailure(args...)
			if err != nil {
				t.Error(err)
			} else if !strings.Contains(out, "host-whitelist") {
				t.Errorf("reverse-http %s: error does not name the flag:\n%s", strings.Join(args, " "), out)
			}
		}
	})
}

// runExpectFailure runs the binary, which must exit with a non-zero status
// within 10s; it returns the output.
func runExpectFailure(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Env = childEnv()
	cmd.SysProcAttr = childSysProcAttr()
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return string(out), errors.New("reverse-http " + strings.Join(args, " ") + ": still running after 10s, want a startup error")
	case err == nil:
		return string(out), errors.New("reverse-http " + strings.Join(args, " ") + ": exit status 0, want a startup error")
	case !errors.As(err, &ee):
		return string(out), err
	}
	return string(out), nil
}
