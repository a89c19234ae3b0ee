package auth

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// jwk is the JSON Web Key of an ECDSA or RSA public key, as an attacker
// would embed it in a token header or serve it from a jku URL.
func jwk(t *testing.T, pub any) map[string]any {
	t.Helper()
	b64 := func(n *big.Int) string { return base64.RawURLEncoding.EncodeToString(n.Bytes()) }
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return map[string]any{"kty": "EC", "crv": "P-256", "x": b64(k.X), "y": b64(k.Y), "kid": "attacker"}
	case *rsa.PublicKey:
		return map[string]any{"kty": "RSA", "n": b64(k.N), "e": b64(big.NewInt(int64(k.E))), "kid": "attacker"}
	}
	t.Fatalf("jwk: %T", pub)
	return nil
}

// TestVerifyIgnoresKeyHeaders: kid, jku, x5u, jwk and x5c in a token's
// header never pick the verification key and are never fetched. A token of
// the operator's key carrying them is accepted as if they were not there;
// one of another key pointing at that key is refused, and the URLs it names
// get no request.
func TestVerifyIgnoresKeyHeaders(t *testing.T) {
	var fetched atomic.Int64
	attackerKeys := map[string]any{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetched.Add(1)
		json.NewEncoder(w).Encode(map[string]any{"keys": []any{attackerKeys[r.URL.Path]}})
	}))
	defer srv.Close()
	now := time.Now()
	for _, kp := range algKeys() {
		attackerKeys["/"+kp.alg] = jwk(t, kp.other.Public())
		headers := map[string]any{
			"kid": "attacker",
			"jku": srv.URL + "/" + kp.alg,
			"x5u": srv.URL + "/" + kp.alg + ".pem",
			"jwk": jwk(t, kp.other.Public()),
			"x5c": []string{"MIIB"},
		}
		sign := func(key any) string {
			tok := jwt.NewWithClaims(jwt.GetSigningMethod(kp.alg), claimsAt("4711", RoleClient, now))
			for k, v := range headers {
				tok.Header[k] = v
			}
			s, err := tok.SignedString(key)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		v := NewVerifier(kp.key.Public(), "")
		t.Run(kp.alg+"/operator's key", func(t *testing.T) {
			if c, err := v.Verify(sign(kp.key), RoleClient); err != nil || c.AgentID != "4711" {
				t.Fatalf("token of the operator's key with key headers: %+v, %v; want it accepted", c, err)
			}
		})
		t.Run(kp.alg+"/attacker's key", func(t *testing.T) {
			c, err := v.Verify(sign(kp.other), RoleClient)
			if c != nil {
				t.Errorf("got claims %+v", c)
			}
			wantErr(t, err, "signature is invalid", ErrUnauthorized, jwt.ErrTokenSignatureInvalid)
		})
	}
	if n := fetched.Load(); n != 0 {
		t.Errorf("the verifier fetched %d URLs named in token headers", n)
	}
}

// TestVerifyAlgNoneSpellings: "none" in any spelling, with or without a
// signature, is refused.
func TestVerifyAlgNoneSpellings(t *testing.T) {
	payload, err := json.Marshal(claimsAt("4711", RoleClient, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding.EncodeToString
	for _, kp := range algKeys() {
		v := NewVerifier(kp.key.Public(), "")
		good := mustSign(t, kp.key, TokenOptions{AgentID: "4711", Role: RoleClient, Duration: time.Hour})
		sig := good[strings.LastIndex(good, ".")+1:]
		for _, alg := range []string{"none", "None", "NONE", "nOnE", ""} {
			for _, s := range []string{"", sig} {
				tok := enc([]byte(`{"alg":"`+alg+`","typ":"JWT"}`)) + "." + enc(payload) + "." + s
				c, err := v.Verify(tok, RoleClient)
				if err == nil || c != nil {
					t.Errorf("%s: alg %q, signature %t: accepted", kp.alg, alg, s != "")
				}
			}
		}
	}
}

// TestVerifyHugeTokenCheap: a 1 MiB token (as an agent may send on its auth
// stream) is refused from its length alone, costing no parse and no copy.
func TestVerifyHugeTokenCheap(t *testing.T) {
	kp := algKeys()[0]
	v := NewVerifier(kp.key.Public(), "")
	good := mustSign(t, kp.key, TokenOptions{AgentID: "4711", Role: RoleAgent, Duration: time.Hour})
	// A real token padded in its payload: it would parse if it were read.
	parts := strings.Split(good, ".")
	huge := parts[0] + "." + parts[1] + strings.Repeat("A", 1<<20) + "." + parts[2]
	const calls = 32
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range calls {
		_, err := v.Verify(huge, RoleAgent)
		wantErr(t, err, "token longer than 16384 bytes", ErrUnauthorized)
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / calls; per > 4<<10 {
		t.Errorf("refusing a 1 MiB token allocates %d bytes per call, want it refused before parsing", per)
	}
	_, err := JWT(v).Agent(huge)
	wantErr(t, err, "token longer than", ErrUnauthorized)
	_, err = JWT(v).Client(Credentials{User: "4711", Password: huge})
	wantErr(t, err, "token longer than", ErrUnauthorized)
}

// TestVerifyTimeClaims: nbf far in the future, exp in the past by more
// than the leeway, and no exp at all are refused; within the 5s leeway
// they are not.
func TestVerifyTimeClaims(t *testing.T) {
	kp := algKeys()[0]
	v := NewVerifier(kp.key.Public(), "")
	now := time.Now()
	sign := func(edit func(c *Claims)) string {
		c := claimsAt("4711", RoleAgent, now)
		edit(&c)
		return signRaw(t, jwt.GetSigningMethod(kp.alg), c, kp.key)
	}
	for _, tc := range []struct {
		name string
		edit func(c *Claims)
		ok   bool
	}{
		{"nbf in a year", func(c *Claims) { c.NotBefore = jwt.NewNumericDate(now.Add(365 * 24 * time.Hour)) }, false},
		{"nbf 2s ahead, within leeway", func(c *Claims) { c.NotBefore = jwt.NewNumericDate(now.Add(2 * time.Second)) }, true},
		{"exp a minute ago", func(c *Claims) { c.ExpiresAt = jwt.NewNumericDate(now.Add(-time.Minute)) }, false},
		{"no exp", func(c *Claims) { c.ExpiresAt = nil }, false},
		{"no exp, no nbf, no iat", func(c *Claims) { c.ExpiresAt, c.NotBefore, c.IssuedAt = nil, nil, nil }, false},
	} {
		_, err := v.Verify(sign(tc.edit), RoleAgent)
		if (err == nil) != tc.ok {
			t.Errorf("%s: error %v, want accepted %t", tc.name, err, tc.ok)
		}
	}
}
