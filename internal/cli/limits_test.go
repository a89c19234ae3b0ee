package cli_test

import (
	"strings"
	"testing"
	"time"
)

// TestInvalidLimits: a limit that cannot work stops proxy and lb with one
// line naming the flag.
func TestInvalidLimits(t *testing.T) {
	isolate(t)
	lb := func(extra ...string) []string {
		return append([]string{"lb", "--http-proxy.listen-address=127.0.0.1:0"}, extra...)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{proxyArgs("--limits.tunnels-per-agent=-1"), "--limits.tunnels-per-agent"},
		{proxyArgs("--limits.tunnels-per-client=-1"), "--limits.tunnels-per-client"},
		{proxyArgs("--limits.agents=-1"), "--limits.agents"},
		{proxyArgs("--limits.agent-handshakes-per-second=-1"), "--limits.agent-handshakes-per-second"},
		{proxyArgs("--limits.tunnel-idle-timeout=-1s"), "--limits.tunnel-idle-timeout"},
		{proxyArgs("--http-proxy.max-header-bytes=0"), "--http-proxy.max-header-bytes"},
		{proxyArgs("--http-proxy.read-header-timeout=0s"), "--http-proxy.read-header-timeout"},
		{lb("--limits.tunnels-per-client=-5"), "--limits.tunnels-per-client"},
		{lb("--limits.tunnel-idle-timeout=-1s"), "--limits.tunnel-idle-timeout"},
		{lb("--http-proxy.max-header-bytes=-1"), "--http-proxy.max-header-bytes"},
		{lb("--http-proxy.read-header-timeout=-1s"), "--http-proxy.read-header-timeout"},
	} {
		t.Run(strings.Join(tc.args[len(tc.args)-1:], " "), func(t *testing.T) {
			r := runCmd(t, "", 5*time.Second, tc.args...)
			if r.code == 0 {
				t.Fatalf("%q exited 0; stderr:\n%s", tc.args, r.stderr)
			}
			if msg := strings.TrimSuffix(r.stderr, "\n"); !strings.Contains(msg, tc.want) || strings.Contains(msg, "\n") {
				t.Errorf("%q: want one line naming %s, got:\n%s", tc.args, tc.want, r.stderr)
			}
		})
	}
}
