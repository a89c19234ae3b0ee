package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestSignVerify(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	tests := []struct {
		name     string
		opts     TokenOptions
		audience string // verifier's
	}{
		{"client", TokenOptions{AgentID: "4711", Role: RoleClient, Duration: time.Hour}, ""},
		{"agent", TokenOptions{AgentID: "4711", Role: RoleAgent, Duration: time.Hour}, ""},
		{"audience", TokenOptions{AgentID: "4711", Role: RoleClient, Audience: "proxy.example.com", Duration: time.Hour}, "proxy.example.com"},
		{"audience not checked", TokenOptions{AgentID: "4711", Role: RoleClient, Audience: "proxy.example.com", Duration: time.Hour}, ""},
		{"explicit now", TokenOptions{AgentID: "a-b.c", Role: RoleAgent, Duration: 30 * 24 * time.Hour, Now: now}, ""},
		{"nbf within leeway", TokenOptions{AgentID: "4711", Role: RoleAgent, Duration: time.Hour, Now: now.Add(3 * time.Second)}, ""},
		{"exp within leeway", TokenOptions{AgentID: "4711", Role: RoleAgent, Duration: time.Hour, Now: now.Add(-time.Hour - 2*time.Second)}, ""},
		{"unicode agent ID", TokenOptions{AgentID: "agent-ü", Role: RoleAgent, Duration: time.Hour}, ""},
	}
	for _, kp := range algKeys() {
		for _, tc := range tests {
			t.Run(kp.alg+"/"+tc.name, func(t *testing.T) {
				tok := mustSign(t, kp.key, tc.opts)
				hdr, _, _ := strings.Cut(tok, ".")
				if raw, _ := base64.RawURLEncoding.DecodeString(hdr); !strings.Contains(string(raw), `"alg":"`+kp.alg+`"`) {
					t.Errorf("header %s, want alg %s", raw, kp.alg)
				}
				c, err := NewVerifier(kp.key.Public(), tc.audience).Verify(tok, tc.opts.Role)
				if err != nil {
					t.Fatal(err)
				}
				if c.AgentID != tc.opts.AgentID || c.Role != tc.opts.Role {
					t.Errorf("claims agent_id=%q role=%q", c.AgentID, c.Role)
				}
				if c.Subject != "" || c.Issuer != "" || c.IssuedAt != nil || c.NotBefore != nil {
					t.Errorf("sub=%q iss=%q iat=%v nbf=%v, want none: compact claims", c.Subject, c.Issuer, c.IssuedAt, c.NotBefore)
				}
				if len(c.ID) != 11 {
					t.Errorf("jti %q, want 8 random bytes in base64url", c.ID)
				}
				if !tc.opts.Now.IsZero() && !c.ExpiresAt.Equal(tc.opts.Now.Add(tc.opts.Duration)) {
					t.Errorf("exp %v, want %v", c.ExpiresAt, tc.opts.Now.Add(tc.opts.Duration))
				}
				switch tc.opts.Audience {
				case "":
					if c.Audience != nil {
						t.Errorf("aud %q, want none", c.Audience)
					}
				default:
					if len(c.Audience) != 1 || c.Audience[0] != tc.opts.Audience {
						t.Errorf("aud %q, want [%q]", c.Audience, tc.opts.Audience)
					}
				}
			})
		}
	}
}

// TestTokenWireFormat pins the JSON claim names, shared with the
// reference, and the compact claim set and header.
func TestTokenWireFormat(t *testing.T) {
	tok := mustSign(t, testKeys().ec, TokenOptions{AgentID: "4711", Role: RoleClient, Audience: "aud1", Duration: time.Hour})
	parts := strings.Split(tok, ".")
	if hdr, _ := base64.RawURLEncoding.DecodeString(parts[0]); string(hdr) != `{"alg":"ES256"}` {
		t.Errorf("header %s, want {\"alg\":\"ES256\"}", hdr)
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"agent_id", "role", "exp", "jti", "aud"} {
		if _, ok := m[k]; !ok {
			t.Errorf("claim %q missing in %s", k, raw)
		}
	}
	if len(m) != 5 {
		t.Errorf("claims %s, want exactly 5", raw)
	}
	if aud, ok := m["aud"].([]any); !ok || len(aud) != 1 || aud[0] != "aud1" {
		t.Errorf("aud = %#v, want [\"aud1\"] as a list like the reference", m["aud"])
	}
}

