package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// testKeySet holds keys generated once per test binary; RSA generation is slow
// under -race.
type testKeySet struct {
	ec, ec2   *ecdsa.PrivateKey
	rsa, rsa2 *rsa.PrivateKey
}

var testKeys = sync.OnceValue(func() testKeySet {
	var s testKeySet
	var err error
	if s.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		panic(err)
	}
	if s.ec2, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		panic(err)
	}
	if s.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		panic(err)
	}
	if s.rsa2, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		panic(err)
	}
	return s
})

// algKeys are the key pairs under test, by algorithm: the signing key and
// another key of the same kind.
func algKeys() []struct {
	alg        string
	key, other crypto.Signer
} {
	k := testKeys()
	return []struct {
		alg        string
		key, other crypto.Signer
	}{
		{"ES256", k.ec, k.ec2},
		{"RS256", k.rsa, k.rsa2},
	}
}

func pemBytes(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func mustSign(t testing.TB, key crypto.Signer, o TokenOptions) string {
	t.Helper()
	tok, err := Sign(key, o)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return tok
}

// claimsAt returns valid claims as the reference signs them (Sign leaves
// out iss, sub, nbf and jti), for tokens crafted by hand with the jwt
// package.
func claimsAt(agentID, role string, now time.Time) Claims {
	return Claims{
		AgentID: agentID,
		Role:    role,
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    Issuer,
			Subject:   agentID,
			ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)),
			NotBefore: jwt.NewNumericDate(now),
			IssuedAt:  jwt.NewNumericDate(now),
			ID:        newUUID(),
		},
	}
}

func signRaw(t testing.TB, m jwt.SigningMethod, c jwt.Claims, key any) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(m, c).SignedString(key)
	if err != nil {
		t.Fatalf("sign %s: %v", m.Alg(), err)
	}
	return tok
}

// wantErr fails unless err is non-nil, contains every substring of want and
// wraps each of is.
func wantErr(t *testing.T, err error, want string, is ...error) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one containing %q", want)
	}
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not contain %q", err, want)
	}
	for _, target := range is {
		if !errors.Is(err, target) {
			t.Errorf("error %q does not wrap %v", err, target)
		}
	}
}

// newUUID returns a random (version 4) UUID, as the reference's jti.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 9562 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
