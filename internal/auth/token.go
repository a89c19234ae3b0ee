package auth

import (
	"crypto"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// leeway is the clock skew allowed on exp and nbf, as in the reference.
const leeway = 5 * time.Second

// maxTokenLen bounds the token Verify will parse. Real tokens are well under
// 2 KiB, even RS256 with a 4096-bit key.
const maxTokenLen = 16 << 10

// Claims are the claims of a reverse-http token, the same as the reference's.
type Claims struct {
	AgentID string `json:"agent_id"`
	Role    string `json:"role"`
	jwt.RegisteredClaims
}

// TokenOptions describe a token to sign.
type TokenOptions struct {
	AgentID string // required; also the sub claim
	Role    string // RoleClient or RoleAgent
	// Audience is the single aud entry; "" leaves aud out.
	Audience string
	// Duration from Now to exp; must be positive.
	Duration time.Duration
	// Now is iat; zero means time.Now().
	Now time.Time
}

// Sign returns a JWT signed by key: ES256 for an ECDSA P-256 key, RS256 for
// RSA. It carries agent_id, role, iat, exp and, when set, aud as a
// one-element list; its header only alg.
//
// The claims are kept to those the proxy (and the reference's proxy)
// reads, so that a client token fits where a password may be at most 255
// bytes (SOCKS5, RFC 1929; see MaxCompactAgentID). Tokens with more
// claims, as the reference signs them (iss, sub, nbf, jti), verify all
// the same.
func Sign(key crypto.Signer, o TokenOptions) (string, error) {
	alg, err := algOf(key)
	if err != nil {
		return "", err
	}
	if err := checkAgentID(o.AgentID); err != nil {
		return "", fmt.Errorf("agent ID: %w", err)
	}
	if o.Role != RoleClient && o.Role != RoleAgent {
		return "", fmt.Errorf("role %q, want %s or %s", o.Role, RoleClient, RoleAgent)
	}
	if o.Duration <= 0 {
		return "", fmt.Errorf("token duration %v, want a positive duration", o.Duration)
	}
	now := o.Now
	if now.IsZero() {
		now = time.Now()
	}
	claims := Claims{
		AgentID: o.AgentID,
		Role:    o.Role,
		RegisteredClaims: jwt.RegisteredClaims{
			ExpiresAt: jwt.NewNumericDate(now.Add(o.Duration)),
			IssuedAt:  jwt.NewNumericDate(now),
		},
	}
	if o.Audience != "" {
		claims.Audience = jwt.ClaimStrings{o.Audience}
	}
	t := jwt.NewWithClaims(jwt.GetSigningMethod(alg), claims)
	delete(t.Header, "typ") // optional (RFC 7519 section 5.1); no verifier reads it
	s, err := t.SignedString(key)
	if err != nil {
		return "", fmt.Errorf("sign %s token: %w", alg, err)
	}
	return s, nil
}

// MaxSOCKS5Password is the longest password a SOCKS5 client can send (RFC
// 1929 section 2), and so the longest client token it can use.
const MaxSOCKS5Password = 255

// MaxCompactAgentID is the longest agent ID, in bytes, whose ES256 client
// token Sign keeps within MaxSOCKS5Password when it has no audience (and
// exp is before the year 2286). An audience adds about 4/3 of its length
// plus 12 bytes; RS256 tokens are longer than 255 bytes whatever the ID.
const MaxCompactAgentID = 45

// Verifier checks tokens signed by one key. It is safe for concurrent use.
type Verifier struct {
	key      crypto.PublicKey
	keyErr   error // why key is unusable, if it is
	audience string
	parser   *jwt.Parser
	keys     *keySource // nil: key alone; see WithKeySource (keysource.go)
}

// NewVerifier returns a Verifier for tokens signed by the private half of pub,
// an ECDSA P-256 or RSA public key as ParsePublicKey returns. Only the
// matching algorithm (ES256 or RS256) is accepted. When audience is not "",
// tokens must carry it in aud; when it is "", aud is not checked.
//
// An unsupported key makes every Verify fail with the reason.
func NewVerifier(pub crypto.PublicKey, audience string) *Verifier {
	alg, err := publicAlgOf(pub)
	opts := []jwt.ParserOption{
		jwt.WithValidMethods([]string{alg}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(leeway),
	}
	if audience != "" {
		opts = append(opts, jwt.WithAudience(audience))
	}
	return &Verifier{key: pub, keyErr: err, audience: audience, parser: jwt.NewParser(opts...)}
}

// Verify checks token and returns its claims. The signature must be ES256 or
// RS256 by the verifier's key (none, HS256 and the rest are refused); exp is
// required; exp and nbf are checked with 5s leeway; aud when the Verifier has
// an audience. The role claim must equal role and agent_id must be a valid
// agent ID. Errors wrap ErrUnauthorized.
func (v *Verifier) Verify(token, role string) (*Claims, error) {
	if role != RoleClient && role != RoleAgent {
		return nil, deny("verifier asked for unknown role %q", role)
	}
	if v.parser == nil {
		return nil, deny("verifier not made by NewVerifier")
	}
	if v.keyErr != nil {
		return nil, deny("verifier key: %v", v.keyErr)
	}
	switch {
	case token == "":
		return nil, deny("empty token")
	case len(token) > maxTokenLen:
		return nil, deny("token longer than %d bytes", maxTokenLen)
	}
	var c Claims
	if err := v.parse(token, &c); err != nil {
		return nil, v.tokenError(err)
	}
	if c.Role != role {
		return nil, deny("role %s, want %s", quoteIfOdd(c.Role), role)
	}
	if err := checkAgentID(c.AgentID); err != nil {
		return nil, deny("agent_id: %v", err)
	}
	return &c, nil
}

func (v *Verifier) keyFunc(*jwt.Token) (any, error) { return v.key, nil }

// tokenError turns a jwt parse error into a short reason, keeping the jwt
// error in the chain.
func (v *Verifier) tokenError(err error) error {
	reason := err.Error()
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed), errors.Is(err, jwt.ErrTokenSignatureInvalid),
		errors.Is(err, jwt.ErrTokenUnverifiable):
		// jwt's own message says what is wrong with the token itself.
	case errors.Is(err, jwt.ErrTokenExpired):
		reason = "token expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		reason = "token not valid yet"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		reason = fmt.Sprintf("token audience mismatch, want %q", v.audience)
	}
	return &denied{reason: reason, cause: err}
}