// TestClientTokenFitsSOCKS5: an ES256 client token without an audience,
// as `auth jwt token` makes it by default, fits in an RFC 1929 password
// (255 bytes) for agent IDs up to MaxCompactAgentID bytes, 32 included,
// multi-byte UTF-8 too, with the longest --duration anyone would give.
func TestClientTokenFitsSOCKS5(t *testing.T) {
	if MaxCompactAgentID < 32 {
		t.Fatalf("MaxCompactAgentID %d, want at least 32", MaxCompactAgentID)
	}
	for _, id := range []string{
		strings.Repeat("a", 32),
		strings.Repeat("ü", 16), // 32 bytes
		strings.Repeat("7", MaxCompactAgentID),
	} {
		for _, d := range []time.Duration{24 * time.Hour, 100 * 365 * 24 * time.Hour} {
			tok := mustSign(t, testKeys().ec, TokenOptions{AgentID: id, Role: RoleClient, Duration: d})
			if len(tok) > MaxSOCKS5Password {
				t.Errorf("client token for a %d-byte agent ID, valid %s: %d bytes, want at most %d", len(id), d, len(tok), MaxSOCKS5Password)
			}
		}
	}
}

// TestCompactTokenInterop: a compact token passes the checks the
// reference's proxy makes (golang-jwt with RS256 and ES256 allowed, 5s
// leeway, then agent_id and role), and a token with the reference's full
// claim set and header still verifies here.
func TestCompactTokenInterop(t *testing.T) {
	for _, kp := range algKeys() {
		tok := mustSign(t, kp.key, TokenOptions{AgentID: "4711", Role: RoleClient, Duration: time.Hour})
		var c Claims
		_, err := jwt.ParseWithClaims(tok, &c, func(*jwt.Token) (any, error) { return kp.key.Public(), nil },
			jwt.WithValidMethods([]string{"RS256", "ES256"}), jwt.WithLeeway(5*time.Second))
		if err != nil || c.AgentID != "4711" || c.Role != RoleClient {
			t.Errorf("%s: the reference's checks: %v, claims %+v", kp.alg, err, c)
		}
		full := signRaw(t, jwt.GetSigningMethod(kp.alg), claimsAt("4711", RoleClient, time.Now()), kp.key)
		if _, err := NewVerifier(kp.key.Public(), "").Verify(full, RoleClient); err != nil {
			t.Errorf("%s: a token with the reference's claims: %v", kp.alg, err)
		}
	}
}

func TestSignErrors(t *testing.T) {
	k := testKeys()
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	ok := TokenOptions{AgentID: "4711", Role: RoleClient, Duration: time.Hour}
	with := func(f func(*TokenOptions)) TokenOptions { o := ok; f(&o); return o }

	tests := []struct {
		name string
		key  crypto.Signer
		opts TokenOptions
		want string
	}{
		{"empty agent ID", k.ec, with(func(o *TokenOptions) { o.AgentID = "" }), "agent ID: empty"},
		{"control char in agent ID", k.ec, with(func(o *TokenOptions) { o.AgentID = "a\nb" }), "control character"},
		{"long agent ID", k.ec, with(func(o *TokenOptions) { o.AgentID = strings.Repeat("a", 257) }), "longer than 256"},
		{"empty role", k.ec, with(func(o *TokenOptions) { o.Role = "" }), `role ""`},
		{"unknown role", k.ec, with(func(o *TokenOptions) { o.Role = "admin" }), `role "admin"`},
		{"zero duration", k.ec, with(func(o *TokenOptions) { o.Duration = 0 }), "positive duration"},
		{"negative duration", k.ec, with(func(o *TokenOptions) { o.Duration = -time.Minute }), "positive duration"},
		{"Ed25519 key", edKey, ok, "unsupported key type"},
		{"P-384 key", p384, ok, "P-384"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := Sign(tc.key, tc.opts)
			if tok != "" {
				t.Errorf("got token %q", tok)
			}
			wantErr(t, err, tc.want)
		})
	}
}

