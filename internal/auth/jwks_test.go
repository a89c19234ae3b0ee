package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// pubJWK is the JWK of a public key with kid (and alg, if not "").
func pubJWK(kid string, pub crypto.PublicKey, alg string) map[string]any {
	b64 := base64.RawURLEncoding.EncodeToString
	m := map[string]any{"kid": kid}
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		size := (k.Curve.Params().BitSize + 7) / 8
		b, err := k.Bytes()
		if err != nil {
			panic(err)
		}
		m["kty"], m["crv"], m["x"], m["y"] = "EC", k.Curve.Params().Name, b64(b[1:1+size]), b64(b[1+size:])
	case *rsa.PublicKey:
		m["kty"], m["n"], m["e"] = "RSA", b64(k.N.Bytes()), b64(big.NewInt(int64(k.E)).Bytes())
	case ed25519.PublicKey:
		m["kty"], m["crv"], m["x"] = "OKP", "Ed25519", b64(k)
	default:
		panic(fmt.Sprintf("pubJWK: %T", pub))
	}
	if alg != "" {
		m["alg"] = alg
	}
	return m
}

// jwksDoc is a JWKS of keys.
func jwksDoc(keys ...map[string]any) []byte {
	b, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		panic(err)
	}
	return b
}

// signKID signs claims with key by alg, with kid in the header ("" leaves
// it out).
func signKID(t testing.TB, alg, kid string, c jwt.Claims, key any) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(alg), c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("sign %s: %v", alg, err)
	}
	return s
}

// providerClaims are a client or agent token's claims as an identity
// provider would issue them.
func providerClaims(agentID, role, iss string, now time.Time) Claims {
	return Claims{AgentID: agentID, Role: role, RegisteredClaims: jwt.RegisteredClaims{
		Issuer: iss, Audience: jwt.ClaimStrings{"rh"},
		ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)), IssuedAt: jwt.NewNumericDate(now),
	}}
}

var p384Key = sync.OnceValue(func() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
})

var edKey = sync.OnceValue(func() ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
})

