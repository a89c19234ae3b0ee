package auth

import (
	"crypto"
	"errors"
	"fmt"

	"github.com/golang-jwt/jwt/v5"
)

// ErrUnknownKey is wrapped by a KeySource's error for a kid it does not
// hold.
var ErrUnknownKey = errors.New("unknown key ID")

// KeyResolver is a set of public keys named by key ID (kid), such as an
// identity provider's JWKS (see JWKS). Implementations are safe for
// concurrent use.
type KeyResolver interface {
	// Key returns the key named kid and the JWT algorithms ("alg") it may
	// verify, only asymmetric ones. For a kid it does not hold, the error
	// wraps ErrUnknownKey; Key may then refresh the set first, taking a
	// bounded time.
	Key(kid string) (key crypto.PublicKey, algs []string, err error)
}

// keySource is a Verifier's extra keys: see WithKeySource.
type keySource struct {
	src    KeyResolver
	issuer string // "": iss not checked
}

// WithKeySource returns a copy of v that also verifies tokens with the keys
// of src, picked by the kid in the token's header:
//
//   - a token whose kid src holds is verified with that key only, by one
//     of the key's algorithms; exp is required, exp and nbf have the same
//     leeway, and aud must contain v's audience, if it has one, as with
//     v's own key; and when issuer is not "", iss must equal it;
//   - a token without a kid, or with one src does not hold (after src had
//     the chance to refresh), is verified with v's own key, as before,
//     where iss is not checked (the proxy's own tokens carry none);
//   - if v has no key of its own (NewVerifier(nil, audience)), such a
//     token is refused.
//
// jku, x5u, jwk and x5c in a header are still ignored: keys come only
// from src and v.
func (v *Verifier) WithKeySource(src KeyResolver, issuer string) *Verifier {
	w := *v
	w.keys = &keySource{src: src, issuer: issuer}
	if !w.ownKey() {
		w.keyErr = nil // no key of its own: src's keys only
	}
	return &w
}

// ownKey reports whether one of v's own keys (cfg.Keys) can verify
// anything.
func (v *Verifier) ownKey() bool {
	for _, k := range v.cfg.Keys {
		if s, ok := k.(*StaticKey); !ok || s.err == nil {
			return true
		}
	}
	return false
}

// parse checks token's signature and registered claims into c, with the
// key its kid picks from v.keys or with v's own key (see WithKeySource).
func (v *Verifier) parse(token string, c *Claims) error {
	if v.keys == nil {
		_, err := v.parser.ParseWithClaims(token, c, v.keyFunc)
		return err
	}
	t, _, err := jwt.NewParser().ParseUnverified(token, jwt.MapClaims{})
	if err != nil {
		return err
	}
	var unknown error // the source's error for a kid it does not hold
	if kid, ok := t.Header["kid"].(string); ok {
		key, algs, err := v.keys.src.Key(kid)
		if err == nil {
			return v.keys.verify(v, token, c, key, algs)
		}
		if !v.ownKey() || !errors.Is(err, ErrUnknownKey) {
			return err
		}
		unknown = err
	} else if !v.ownKey() {
		return errors.New("token has no kid: without --auth.jwt.public-key only the identity provider's keys verify tokens, and they are picked by kid")
	}
	_, err = v.parser.ParseWithClaims(token, c, v.keyFunc)
	if unknown != nil && errors.Is(err, jwt.ErrTokenSignatureInvalid) {
		return fmt.Errorf("%w, and the public key does not verify it either (%w)", unknown, err)
	}
	return err
}

// verify checks token with key, from the key source.
func (k *keySource) verify(v *Verifier, token string, c *Claims, key crypto.PublicKey, algs []string) error {
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(algs),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(leeway),
	}
	if v.cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(v.cfg.Audience))
	}
	if _, err := jwt.NewParser(opts...).ParseWithClaims(token, c, func(*jwt.Token) (any, error) { return key, nil }); err != nil {
		return err
	}
	if k.issuer != "" && c.Issuer != k.issuer {
		return fmt.Errorf("token issuer %q, want %q: %w", cut(c.Issuer, 128), k.issuer, jwt.ErrTokenInvalidIssuer)
	}
	return nil
}

// cut returns s cut to n bytes.
func cut(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