func TestVerifyRejects(t *testing.T) {
	now := time.Now()
	for _, kp := range algKeys() {
		pub := kp.key.Public()
		pubPEM, err := MarshalPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		pubDER, _ := x509.MarshalPKIXPublicKey(pub)
		sign := func(o TokenOptions) string { return mustSign(t, kp.key, o) }
		client := TokenOptions{AgentID: "4711", Role: RoleClient, Duration: time.Hour}
		good := sign(client)
		var otherFamily crypto.Signer = testKeys().rsa
		if kp.alg == "RS256" {
			otherFamily = testKeys().ec
		}
		sameFamily, sameFamilyKey := otherMethod(t, kp.alg)

		tests := []struct {
			name     string
			token    string
			audience string
			role     string
			want     string
			is       error
		}{
			{
				name:  "expired",
				token: sign(TokenOptions{AgentID: "4711", Role: RoleClient, Duration: time.Hour, Now: now.Add(-time.Hour - 10*time.Second)}),
				want:  "token expired", is: jwt.ErrTokenExpired,
			},
			{
				name:  "not yet valid",
				token: signRaw(t, jwt.GetSigningMethod(kp.alg), claimsAt("4711", RoleClient, now.Add(10*time.Second)), kp.key),
				want:  "token not valid yet", is: jwt.ErrTokenNotValidYet,
			},
			{
				name:     "wrong audience",
				token:    sign(TokenOptions{AgentID: "4711", Role: RoleClient, Duration: time.Hour, Audience: "other"}),
				audience: "proxy.example.com",
				want:     `token audience mismatch, want "proxy.example.com"`, is: jwt.ErrTokenInvalidAudience,
			},
			{
				name:     "missing audience when required",
				token:    good,
				audience: "proxy.example.com",
				want:     "aud claim is required", is: jwt.ErrTokenRequiredClaimMissing,
			},
			{
				name:  "missing exp",
				token: signRaw(t, jwt.GetSigningMethod(kp.alg), func() Claims { c := claimsAt("4711", RoleClient, now); c.ExpiresAt = nil; return c }(), kp.key),
				want:  "exp claim is required", is: jwt.ErrTokenRequiredClaimMissing,
			},
			{
				name:  "wrong role",
				token: sign(TokenOptions{AgentID: "4711", Role: RoleAgent, Duration: time.Hour}),
				want:  "role agent, want client",
			},
			{
				name:  "missing role",
				token: signRaw(t, jwt.GetSigningMethod(kp.alg), claimsAt("4711", "", now), kp.key),
				want:  `role "", want client`,
			},
			{
				name:  "wrong signing key",
				token: mustSign(t, kp.other, client),
				want:  "token signature is invalid", is: jwt.ErrTokenSignatureInvalid,
			},
			{
				name:  "alg none",
				token: signRaw(t, jwt.SigningMethodNone, claimsAt("4711", RoleClient, now), jwt.UnsafeAllowNoneSignatureType),
				want:  "signing method none is invalid", is: jwt.ErrTokenSignatureInvalid,
			},
			{
				name:  "HS256 keyed with the public key PEM",
				token: signRaw(t, jwt.SigningMethodHS256, claimsAt("4711", RoleClient, now), pubPEM),
				want:  "signing method HS256 is invalid", is: jwt.ErrTokenSignatureInvalid,
			},
			{
				name:  "HS256 keyed with the public key DER",
				token: signRaw(t, jwt.SigningMethodHS256, claimsAt("4711", RoleClient, now), pubDER),
				want:  "signing method HS256 is invalid", is: jwt.ErrTokenSignatureInvalid,
			},
			{
				name:  "other algorithm of the same family",
				token: signRaw(t, sameFamily, claimsAt("4711", RoleClient, now), sameFamilyKey),
				want:  "signing method " + sameFamily.Alg() + " is invalid", is: jwt.ErrTokenSignatureInvalid,
			},
			{
				name:  "token of the other key family",
				token: mustSign(t, otherFamily, client),
				want:  "is invalid", is: jwt.ErrTokenSignatureInvalid,
			},
			{
				name:  "tampered payload",
				token: tamper(t, good, func(m map[string]any) { m["agent_id"] = "4712"; m["sub"] = "4712" }),
				want:  "token signature is invalid", is: jwt.ErrTokenSignatureInvalid,
			},
			{
				name:  "tampered role",
				token: tamper(t, sign(TokenOptions{AgentID: "4711", Role: RoleAgent, Duration: time.Hour}), func(m map[string]any) { m["role"] = RoleClient }),
				want:  "token signature is invalid", is: jwt.ErrTokenSignatureInvalid,
			},
			{
				name:  "signature stripped",
				token: good[:strings.LastIndex(good, ".")+1],
				want:  "", is: jwt.ErrTokenSignatureInvalid,
			},
			{name: "garbage", token: "not a token", want: "token is malformed", is: jwt.ErrTokenMalformed},
			{name: "garbage segments", token: "a.b.c", want: "token is malformed", is: jwt.ErrTokenMalformed},
			{name: "empty", token: "", want: "empty token"},
			{name: "huge", token: strings.Repeat("a", maxTokenLen+1), want: "token longer than"},
			{
				name:  "empty agent_id",
				token: signRaw(t, jwt.GetSigningMethod(kp.alg), claimsAt("", RoleClient, now), kp.key),
				want:  "claim agent_id: no agent patterns",
			},
			{
				name:  "control char in agent_id",
				token: signRaw(t, jwt.GetSigningMethod(kp.alg), claimsAt("47\r\n11", RoleClient, now), kp.key),
				want:  `claim agent_id: agent pattern "47\r\n11": control character`,
			},
			{name: "unknown role asked", token: good, role: "admin", want: `unknown role "admin"`},
		}
		for _, tc := range tests {
			t.Run(kp.alg+"/"+tc.name, func(t *testing.T) {
				role := tc.role
				if role == "" {
					role = RoleClient
				}
				c, err := NewVerifier(pub, tc.audience).Verify(tc.token, role)
				if c != nil {
					t.Errorf("got claims %+v", c)
				}
				is := []error{ErrUnauthorized}
				if tc.is != nil {
					is = append(is, tc.is)
				}
				wantErr(t, err, tc.want, is...)
			})
		}
	}
}