func TestParseJWKS(t *testing.T) {
	k := testKeys()
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	with := func(m map[string]any, kv ...any) map[string]any {
		out := map[string]any{}
		for k, v := range m {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(out, kv[i].(string))
			} else {
				out[kv[i].(string)] = kv[i+1]
			}
		}
		return out
	}
	ec := pubJWK("ec", k.ec.Public(), "")
	good := []map[string]any{ec,
		pubJWK("ec384", p384Key().Public(), "ES384"),
		pubJWK("rsa", k.rsa.Public(), ""),
		pubJWK("ps", k.rsa2.Public(), "PS256"),
		pubJWK("ed", edKey().Public(), "EdDSA"),
	}
	keys, skipped, err := parseJWKS(jwksDoc(good...))
	if err != nil || len(skipped) != 0 {
		t.Fatalf("parseJWKS(good keys) = %v, skipped %q", err, skipped)
	}
	for kid, want := range map[string]string{"ec": "ES256", "ec384": "ES384", "rsa": "RS256,RS384,RS512", "ps": "PS256", "ed": "EdDSA"} {
		if got := strings.Join(keys[kid].algs, ","); got != want {
			t.Errorf("kid %s: algs %s, want %s", kid, got, want)
		}
	}
	if !keys["ec"].key.(*ecdsa.PublicKey).Equal(k.ec.Public()) || !keys["rsa"].key.(*rsa.PublicKey).Equal(k.rsa.Public()) {
		t.Error("keys do not round-trip")
	}

	// Keys that are skipped, each next to one good key, and why.
	skips := []struct {
		name string
		key  any
		want string
	}{
		{"symmetric", map[string]any{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}, "symmetric key"},
		{"encryption key", with(ec, "kid", "e", "use", "enc"), `use "enc"`},
		{"no kid", with(ec, "kid", nil), "no kid"},
		{"long kid", with(ec, "kid", strings.Repeat("k", 300)), "kid longer"},
		{"same kid", with(pubJWK("ec", k.ec2.Public(), "")), "another key before it has this kid"},
		{"private", with(ec, "kid", "p", "d", "AAAA"), "private key"},
		{"HMAC alg", with(ec, "kid", "h", "alg", "HS256"), "only asymmetric"},
		{"none alg", with(ec, "kid", "n", "alg", "none"), "only asymmetric"},
		{"alg mismatch", with(ec, "kid", "m", "alg", "ES384"), "does not match curve"},
		{"RSA alg on EC", with(pubJWK("r", k.rsa.Public(), ""), "alg", "ES256"), "not an RSA signature algorithm"},
		{"key_ops", with(ec, "kid", "o", "key_ops", []string{"encrypt"}), "key_ops"},
		{"no kty", with(ec, "kid", "t", "kty", nil), "no kty"},
		{"unknown kty", with(ec, "kid", "t", "kty", "XYZ"), "unsupported kty"},
		{"unknown curve", with(ec, "kid", "c", "crv", "secp256k1"), "unsupported EC curve"},
		{"short x", with(ec, "kid", "x", "x", "AAAA"), "must be 32 bytes"},
		{"no y", with(ec, "kid", "y", "y", nil), "no y"},
		{"padded x", with(ec, "kid", "x", "x", ec["x"].(string)+"="), "base64url"},
		{"off the curve", with(ec, "kid", "c", "y", ec["x"]), "invalid P-256 point"},
		{"small RSA", pubJWK("r", small.Public(), ""), "1024 bits"},
		{"even exponent", with(pubJWK("r", k.rsa.Public(), ""), "e", "AQAA"), "exponent"},
		{"exponent 1", with(pubJWK("r", k.rsa.Public(), ""), "e", "AQ"), "exponent"},
		{"long exponent", with(pubJWK("r", k.rsa.Public(), ""), "e", "AQAAAAAB"), "exponent of 6 bytes"},
		{"huge modulus", with(pubJWK("r", k.rsa.Public(), ""), "n", base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{0xff}, 1100))), "longer than 8192 bits"},
		{"even modulus", with(pubJWK("r", k.rsa.Public(), ""), "n", base64.RawURLEncoding.EncodeToString(append(k.rsa.N.Bytes()[:255], 2))), "even"},
		{"Ed448", with(pubJWK("d", edKey().Public(), ""), "crv", "Ed448"), "unsupported OKP curve"},
		{"short Ed25519", with(pubJWK("d", edKey().Public(), ""), "x", "AAAA"), "must be 32 bytes"},
		{"not an object", "a string", "not a JWK"},
		{"wrong member type", with(ec, "kid", 7), "not a JWK"},
	}
	for _, tc := range skips {
		t.Run("skips "+tc.name, func(t *testing.T) {
			raw, _ := json.Marshal(map[string]any{"keys": []any{ec, tc.key}})
			keys, skipped, err := parseJWKS(raw)
			if err != nil {
				t.Fatalf("parseJWKS: %v", err)
			}
			if len(keys) != 1 || keys["ec"].key == nil {
				t.Errorf("keys %v, want only ec", kidList(keys))
			}
			if len(skipped) != 1 || !strings.Contains(skipped[0], tc.want) || !strings.HasPrefix(skipped[0], "key 1") {
				t.Errorf("skipped %q, want one reason for key 1 with %q", skipped, tc.want)
			}
		})
	}

	// Documents that are refused as a whole.
	many := make([]map[string]any, maxJWKSKeys+1)
	for i := range many {
		many[i] = with(ec, "kid", fmt.Sprint(i))
	}
	bad := []struct {
		name, doc, want string
	}{
		{"empty", "", "not a JWKS"},
		{"not JSON", "<html>", "not a JWKS"},
		{"array", "[]", "not a JWKS"},
		{"no keys", `{"kty":"EC"}`, `no "keys"`},
		{"null keys", `{"keys":null}`, `no "keys"`},
		{"keys not an array", `{"keys":{}}`, "not a JWKS"},
		{"no key", `{"keys":[]}`, "has no keys"},
		{"no usable key", `{"keys":[{"kty":"oct","kid":"a","k":"AA"}]}`, `no usable signature key (key 0 (kid "a"): symmetric`},
		{"too many", string(jwksDoc(many...)), "more than 100"},
		{"too large", `{"keys":[],"pad":"` + strings.Repeat("a", maxJWKSBytes) + `"}`, "larger than"},
	}
	for _, tc := range bad {
		t.Run("refuses "+tc.name, func(t *testing.T) {
			keys, _, err := parseJWKS([]byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("parseJWKS = %v, want an error with %q", err, tc.want)
			}
			if keys != nil {
				t.Errorf("keys %v with an error", kidList(keys))
			}
		})
	}
}

