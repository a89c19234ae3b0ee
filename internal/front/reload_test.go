package front_test

import (
	"testing"
	"time"

	"github.com/reverse-http/reverse-http/internal/allow"
	"github.com/reverse-http/reverse-http/internal/auth"
)

// SetAllow and SetAuth apply to the next request.
func TestSetAllowAndSetAuth(t *testing.T) {
	h := newHandler(t, "a.test:443")
	connect := func(host, user, pass string) int {
		return serve(t, h, "CONNECT "+host+" HTTP/1.1\r\nHost: "+host+"\r\nProxy-Authorization: "+basic(user, pass)+"\r\n\r\n").Code
	}
	// 503: allowed and authenticated, and no agent is connected.
	if got := connect("a.test:443", "4711", "noauth"); got != 503 {
		t.Fatalf("allowed destination: %d, want 503", got)
	}
	if got := connect("b.test:443", "4711", "noauth"); got != 403 {
		t.Fatalf("other destination: %d, want 403", got)
	}

	l, err := allow.Parse([]string{"b.test:443"})
	if err != nil {
		t.Fatal(err)
	}
	h.SetAllow(l)
	if got := connect("a.test:443", "4711", "noauth"); got != 403 {
		t.Fatalf("after SetAllow, the old destination: %d, want 403", got)
	}
	if got := connect("b.test:443", "4711", "noauth"); got != 503 {
		t.Fatalf("after SetAllow, the new destination: %d, want 503", got)
	}

	key, err := auth.GenerateKey("ES256")
	if err != nil {
		t.Fatal(err)
	}
	h.SetAuth(auth.JWT(auth.NewVerifier(key.Public(), "")))
	if got := connect("b.test:443", "4711", "noauth"); got != 407 {
		t.Fatalf("after SetAuth, noauth: %d, want 407", got)
	}
	tok, err := auth.Sign(key, auth.TokenOptions{AgentID: "4711", Role: auth.RoleClient, Duration: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if got := connect("b.test:443", "4711", tok); got != 503 {
		t.Fatalf("after SetAuth, a token of the key: %d, want 503", got)
	}
}
