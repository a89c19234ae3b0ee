package metrics

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
)

func TestRedactArgs(t *testing.T) {
	const jwt = "eyJhbGciOiJFUzI1NiJ9.eyJhZ2VudF9pZCI6IjQ3MTEifQ.c2ln"
	for _, tc := range []struct{ in, want []string }{
		{[]string{"rh", "agent", "--auth.jwt.token=" + jwt}, []string{"rh", "agent", "--auth.jwt.token=REDACTED"}},
		{[]string{"rh", "agent", "--auth.jwt.token", jwt, "--x"}, []string{"rh", "agent", "--auth.jwt.token", "REDACTED", "--x"}},
		{[]string{"rh", "--auth.jwt.token=file:/etc/agent.jwt"}, []string{"rh", "--auth.jwt.token=file:/etc/agent.jwt"}},
		{[]string{"rh", "--auth.jwt.token", "file:a.jwt"}, []string{"rh", "--auth.jwt.token", "file:a.jwt"}},
		{[]string{"rh", "--http-proxy.tls.key-password=hunter2"}, []string{"rh", "--http-proxy.tls.key-password=REDACTED"}},
		{[]string{"rh", "--http-connector.tls.file.key-password", "pw"}, []string{"rh", "--http-connector.tls.file.key-password", "REDACTED"}},
		{[]string{"rh", "--auth.jwt.token="}, []string{"rh", "--auth.jwt.token=REDACTED"}},
		{[]string{"rh", "--auth.jwt.token"}, []string{"rh", "--auth.jwt.token"}},
		{[]string{"rh", "--auth.noauth.agent-id=4711", "--tokens=x"}, []string{"rh", "--auth.noauth.agent-id=4711", "--tokens=x"}},
		{[]string{"rh", "--", "--auth.jwt.token=x"}, []string{"rh", "--", "--auth.jwt.token=x"}},
	} {
		in := slices.Clone(tc.in)
		if got := RedactArgs(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("RedactArgs(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if !slices.Equal(in, tc.in) {
			t.Errorf("RedactArgs modified its argument: %q", tc.in)
		}
	}
}

func TestCmdlineRedacted(t *testing.T) {
	const secret = "eyJhbGciOiJFUzI1NiJ9.secret-part.sig"
	old := os.Args
	os.Args = []string{"reverse-http", "agent", "--auth.jwt.token=" + secret}
	defer func() { os.Args = old }()

	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New().ServeListener(ctx, ln, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	resp, err := http.Get("http://" + ln.Addr().String() + "/debug/pprof/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.Contains(string(body), "secret-part") ||
		string(body) != "reverse-http\x00agent\x00--auth.jwt.token=REDACTED" {
		t.Fatalf("cmdline: %s %q", resp.Status, body)
	}
}