func FuzzParseJWKS(f *testing.F) {
	k := testKeys()
	f.Add(jwksDoc(pubJWK("ec", k.ec.Public(), ""), pubJWK("rsa", k.rsa.Public(), "RS256")))
	f.Add(jwksDoc(pubJWK("ed", edKey().Public(), ""), map[string]any{"kty": "oct", "kid": "o", "k": "AA"}))
	f.Add(jwksDoc(pubJWK("p", p384Key().Public(), "ES384"), map[string]any{"kty": "EC", "kid": "x", "crv": "P-256", "x": "", "y": "AA"}))
	f.Add([]byte(`{"keys":[{"kty":"RSA","kid":"a","n":"AQAB","e":"AQAB"}]}`))
	f.Add([]byte(`{"keys":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, skipped, err := parseJWKS(data)
		if err != nil {
			if keys != nil {
				t.Fatalf("keys with error %v", err)
			}
			return
		}
		if len(keys) == 0 || len(keys)+len(skipped) > maxJWKSKeys {
			t.Fatalf("%d keys, %d skipped, no error", len(keys), len(skipped))
		}
		for kid, k := range keys {
			if kid == "" || len(kid) > maxKIDLen || len(k.algs) == 0 {
				t.Fatalf("kid %q: algs %v", kid, k.algs)
			}
			for _, alg := range k.algs {
				switch m := jwt.GetSigningMethod(alg); m.(type) {
				case *jwt.SigningMethodECDSA:
					if _, ok := k.key.(*ecdsa.PublicKey); !ok {
						t.Fatalf("kid %q: %s with %T", kid, alg, k.key)
					}
				case *jwt.SigningMethodRSA, *jwt.SigningMethodRSAPSS:
					if r, ok := k.key.(*rsa.PublicKey); !ok || r.N.BitLen() < rsaMinBits || r.N.BitLen() > rsaMaxBits {
						t.Fatalf("kid %q: %s with %T", kid, alg, k.key)
					}
				case *jwt.SigningMethodEd25519:
					if _, ok := k.key.(ed25519.PublicKey); !ok {
						t.Fatalf("kid %q: %s with %T", kid, alg, k.key)
					}
				default:
					t.Fatalf("kid %q: algorithm %q (%T) accepted", kid, alg, m)
				}
			}
		}
	})
}

// staticKeys is a KeyResolver of fixed keys.
type staticKeys map[string]jwksKey

func (s staticKeys) Key(kid string) (crypto.PublicKey, []string, error) {
	if k, ok := s[kid]; ok {
		return k.key, k.algs, nil
	}
	return nil, nil, fmt.Errorf("%w %s", ErrUnknownKey, quoteKID(kid))
}

// TestVerifierWithKeySource: which key verifies which token, with and
// without a local key, and the issuer applying to the source's tokens
// only.
func TestVerifierWithKeySource(t *testing.T) {
	k := testKeys()
	now := time.Now()
	src := staticKeys{
		"ec":   {k.ec2.Public(), []string{"ES256"}},
		"rsa":  {k.rsa2.Public(), []string{"RS256", "RS384", "RS512"}},
		"ed":   {edKey().Public(), []string{"EdDSA"}},
		"p384": {p384Key().Public(), []string{"ES384"}},
	}
	const iss = "https://idp.example/realms/rh"
	both := NewVerifier(k.ec.Public(), "rh").WithKeySource(src, iss)
	only := NewVerifier(nil, "rh").WithKeySource(src, iss)

	client := providerClaims("4711", RoleClient, iss, now)
	agent := providerClaims("4711", RoleAgent, iss, now)
	local := mustSign(t, k.ec, TokenOptions{AgentID: "4711", Role: RoleClient, Audience: "rh", Duration: time.Hour})
	noIss := providerClaims("4711", RoleClient, "", now)
	otherIss := providerClaims("4711", RoleClient, "https://evil.example", now)
	noAud := providerClaims("4711", RoleClient, iss, now)
	noAud.Audience = nil
	expired := providerClaims("4711", RoleClient, iss, now.Add(-2*time.Hour))

	hmac := func() string {
		// HS256 with a published key's bytes as the secret: the classic
		// confusion attack.
		tok := jwt.NewWithClaims(jwt.SigningMethodHS256, client)
		tok.Header["kid"] = "ec"
		s, err := tok.SignedString([]byte(pubJWK("ec", k.ec2.Public(), "")["x"].(string)))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()
	none := func() string {
		tok := jwt.NewWithClaims(jwt.SigningMethodNone, client)
		tok.Header["kid"] = "ec"
		s, err := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()

	cases := []struct {
		name  string
		v     *Verifier
		token string
		role  string
		want  string // "" accepts
		is    error
	}{
		{"ES256 client token by kid", only, signKID(t, "ES256", "ec", client, k.ec2), RoleClient, "", nil},
		{"ES256 agent token by kid", only, signKID(t, "ES256", "ec", agent, k.ec2), RoleAgent, "", nil},
		{"RS512 by kid", only, signKID(t, "RS512", "rsa", client, k.rsa2), RoleClient, "", nil},
		{"ES384 by kid", only, signKID(t, "ES384", "p384", client, p384Key()), RoleClient, "", nil},
		{"EdDSA by kid", only, signKID(t, "EdDSA", "ed", client, edKey()), RoleClient, "", nil},
		{"kid token with a local key too", both, signKID(t, "ES256", "ec", client, k.ec2), RoleClient, "", nil},
		{"local token, no iss", both, local, RoleClient, "", nil},
		{"local token with an unknown kid", both, signKID(t, "ES256", "nope", noIss, k.ec), RoleClient, "", nil},

		{"local token without a local key", only, local, RoleClient, "token has no kid", nil},
		{"unknown kid", only, signKID(t, "ES256", "nope", client, k.ec2), RoleClient, `unknown key ID "nope"`, ErrUnknownKey},
		{"unknown kid, not the local key either", both, signKID(t, "ES256", "nope", client, k.ec2), RoleClient, `unknown key ID "nope", and the public key does not verify it either (token signature is invalid`, jwt.ErrTokenSignatureInvalid},
		{"kid of another key", only, signKID(t, "ES256", "ec", client, k.ec), RoleClient, "verification error", jwt.ErrTokenSignatureInvalid},
		{"kid names the local key's tokens", both, signKID(t, "ES256", "ec", client, k.ec), RoleClient, "verification error", jwt.ErrTokenSignatureInvalid},
		{"no iss", only, signKID(t, "ES256", "ec", noIss, k.ec2), RoleClient, `token issuer "", want "` + iss + `"`, jwt.ErrTokenInvalidIssuer},
		{"other iss", both, signKID(t, "ES256", "ec", otherIss, k.ec2), RoleClient, `token issuer "https://evil.example"`, jwt.ErrTokenInvalidIssuer},
		{"no aud", only, signKID(t, "ES256", "ec", noAud, k.ec2), RoleClient, "aud claim is required", jwt.ErrTokenRequiredClaimMissing},
		{"expired", only, signKID(t, "ES256", "ec", expired, k.ec2), RoleClient, "token expired", jwt.ErrTokenExpired},
		{"alg of another key type", only, signKID(t, "RS256", "ec", client, k.rsa2), RoleClient, "signing method RS256 is invalid", nil},
		{"RSA key, other RSA alg", only, signKID(t, "PS256", "rsa", client, k.rsa2), RoleClient, "signing method PS256 is invalid", nil},
		{"HS256 with the public key", both, hmac, RoleClient, "signing method HS256 is invalid", nil},
		{"alg none", both, none, RoleClient, "signing method none is invalid", nil},
		{"agent token as client", only, signKID(t, "ES256", "ec", agent, k.ec2), RoleClient, "role agent, want client", nil},
		{"malformed", only, "a.b.c", RoleClient, "malformed", jwt.ErrTokenMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.v.Verify(tc.token, tc.role)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if c.AgentID != "4711" {
					t.Errorf("agent_id %q", c.AgentID)
				}
				return
			}
			is := []error{ErrUnauthorized}
			if tc.is != nil {
				is = append(is, tc.is)
			}
			wantErr(t, err, tc.want, is...)
		})
	}

	// The Verifier it was made from is unchanged.
	if _, err := NewVerifier(k.ec.Public(), "rh").Verify(signKID(t, "ES256", "ec", client, k.ec2), RoleClient); err == nil {
		t.Error("a Verifier without the key source accepted a token of the source")
	}
}

// provider is an identity provider's JWKS endpoint in memory, as an
// http.RoundTripper: no network, so it runs inside a synctest bubble.
type provider struct {
	mu      sync.Mutex
	doc     []byte
	status  int  // 0: 200
	down    bool // connections fail
	hang    bool // requests wait for their context
	fetches []time.Time
}

func (p *provider) set(doc []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.doc = doc
}

func (p *provider) setDown(down, hang bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down, p.hang = down, hang
}

func (p *provider) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.fetches)
}

func (p *provider) RoundTrip(r *http.Request) (*http.Response, error) {
	p.mu.Lock()
	p.fetches = append(p.fetches, time.Now())
	doc, status, down, hang := p.doc, p.status, p.down, p.hang
	p.mu.Unlock()
	switch {
	case hang:
		<-r.Context().Done()
		return nil, r.Context().Err()
	case down:
		return nil, errors.New("connect: connection refused")
	}
	if status == 0 {
		status = 200
	}
	return &http.Response{StatusCode: status, Status: fmt.Sprint(status), Body: io.NopCloser(bytes.NewReader(doc)), Request: r}, nil
}

// logCounter is a slog handler that keeps the messages.
type logCounter struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCounter) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logCounter) WithGroup(string) slog.Handler            { return l }
func (l *logCounter) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, r.Level.String()+" "+r.Message)
	return nil
}

func (l *logCounter) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.msgs...)
}

func (l *logCounter) count(prefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}

// startJWKS runs a JWKS of p in the bubble until the test ends.
func startJWKS(t *testing.T, p *provider) (*JWKS, *logCounter) {
	t.Helper()
	logs := &logCounter{}
	s, err := NewJWKS(JWKSConfig{URL: "https://idp.example/jwks", Client: &http.Client{Transport: p}}, slog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s, logs
}

func hasKey(s *JWKS, kid string) error {
	_, _, err := s.Key(kid)
	return err
}

// TestJWKSRefresh: the first fetch at start (Key waits for it), a refresh
// every 5 minutes, a fetch at once for an unknown kid but at most one per
// 10s, and a rotation: the new kid verifies, the removed one not.
func TestJWKSRefresh(t *testing.T) {
	k := testKeys()
	synctest.Test(t, func(t *testing.T) {
		p := &provider{doc: jwksDoc(pubJWK("k1", k.ec.Public(), ""))}
		s, logs := startJWKS(t, p)
		if err := hasKey(s, "k1"); err != nil {
			t.Fatalf("k1 at start: %v", err)
		}
		if n := p.count(); n != 1 {
			t.Fatalf("%d fetches at start, want 1", n)
		}
		synctest.Wait()
		if logs.count("INFO JWKS keys loaded") != 1 {
			t.Errorf("logs %q", logs.all())
		}

		// Every 5 minutes, and no more while the kids asked for are known.
		for range 100 {
			_ = hasKey(s, "k1")
		}
		time.Sleep(DefaultJWKSRefresh - time.Second)
		synctest.Wait()
		if n := p.count(); n != 1 {
			t.Fatalf("%d fetches within 5m, want 1", n)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if n := p.count(); n != 2 {
			t.Fatalf("%d fetches after 5m, want 2", n)
		}

		// Rotation, 1s after that refresh: a token of k2 asks for a
		// fetch, which may come only 10s after the last; until then k2
		// is refused at once, however often it is asked for.
		p.set(jwksDoc(pubJWK("k2", k.ec2.Public(), "")))
		time.Sleep(time.Second)
		start := time.Now()
		for range 50 {
			if err := hasKey(s, "k2"); !errors.Is(err, ErrUnknownKey) {
				t.Fatalf("k2 before the rate limit allows a fetch: %v, want ErrUnknownKey", err)
			}
		}
		if time.Since(start) != 0 {
			t.Errorf("a rate-limited Key waited %s", time.Since(start))
		}
		if err := hasKey(s, "k1"); err != nil {
			t.Errorf("k1 before the refresh: %v", err)
		}
		// The fetch it asked for comes 10s after the last.
		time.Sleep(8*time.Second - time.Millisecond)
		synctest.Wait()
		if n := p.count(); n != 2 {
			t.Fatalf("%d fetches within 10s of the last, want 2", n)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if n := p.count(); n != 3 {
			t.Fatalf("%d fetches 10s after the last, want 3", n)
		}
		if err := hasKey(s, "k2"); err != nil {
			t.Errorf("k2 after the refresh: %v", err)
		}
		if err := hasKey(s, "k1"); !errors.Is(err, ErrUnknownKey) {
			t.Errorf("removed k1 after the refresh: %v, want ErrUnknownKey", err)
		}

		// More than 10s after the last fetch (the one the lookup of k1
		// asked for, 10s after k2's), an unknown kid fetches at once and
		// Key waits for it: the new key verifies on first sight.
		time.Sleep(21 * time.Second)
		p.set(jwksDoc(pubJWK("k2", k.ec2.Public(), ""), pubJWK("k3", k.ec.Public(), "")))
		if err := hasKey(s, "k3"); err != nil {
			t.Errorf("k3, 11s after the last fetch: %v", err)
		}
		if n := p.count(); n != 5 {
			t.Errorf("%d fetches, want 5", n)
		}
		// Random kids: at most one fetch per 10s.
		before := p.count()
		for i := range 600 {
			_ = hasKey(s, fmt.Sprint("random-", i))
			time.Sleep(100 * time.Millisecond)
		}
		if n := p.count() - before; n > 7 {
			t.Errorf("%d fetches in 60s of random kids, want at most 7", n)
		}
		if logs.count("WARN") != 0 {
			t.Errorf("warnings: %q", logs.all())
		}
	})
}

// TestJWKSUnreachable: a provider that stops answering leaves the cached
// keys in use; kids never seen are refused; one WARN per failure streak;
// retries back off; a hanging provider is given up after the timeout.
func TestJWKSUnreachable(t *testing.T) {
	k := testKeys()
	synctest.Test(t, func(t *testing.T) {
		p := &provider{doc: jwksDoc(pubJWK("k1", k.ec.Public(), ""))}
		s, logs := startJWKS(t, p)
		if err := hasKey(s, "k1"); err != nil {
			t.Fatal(err)
		}
		p.setDown(true, false)
		time.Sleep(DefaultJWKSRefresh + time.Second)
		synctest.Wait()
		if err := hasKey(s, "k1"); err != nil {
			t.Errorf("cached k1 while the provider is down: %v", err)
		}
		if err := hasKey(s, "never-seen"); !errors.Is(err, ErrUnknownKey) {
			t.Errorf("never-seen kid: %v, want ErrUnknownKey", err)
		}
		// Backoff: 10s, 20s, 40s, ... up to 5m.
		before := p.count()
		time.Sleep(30 * time.Minute)
		synctest.Wait()
		if n := p.count() - before; n < 6 || n > 12 {
			t.Errorf("%d fetches in 30m while down, want about 10 (backoff to 5m)", n)
		}
		if n := logs.count("WARN JWKS fetch failed, keeping the cached keys"); n != 1 {
			t.Errorf("%d warnings in one failure streak, want 1: %q", n, logs.all())
		}

		// A hanging provider: each fetch ends after the 5s timeout, and a
		// Key waiting for one returns within timeout + 1s.
		p.setDown(false, true)
		time.Sleep(DefaultJWKSRefresh)
		start := time.Now()
		if err := hasKey(s, "another"); !errors.Is(err, ErrUnknownKey) {
			t.Errorf("kid while the provider hangs: %v", err)
		}
		if d := time.Since(start); d > DefaultJWKSTimeout+time.Second {
			t.Errorf("Key waited %s for a hanging provider", d)
		}
		if err := hasKey(s, "k1"); err != nil {
			t.Errorf("cached k1 while the provider hangs: %v", err)
		}

		// Back: the next fetch loads the keys, logged once.
		p.setDown(false, false)
		p.set(jwksDoc(pubJWK("k1", k.ec.Public(), ""), pubJWK("k2", k.ec2.Public(), "")))
		time.Sleep(DefaultJWKSRefresh + time.Second)
		synctest.Wait()
		if err := hasKey(s, "k2"); err != nil {
			t.Errorf("k2 once the provider is back: %v", err)
		}
		if n := logs.count("INFO JWKS fetched again"); n != 1 {
			t.Errorf("%d recovery lines, want 1: %q", n, logs.all())
		}
		// A second streak warns again.
		p.setDown(true, false)
		time.Sleep(DefaultJWKSRefresh + time.Second)
		synctest.Wait()
		if n := logs.count("WARN JWKS fetch failed, keeping the cached keys"); n != 2 {
			t.Errorf("%d warnings after two streaks, want 2", n)
		}
	})
}

// TestJWKSBadAnswers: a bad status, a document that is not a JWKS, or
// one too large keeps the cached keys.
func TestJWKSBadAnswers(t *testing.T) {
	k := testKeys()
	for _, tc := range []struct {
		name   string
		status int
		doc    []byte
	}{
		{"status 500", 500, jwksDoc(pubJWK("k2", k.ec2.Public(), ""))},
		{"HTML", 200, []byte("<html>login</html>")},
		{"no usable key", 200, jwksDoc(map[string]any{"kty": "oct", "kid": "k2", "k": "AA"})},
		{"larger than 1 MiB", 200, append(jwksDoc(pubJWK("k2", k.ec2.Public(), "")), bytes.Repeat([]byte(" "), maxJWKSBytes)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := &provider{doc: jwksDoc(pubJWK("k1", k.ec.Public(), ""))}
				s, logs := startJWKS(t, p)
				if err := hasKey(s, "k1"); err != nil {
					t.Fatal(err)
				}
				p.mu.Lock()
				p.status, p.doc = tc.status, tc.doc
				p.mu.Unlock()
				time.Sleep(DefaultJWKSRefresh + time.Second)
				synctest.Wait()
				if err := hasKey(s, "k1"); err != nil {
					t.Errorf("cached k1: %v", err)
				}
				if err := hasKey(s, "k2"); !errors.Is(err, ErrUnknownKey) {
					t.Errorf("k2 from a bad answer: %v", err)
				}
				if n := logs.count("WARN JWKS fetch failed"); n != 1 {
					t.Errorf("%d warnings, want 1: %q", n, logs.all())
				}
			})
		})
	}
}

// TestJWKSNoKeysYet: with the provider down from the start, Key waits
// for the first fetch, then refuses every kid; the WARN says no keys.
func TestJWKSNoKeysYet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &provider{down: true}
		s, logs := startJWKS(t, p)
		err := hasKey(s, "k1")
		if !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), "no keys from the identity provider yet") {
			t.Errorf("Key with no keys: %v", err)
		}
		synctest.Wait() // the fetch logs after it ends
		if n := logs.count("WARN JWKS fetch failed, no keys yet"); n != 1 {
			t.Errorf("logs %q", logs.all())
		}
	})
}

// TestJWKSStopped: once Run has returned, Key answers from the cache at
// once and asks for no fetch.
func TestJWKSStopped(t *testing.T) {
	k := testKeys()
	synctest.Test(t, func(t *testing.T) {
		p := &provider{doc: jwksDoc(pubJWK("k1", k.ec.Public(), ""))}
		s, err := NewJWKS(JWKSConfig{URL: "https://idp.example/jwks", Client: &http.Client{Transport: p}}, slog.New(&logCounter{}))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- s.Run(ctx) }()
		if err := hasKey(s, "k1"); err != nil {
			t.Fatal(err)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run: %v", err)
		}
		time.Sleep(time.Hour)
		start := time.Now()
		if err := hasKey(s, "k2"); !errors.Is(err, ErrUnknownKey) {
			t.Errorf("Key after Run: %v", err)
		}
		if err := hasKey(s, "k1"); err != nil {
			t.Errorf("cached k1 after Run: %v", err)
		}
		if d := time.Since(start); d != 0 || p.count() != 1 {
			t.Errorf("Key after Run waited %s; %d fetches, want 1", d, p.count())
		}
	})
}

// TestJWKSOverHTTPS fetches from a real TLS server on loopback, and
// refuses to follow a redirect to http.
func TestJWKSOverHTTPS(t *testing.T) {
	k := testKeys()
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(jwksDoc(pubJWK("plain", k.ec2.Public(), "")))
	}))
	defer plain.Close()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/redirect" {
			http.Redirect(w, r, plain.URL+"/jwks", http.StatusFound)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Write(jwksDoc(pubJWK("k1", k.ec.Public(), "ES256")))
	}))
	defer srv.Close()

	run := func(path string) (*JWKS, *logCounter, func()) {
		logs := &logCounter{}
		s, err := NewJWKS(JWKSConfig{URL: srv.URL + path}, slog.New(logs))
		if err != nil {
			t.Fatal(err)
		}
		s.client.Transport.(*http.Transport).TLSClientConfig = srv.Client().Transport.(*http.Transport).TLSClientConfig
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { s.Run(ctx); close(done) }()
		return s, logs, func() { cancel(); <-done }
	}
	s, _, stop := run("/jwks")
	if err := hasKey(s, "k1"); err != nil {
		t.Errorf("k1 over https: %v", err)
	}
	stop()
	s, logs, stop := run("/redirect")
	if err := hasKey(s, "plain"); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("key from a redirect to http: %v", err)
	}
	stop()
	if logs.count("WARN JWKS fetch failed") != 1 {
		t.Errorf("logs %q", logs.all())
	}
}

func TestJWKSURL(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"https://idp.example/jwks", ""},
		{"https://idp.example:8443/realms/x/protocol/openid-connect/certs", ""},
		{"http://127.0.0.1:5556/keys", ""},
		{"http://[::1]:5556/keys", ""},
		{"http://localhost/keys", ""},
		{"http://idp.example/keys", "use https"},
		{"http://10.0.0.1/keys", "use https"},
		{"ftp://idp.example/keys", `scheme "ftp"`},
		{"idp.example/keys", "no host"},
		{"https:///keys", "no host"},
		{"", "no host"},
		{"https://idp.example/%zz", "invalid URL escape"},
	} {
		_, err := NewJWKS(JWKSConfig{URL: tc.url}, slog.New(&logCounter{}))
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("NewJWKS(%q) = %v, want %q", tc.url, err, tc.want)
		}
	}
	s, err := NewJWKS(JWKSConfig{URL: "https://user:secret@idp.example/jwks"}, slog.New(&logCounter{}))
	if err != nil || strings.Contains(s.URL(), "secret") {
		t.Errorf("URL() = %q, %v: want the password redacted", s.URL(), err)
	}
}

// TestVerifierWithJWKS: a Verifier on a JWKS takes a rotated provider's
// new key on first sight (more than 10s after the last fetch).
func TestVerifierWithJWKS(t *testing.T) {
	k := testKeys()
	synctest.Test(t, func(t *testing.T) {
		p := &provider{doc: jwksDoc(pubJWK("k1", k.ec.Public(), ""))}
		s, _ := startJWKS(t, p)
		v := NewVerifier(nil, "rh").WithKeySource(s, "idp")
		claims := providerClaims("4711", RoleClient, "idp", time.Now())
		if _, err := v.Verify(signKID(t, "ES256", "k1", claims, k.ec), RoleClient); err != nil {
			t.Fatalf("k1 token: %v", err)
		}
		time.Sleep(time.Minute)
		p.set(jwksDoc(pubJWK("k2", k.rsa.Public(), "RS256")))
		claims = providerClaims("4711", RoleClient, "idp", time.Now())
		if _, err := v.Verify(signKID(t, "RS256", "k2", claims, k.rsa), RoleClient); err != nil {
			t.Errorf("token of the rotated key: %v", err)
		}
		if _, err := v.Verify(signKID(t, "ES256", "k1", claims, k.ec), RoleClient); !errors.Is(err, ErrUnknownKey) {
			t.Errorf("token of the removed key: %v, want ErrUnknownKey", err)
		}
	})
}
