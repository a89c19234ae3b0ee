package cli

import (
	"context"
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/reverse-http/reverse-http/internal/auth"
)

// A reload keeps the running key set and its settings: a new JWKS URL or
// issuer is reported as needing a restart, and the reloaded authenticator
// still verifies the running provider's tokens with the running issuer.
func TestJWKSReload(t *testing.T) {
	signer, err := auth.GenerateKey("ES256")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := signer.Public().(*ecdsa.PublicKey).Bytes()
	b64 := base64.RawURLEncoding.EncodeToString
	doc, _ := json.Marshal(map[string]any{"keys": []any{map[string]any{"kty": "EC", "crv": "P-256", "kid": "k1", "x": b64(b[1:33]), "y": b64(b[33:])}}})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(doc) }))
	defer srv.Close()

	dir := t.TempDir()
	cfg := filepath.Join(dir, "proxy.yaml")
	missing := filepath.Join(dir, "no-key.pem")
	writeConfig(t, cfg, "proxy:\n  auth.type: jwt\n  auth.jwt.jwks-url: "+srv.URL+"/a\n  auth.jwt.issuer: iss-a\n  auth.jwt.public-key: "+missing+"\n")
	e, cli := reloadEnv(t, []string{"proxy", "--config", cfg})
	e.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	cs, err := newClientSide(e, cli.Proxy.Auth, nil, HTTPProxyTLS{}, ConnectorTLS{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- cs.run(ctx, func(ctx context.Context) error { <-ctx.Done(); return nil }) }()
	defer func() { cancel(); <-done }()

	token := func(iss string) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{"agent_id": "4711", "role": "client", "iss": iss, "exp": time.Now().Add(time.Hour).Unix()})
		tok.Header["kid"] = "k1"
		s, err := tok.SignedString(signer)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if _, err := cs.auth.Client(auth.Credentials{User: "4711", Password: token("iss-a")}); err != nil {
		t.Fatalf("provider token at start: %v", err)
	}

	writeConfig(t, cfg, "proxy:\n  auth.type: jwt\n  auth.jwt.jwks-url: "+srv.URL+"/b\n  auth.jwt.issuer: iss-b\n  auth.jwt.public-key: "+missing+"\n")
	load := clientSideReload(e, nil, cs, cli.Proxy.Auth, nil, func(next *CLI) (func() error, AuthVerifier, []string) {
		return next.Proxy.validate, next.Proxy.Auth, next.Proxy.HTTPProxy.HostWhitelist
	})
	u, err := load()
	if err != nil {
		t.Fatal(err)
	}
	for _, flag := range []string{"--auth.jwt.jwks-url", "--auth.jwt.issuer"} {
		if !slices.Contains(u.Restart, flag) {
			t.Errorf("restart %v, want %s", u.Restart, flag)
		}
	}
	if _, err := u.Auth.Client(auth.Credentials{User: "4711", Password: token("iss-a")}); err != nil {
		t.Errorf("running issuer's token after the reload: %v", err)
	}
	if _, err := u.Auth.Client(auth.Credentials{User: "4711", Password: token("iss-b")}); err == nil {
		t.Error("the new issuer applied without a restart")
	}
}
