package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
)

// Bounds of a JSON Web Key Set (RFC 7517 section 5) as parseJWKS reads it.
// Identity providers publish a handful of keys (two or three during a
// rotation) in a few KiB.
const (
	maxJWKSBytes  = 1 << 20 // the document
	maxJWKSKeys   = 100     // entries in "keys", usable or not
	maxKIDLen     = 256     // a key ID, in bytes
	rsaMaxBits    = 8192    // bounds the cost of one RSA verification
	maxSkipReason = 200     // one skipped key's reason in a log line
)

// Algorithms a key from a JWKS may verify: asymmetric signatures only.
// HMAC ("HS256" ...) and "none" are never accepted: a published key is
// public, so a MAC made with it proves nothing.
var (
	jwksRSAAlgs    = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
	jwksRSADefault = []string{"RS256", "RS384", "RS512"} // for an RSA key without "alg"
	jwksCurves     = map[string]struct {
		curve elliptic.Curve
		alg   string
		size  int // bytes of each coordinate
	}{
		"P-256": {elliptic.P256(), "ES256", 32},
		"P-384": {elliptic.P384(), "ES384", 48},
		"P-521": {elliptic.P521(), "ES512", 66},
	}
)

// jwksKey is a usable key of a JWKS: the public key and the JWT algorithms
// ("alg" of a token's header) it verifies.
type jwksKey struct {
	key  crypto.PublicKey // *ecdsa.PublicKey, *rsa.PublicKey or ed25519.PublicKey
	algs []string
}

// jwkJSON is one member of a JWKS's "keys" as published. Only the members
// that describe a public signature key are read; "x5c", "x5t" and the
// rest are ignored.
type jwkJSON struct {
	Kty    string   `json:"kty"`
	Kid    string   `json:"kid"`
	Use    string   `json:"use"`
	Alg    string   `json:"alg"`
	KeyOps []string `json:"key_ops"`
	Crv    string   `json:"crv"`
	X      string   `json:"x"`
	Y      string   `json:"y"`
	N      string   `json:"n"`
	E      string   `json:"e"`
	D      string   `json:"d"` // private: a key that has it is refused
}

// parseJWKS reads a JSON Web Key Set: {"keys": [JWK, ...]}. It returns
// the usable signature keys by kid and, for each key it skipped, why.
//
// A key is usable if it has a kid (tokens pick keys by kid), "use" is
// absent or "sig", "key_ops" is absent or has "verify", and it is:
//
//   - EC (kty "EC") on P-256, P-384 or P-521 with full-size x and y on the
//     curve: ES256, ES384 or ES512, as its curve says ("alg", if present,
//     must agree);
//   - RSA (kty "RSA") of 2048 to 8192 bits with an odd exponent from 3 to
//     2^31-1: its "alg" (RS256/384/512, PS256/384/512), or RS256, RS384
//     and RS512 if it has none;
//   - Ed25519 (kty "OKP", crv "Ed25519"): EdDSA.
//
// Other keys (symmetric "oct", encryption keys, other curves, private
// keys, a second key with the same kid) are skipped, not fatal: providers
// publish keys for other uses side by side. It is an error if data is
// not a JWKS, has more than maxJWKSKeys entries, or has no usable key:
// then the caller keeps what it had.
func parseJWKS(data []byte) (keys map[string]jwksKey, skipped []string, err error) {
	if len(data) > maxJWKSBytes {
		return nil, nil, fmt.Errorf("JWKS larger than %d bytes", maxJWKSBytes)
	}
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, nil, fmt.Errorf("not a JWKS: %w", err)
	}
	switch {
	case doc.Keys == nil:
		return nil, nil, errors.New(`not a JWKS: no "keys" array`)
	case len(doc.Keys) > maxJWKSKeys:
		return nil, nil, fmt.Errorf("JWKS has %d keys, more than %d", len(doc.Keys), maxJWKSKeys)
	}
	keys = make(map[string]jwksKey, len(doc.Keys))
	for i, raw := range doc.Keys {
		var j jwkJSON
		if err := json.Unmarshal(raw, &j); err != nil {
			skipped = append(skipped, skipReason(i, "", fmt.Sprintf("not a JWK: %v", err)))
			continue
		}
		k, err := j.parse()
		if err == nil {
			if _, dup := keys[j.Kid]; dup {
				err = errors.New("another key before it has this kid")
			}
		}
		if err != nil {
			skipped = append(skipped, skipReason(i, j.Kid, err.Error()))
			continue
		}
		keys[j.Kid] = k
	}
	if len(keys) == 0 {
		if len(skipped) == 0 {
			return nil, nil, errors.New("JWKS has no keys")
		}
		return nil, skipped, fmt.Errorf("JWKS has no usable signature key (%s)", strings.Join(skipped, "; "))
	}
	return keys, skipped, nil
}

// skipReason says which key was skipped and why, quoting the untrusted
// parts and cutting them short.
func skipReason(i int, kid, reason string) string {
	if len(reason) > maxSkipReason {
		reason = reason[:maxSkipReason] + "..."
	}
	if kid == "" {
		return fmt.Sprintf("key %d: %s", i, reason)
	}
	return fmt.Sprintf("key %d (kid %s): %s", i, quoteKID(kid), reason)
}

// quoteKID quotes a key ID from a token or a JWKS for a message, cut to
// 64 bytes.
func quoteKID(kid string) string {
	if len(kid) > 64 {
		return fmt.Sprintf("%q...", kid[:64])
	}
	return fmt.Sprintf("%q", kid)
}

