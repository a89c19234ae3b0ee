package metrics

import (
	"slices"
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
