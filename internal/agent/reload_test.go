package agent

import (
	"errors"
	"strconv"
	"testing"

	"github.com/reverse-http/reverse-http/internal/allow"
	"github.com/reverse-http/reverse-http/internal/wire"
)

// SetAllow swaps the allowlist for the dials that follow, names and
// addresses alike, and the re-allowing of local addresses with it.
func TestSetAllowSwapsAllowlist(t *testing.T) {
	ap, _ := acceptingListener(t)
	port := strconv.Itoa(int(ap.Port()))
	a := newSafetyAgent(t, Config{BlockLocal: true, Lookup: fakeDNS(t, map[string][]string{"svc.test": {"127.0.0.1"}})},
		"127.0.0.1:"+port, "svc.test:"+port)
	for _, target := range []string{"127.0.0.1:" + port, "svc.test:" + port} {
		if err := dialResult(a, target); err != nil {
			t.Fatalf("%s before the swap: %v", target, err)
		}
	}
	l, err := allow.Parse([]string{"other.test"})
	if err != nil {
		t.Fatal(err)
	}
	a.SetAllow(l)
	for _, target := range []string{"127.0.0.1:" + port, "svc.test:" + port} {
		if err := dialResult(a, target); !errors.Is(err, wire.ErrDenied) {
			t.Fatalf("%s after the swap: %v, want denied", target, err)
		}
	}
	// An empty list allows every name again, but not the local address
	// that only the old list re-allowed.
	a.SetAllow(nil)
	if err := dialResult(a, "127.0.0.1:"+port); !errors.Is(err, wire.ErrDenied) {
		t.Fatalf("local address with an empty list and block-local: %v, want denied", err)
	}
}