// parse checks one JWK and returns its key.
func (j *jwkJSON) parse() (jwksKey, error) {
	switch {
	case j.Kid == "":
		return jwksKey{}, errors.New("no kid (tokens name their key by kid)")
	case len(j.Kid) > maxKIDLen:
		return jwksKey{}, fmt.Errorf("kid longer than %d bytes", maxKIDLen)
	case j.Use != "" && j.Use != "sig":
		return jwksKey{}, fmt.Errorf("use %q, not sig", j.Use)
	case j.KeyOps != nil && !slices.Contains(j.KeyOps, "verify"):
		return jwksKey{}, errors.New(`key_ops without "verify"`)
	case j.D != "":
		return jwksKey{}, errors.New("it is a private key (has d): a JWKS must publish public keys only")
	case strings.HasPrefix(j.Alg, "HS") || j.Alg == "none":
		return jwksKey{}, fmt.Errorf("alg %q: only asymmetric signatures are accepted", j.Alg)
	}
	switch j.Kty {
	case "EC":
		return j.ec()
	case "RSA":
		return j.rsa()
	case "OKP":
		return j.okp()
	case "oct":
		return jwksKey{}, errors.New("symmetric key (kty oct): only asymmetric signatures are accepted")
	case "":
		return jwksKey{}, errors.New("no kty")
	default:
		return jwksKey{}, fmt.Errorf("unsupported kty %q", j.Kty)
	}
}

func (j *jwkJSON) ec() (jwksKey, error) {
	c, ok := jwksCurves[j.Crv]
	if !ok {
		return jwksKey{}, fmt.Errorf("unsupported EC curve %q, want P-256, P-384 or P-521", j.Crv)
	}
	if j.Alg != "" && j.Alg != c.alg {
		return jwksKey{}, fmt.Errorf("alg %q does not match curve %s (%s)", j.Alg, j.Crv, c.alg)
	}
	x, err := b64Member("x", j.X)
	if err != nil {
		return jwksKey{}, err
	}
	y, err := b64Member("y", j.Y)
	if err != nil {
		return jwksKey{}, err
	}
	// RFC 7518 section 6.2.1.2: the full size of a coordinate, with leading zeros.
	if len(x) != c.size || len(y) != c.size {
		return jwksKey{}, fmt.Errorf("x and y of a %s key must be %d bytes each, got %d and %d", j.Crv, c.size, len(x), len(y))
	}
	point := make([]byte, 0, 1+2*c.size)
	point = append(append(append(point, 4), x...), y...)
	pub, err := ecdsa.ParseUncompressedPublicKey(c.curve, point)
	if err != nil {
		return jwksKey{}, fmt.Errorf("invalid %s point: %w", j.Crv, err)
	}
	return jwksKey{key: pub, algs: []string{c.alg}}, nil
}

func (j *jwkJSON) rsa() (jwksKey, error) {
	algs := jwksRSADefault
	if j.Alg != "" {
		if !slices.Contains(jwksRSAAlgs, j.Alg) {
			return jwksKey{}, fmt.Errorf("alg %q is not an RSA signature algorithm (%s)", j.Alg, strings.Join(jwksRSAAlgs, ", "))
		}
		algs = []string{j.Alg}
	}
	n, err := b64Member("n", j.N)
	if err != nil {
		return jwksKey{}, err
	}
	e, err := b64Member("e", j.E)
	if err != nil {
		return jwksKey{}, err
	}
	if len(n) > rsaMaxBits/8+1 { // one byte of leading zeros is tolerated
		return jwksKey{}, fmt.Errorf("RSA modulus longer than %d bits", rsaMaxBits)
	}
	if len(e) > 4 {
		return jwksKey{}, fmt.Errorf("RSA exponent of %d bytes, want at most 4", len(e))
	}
	mod := new(big.Int).SetBytes(n)
	exp := new(big.Int).SetBytes(e)
	switch bits := mod.BitLen(); {
	case bits < rsaMinBits:
		return jwksKey{}, fmt.Errorf("RSA key has %d bits, want at least %d", bits, rsaMinBits)
	case bits > rsaMaxBits:
		return jwksKey{}, fmt.Errorf("RSA key has %d bits, want at most %d", bits, rsaMaxBits)
	case mod.Bit(0) == 0:
		return jwksKey{}, errors.New("RSA modulus is even")
	case exp.Cmp(big.NewInt(3)) < 0 || exp.Cmp(big.NewInt(1<<31-1)) > 0 || exp.Bit(0) == 0:
		return jwksKey{}, fmt.Errorf("RSA exponent %s, want an odd number from 3 to 2^31-1", exp)
	}
	return jwksKey{key: &rsa.PublicKey{N: mod, E: int(exp.Int64())}, algs: algs}, nil
}

func (j *jwkJSON) okp() (jwksKey, error) {
	if j.Crv != "Ed25519" {
		return jwksKey{}, fmt.Errorf("unsupported OKP curve %q, want Ed25519", j.Crv)
	}
	if j.Alg != "" && j.Alg != "EdDSA" {
		return jwksKey{}, fmt.Errorf("alg %q does not match an Ed25519 key (EdDSA)", j.Alg)
	}
	x, err := b64Member("x", j.X)
	if err != nil {
		return jwksKey{}, err
	}
	if len(x) != ed25519.PublicKeySize {
		return jwksKey{}, fmt.Errorf("x of an Ed25519 key must be %d bytes, got %d", ed25519.PublicKeySize, len(x))
	}
	return jwksKey{key: ed25519.PublicKey(x), algs: []string{"EdDSA"}}, nil
}

// b64Member decodes a base64url member (RFC 7515 section 2: no padding).
func b64Member(name, s string) ([]byte, error) {
	if s == "" {
		return nil, fmt.Errorf("no %s", name)
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%s is not base64url without padding: %w", name, err)
	}
	return b, nil
}
