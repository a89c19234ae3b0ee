package cli_test

import (
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/reverse-http/reverse-http/internal/auth"
)

// jwksServer serves a JWKS of one ES256 key, kid "k1", on loopback.
func jwksServer(t *testing.T) *httptest.Server {
	t.Helper()
	signer, err := auth.GenerateKey("ES256")
	if err != nil {
		t.Fatal(err)
	}
	b, err := signer.Public().(*ecdsa.PublicKey).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	doc, _ := json.Marshal(map[string]any{"keys": []any{map[string]any{
		"kty": "EC", "crv": "P-256", "kid": "k1", "x": b64(b[1:33]), "y": b64(b[33:]),
	}}})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(doc) }))
	t.Cleanup(srv.Close)
	return srv
}

// TestJWKSFlagErrors: the JWKS settings that cannot work stop the proxy
// and the lb at start with one line naming the flag.
func TestJWKSFlagErrors(t *testing.T) {
	isolate(t)
	f := newFiles(t)
	url := "http://127.0.0.1:1/jwks"
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no issuer", []string{"--auth.type=jwt", "--auth.jwt.jwks-url=" + url}, "--auth.jwt.issuer: required with --auth.jwt.jwks-url"},
		{"issuer alone", []string{"--auth.type=jwt", "--auth.jwt.public-key=" + f.authPublic, "--auth.jwt.issuer=idp"}, "--auth.jwt.issuer needs --auth.jwt.jwks-url"},
		{"noauth", []string{"--auth.jwt.jwks-url=" + url, "--auth.jwt.issuer=idp"}, "--auth.jwt.jwks-url needs --auth.type=jwt"},
		{"plain http elsewhere", []string{"--auth.type=jwt", "--auth.jwt.jwks-url=http://idp.invalid/jwks", "--auth.jwt.issuer=idp"}, "--auth.jwt.jwks-url: http to idp.invalid"},
		{"not a URL", []string{"--auth.type=jwt", "--auth.jwt.jwks-url=idp/jwks", "--auth.jwt.issuer=idp"}, "--auth.jwt.jwks-url"},
		{"refresh too short", []string{"--auth.type=jwt", "--auth.jwt.jwks-url=" + url, "--auth.jwt.issuer=idp", "--auth.jwt.jwks-refresh=1s"}, "--auth.jwt.jwks-refresh: must be at least 10s"},
		{"public key is a private key", []string{"--auth.type=jwt", "--auth.jwt.jwks-url=" + url, "--auth.jwt.issuer=idp", "--auth.jwt.public-key=" + f.authPrivate}, "--auth.jwt.public-key"},
		{"public key is a directory", []string{"--auth.type=jwt", "--auth.jwt.jwks-url=" + url, "--auth.jwt.issuer=idp", "--auth.jwt.public-key=" + f.dir}, "--auth.jwt.public-key"},
	} {
		for _, role := range []string{"proxy", "lb"} {
			t.Run(role+" "+tc.name, func(t *testing.T) {
				args := append(proxyArgs(), tc.args...)
				if role == "lb" {
					args = append([]string{"lb", "--http-proxy.listen-address=127.0.0.1:0", "--store.memcached.address=127.0.0.1:1"}, tc.args...)
				}
				r := runCmd(t, "", 5*time.Second, args...)
				if r.code == 0 || !strings.Contains(r.stderr, tc.want) || strings.Count(r.stderr, "\n") != 1 {
					t.Errorf("exit %d, stderr:\n%s\nwant one line with %q", r.code, r.stderr, tc.want)
				}
			})
		}
	}
}

// TestJWKSStart: a proxy with a JWKS and no local key file starts, says
// which keys verify tokens, fetches the keys, and stops cleanly (the
// fetching goroutine ends with Run). The URL may come from the
// environment, the issuer from a config file.
func TestJWKSStart(t *testing.T) {
	isolate(t)
	srv := jwksServer(t)
	missing := filepath.Join(t.TempDir(), "no-such-key.pem")
	t.Setenv("REVERSE_HTTP_AUTH_JWT_JWKS_URL", srv.URL+"/jwks")
	cfg := writeFile(t, t.TempDir(), "config.yaml", "proxy:\n  auth.jwt.issuer: https://idp.test\n")
	r := start(t, proxyArgs("--config", cfg, "--auth.type=jwt", "--auth.jwt.public-key="+missing)...)
	line := r.waitFor("verifying tokens with the identity provider's keys")
	for key, want := range map[string]string{"jwks_url": srv.URL + "/jwks", "issuer": "https://idp.test", "public_key": "none", "refresh": "5m0s"} {
		if got := logAttr(t, line, key); got != want {
			t.Errorf("%s=%q, want %q in %s", key, got, want, line)
		}
	}
	line = r.waitFor("JWKS keys loaded")
	if got := logAttr(t, line, "kids"); got != "[k1]" {
		t.Errorf("kids=%q in %s", got, line)
	}
	r.waitFor(proxyReady)
	if code := r.stop(); code != 0 {
		t.Errorf("exit %d; stderr:\n%s", code, r.stderr)
	}
}