func TestVerifierUnsupportedKey(t *testing.T) {
	k := testKeys()
	tok := mustSign(t, k.ec, TokenOptions{AgentID: "4711", Role: RoleClient, Duration: time.Hour})
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	for _, pub := range []crypto.PublicKey{nil, edPub, k.ec, []byte("secret")} {
		_, err := NewVerifier(pub, "").Verify(tok, RoleClient)
		wantErr(t, err, "verifier key: unsupported public key type", ErrUnauthorized)
	}
	_, err := new(Verifier).Verify(tok, RoleClient)
	wantErr(t, err, "not made by NewVerifier", ErrUnauthorized)
}

// otherMethod returns a JWT algorithm of the same key family as alg, which
// Verify must refuse, and a key to sign with it.
func otherMethod(t *testing.T, alg string) (jwt.SigningMethod, any) {
	if alg == "RS256" {
		return jwt.SigningMethodPS256, testKeys().rsa
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return jwt.SigningMethodES384, p384
}

// tamper rewrites the payload of token with f, keeping header and signature.
func tamper(t *testing.T, token string, f func(map[string]any)) string {
	t.Helper()
	parts := strings.Split(token, ".")
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	f(m)
	raw, err = json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	parts[1] = base64.RawURLEncoding.EncodeToString(raw)
	return strings.Join(parts, ".")
}
