package reload_test

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/reverse-http/reverse-http/internal/reload"
)

func TestOnce(t *testing.T) {
	for _, c := range []struct {
		name    string
		update  *reload.Update
		err     error
		applied bool
		want    []string // the log lines, in order, as substrings
	}{
		{"refused", nil, errors.New("--agent-client.host-whitelist: bad pattern"), false,
			[]string{`level=ERROR msg="configuration reload refused, keeping the previous configuration" error="--agent-client.host-whitelist: bad pattern" took=`}},
		{"nothing changed", &reload.Update{}, nil, true,
			[]string{`level=INFO msg="configuration reloaded: nothing changed" took=`}},
		{"changed and restart", &reload.Update{Changed: []string{"--log.level", "--http-proxy.host-whitelist"}, Restart: []string{"--store.type"}}, nil, true,
			[]string{
				`level=WARN msg="setting --store.type changed on reload: restart to apply" setting=--store.type`,
				`level=INFO msg="configuration reloaded" changed=--log.level,--http-proxy.host-whitelist took=`,
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&buf, nil))
			var order []string
			if c.update != nil {
				c.update.Apply = func() { order = append(order, "caller") }
			}
			got := reload.Once(log, func() (*reload.Update, error) { return c.update, c.err },
				func(*reload.Update) { order = append(order, "role") })
			if got != c.applied {
				t.Fatalf("applied %v, want %v", got, c.applied)
			}
			if c.applied && strings.Join(order, ",") != "role,caller" {
				t.Fatalf("applied in order %v, want role then caller", order)
			}
			if !c.applied && len(order) != 0 {
				t.Fatalf("a refused update applied: %v", order)
			}
			lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
			if len(lines) != len(c.want) {
				t.Fatalf("log:\n%s\nwant %d lines", buf.String(), len(c.want))
			}
			for i, w := range c.want {
				if !strings.Contains(lines[i], w) {
					t.Errorf("line %d: %s\nwant it to contain %s", i, lines[i], w)
				}
			}
		})
	}
}

// TestThen: Then chains after what Apply did, also when Apply was nil.
func TestThen(t *testing.T) {
	var order []string
	u := &reload.Update{}
	u.Then(func() { order = append(order, "a") })
	u.Then(func() { order = append(order, "b") })
	u.Apply()
	if got := strings.Join(order, ","); got != "a,b" {
		t.Fatalf("applied %q, want a,b", got)
	}
}
