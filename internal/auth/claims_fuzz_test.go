package auth

import (
	"encoding/base64"
	"encoding/json"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// FuzzVerifyClaims signs a fuzzed JOSE header and claims set with the key
// the verifiers trust, so that the fuzzer reaches what FuzzVerify cannot
// (random tokens never get past the signature): the header and claims
// checks. Whatever Verify accepts must be what the docs promise: alg ES256
// (not none, not HS256), the role asked for, a valid agent_id, an exp that
// has not passed, no nbf in the future, and the audience when one is set.
// Seeds: f.Add below and testdata/fuzz/FuzzVerifyClaims.
func FuzzVerifyClaims(f *testing.F) {
	exp := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)
	f.Add(`{"alg":"ES256","typ":"JWT"}`, `{"agent_id":"4711","role":"agent","exp":`+exp+`,"aud":["proxy"]}`)
	f.Add(`{"alg":"ES256"}`, `{"agent_id":"4711","role":"client","exp":`+exp+`,"nbf":`+exp+`}`)
	f.Add(`{"alg":"none"}`, `{"agent_id":"4711","role":"agent","exp":`+exp+`}`)
	f.Add(`{"alg":"ES256"}`, `{"agent_id":["47*","site-1"],"role":"client","destinations":"*.internal:443","exp":`+exp+`,"jti":"gone"}`)
	f.Add(`{"alg":"ES256"}`, `{"agent_id":[],"role":"client","destinations":[""],"exp":`+exp+`}`)
	f.Add(`{"alg":"ES256"}`, `{"agent_id":[1],"role":"client","destinations":{"a":1},"exp":`+exp+`}`)
	key := testKeys().ec
	revoked := &RevokedFile{}
	rs, _ := ParseRevoked([]byte("gone\n"))
	revoked.cur.Store(rs)
	verifiers := map[string]*Verifier{
		"":      NewVerifierWith(VerifierConfig{Keys: []KeySource{NewStaticKey(key.Public())}, Revoked: revoked}),
		"proxy": NewVerifier(key.Public(), "proxy"),
	}
	f.Fuzz(func(t *testing.T, header, claims string) {
		signing := base64.RawURLEncoding.EncodeToString([]byte(header)) + "." + base64.RawURLEncoding.EncodeToString([]byte(claims))
		sig, err := jwt.SigningMethodES256.Sign(signing, key)
		if err != nil {
			t.Fatal(err)
		}
		token := signing + "." + base64.RawURLEncoding.EncodeToString(sig)
		for aud, v := range verifiers {
			for _, role := range []string{RoleAgent, RoleClient} {
				before := time.Now()
				c, err := v.Verify(token, role)
				after := time.Now()
				if err != nil {
					if c != nil {
						t.Fatalf("error %v with claims %+v", err, c)
					}
					continue
				}
				var h map[string]any
				if json.Unmarshal([]byte(header), &h) != nil || h["alg"] != "ES256" {
					t.Fatalf("accepted header %q", header)
				}
				if c.Role != role {
					t.Fatalf("as %s accepted role %q (claims %q)", role, c.Role, claims)
				}
				if role == RoleAgent && checkAgentID(c.AgentID) != nil {
					t.Fatalf("accepted agent_id %q (claims %q)", c.AgentID, claims)
				}
				if role == RoleClient {
					if len(c.Agents) == 0 {
						t.Fatalf("accepted a client token without agents (claims %q)", claims)
					}
					for _, p := range c.Agents {
						if checkPattern(p) != nil {
							t.Fatalf("accepted agent pattern %q (claims %q)", p, claims)
						}
					}
					if len(c.Destinations) > 0 && c.dest.Empty() {
						t.Fatalf("accepted destinations %q that allow everything (claims %q)", c.Destinations, claims)
					}
				}
				if v.cfg.Revoked.Has(c.ID) {
					t.Fatalf("accepted revoked jti %q", c.ID)
				}
				// Dates are whole seconds: a second of slack.
				if c.ExpiresAt == nil || !c.ExpiresAt.After(before.Add(-leeway-time.Second)) {
					t.Fatalf("accepted exp %v at %v (claims %q)", c.ExpiresAt, before, claims)
				}
				if c.NotBefore != nil && c.NotBefore.After(after.Add(leeway+time.Second)) {
					t.Fatalf("accepted nbf %v at %v (claims %q)", c.NotBefore, after, claims)
				}
				if aud != "" && !slices.Contains(c.Audience, aud) {
					t.Fatalf("verifier for audience %q accepted aud %q (claims %q)", aud, c.Audience, claims)
				}
			}
		}
	})
}
