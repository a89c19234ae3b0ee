package auth

import (
	"crypto"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/reverse-http/reverse-http/internal/allow"
)

// leeway is the clock skew allowed on exp and nbf, as in the reference.
const leeway = 5 * time.Second

// maxTokenLen bounds the token Verify will parse. Real tokens are well under
// 2 KiB, even RS256 with a 4096-bit key.
const maxTokenLen = 16 << 10

// Claims are the claims of a reverse-http token, the same as the
// reference's, plus the policy of a client token.
type Claims struct {
	// AgentID is agent_id when it is a string: an agent token's ID, or
	// the one agent (or pattern) of a client token.
	AgentID string `json:"agent_id"`
	Role    string `json:"role"`
	jwt.RegisteredClaims

	// Agents are, in a client token Verify accepted, the agent ID
	// patterns of its agents claim (--auth.jwt.agents-claim, agent_id by
	// default; a string or a list of strings).
	Agents AgentPatterns `json:"-"`
	// Destinations are, in a client token Verify accepted, the allowlist
	// patterns of its destinations claim; empty: no policy of its own.
	Destinations []string `json:"-"`

	raw  map[string]json.RawMessage // every claim, for the configurable ones
	dest *allow.List
}

// UnmarshalJSON reads the claims; agent_id may be a string (AgentID) or,
// in a client token, a list, read by Verify like any claim it is told to
// read.
func (c *Claims) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	var w struct {
		Role string `json:"role"`
		jwt.RegisteredClaims
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*c = Claims{Role: w.Role, RegisteredClaims: w.RegisteredClaims, raw: raw}
	if v, ok := raw["agent_id"]; ok {
		var s string
		if json.Unmarshal(v, &s) == nil {
			c.AgentID = s
		}
	}
	return nil
}

// stringOrList reads a claim that is a string or a list of strings.
func (c *Claims) stringOrList(name string) (vals []string, present bool, err error) {
	v, ok := c.raw[name]
	if !ok || string(v) == "null" {
		return nil, false, nil
	}
	var s string
	if json.Unmarshal(v, &s) == nil {
		return []string{s}, true, nil
	}
	var l []string
	if err := json.Unmarshal(v, &l); err != nil {
		return nil, true, fmt.Errorf("claim %s: want a string or a list of strings", name)
	}
	return l, true, nil
}

// TokenOptions describe a token to sign.
type TokenOptions struct {
	// AgentID is the agent ID of an agent token, or the one agent (or
	// agent ID pattern, '*' allowed) of a client token.
	AgentID string
	// Agents are more agent IDs or patterns a client token may use:
	// with them agent_id is a list.
	Agents []string
	Role   string // RoleClient or RoleAgent
	// Destinations, if any, are the allowlist patterns a client token
	// may reach (the destinations claim).
	Destinations []string
	// Audience is the single aud entry; "" leaves aud out.
	Audience string
	// Duration from Now to exp; must be positive.
	Duration time.Duration
	// Now is when the token is signed; zero means time.Now().
	Now time.Time
	// ID is the jti, by which --auth.jwt.revoked revokes the token; ""
	// means 8 random bytes, base64url.
	ID string
}

// signedClaims is the claim set Sign writes, in this order.
type signedClaims struct {
	AgentID      any      `json:"agent_id"`
	Role         string   `json:"role"`
	Destinations []string `json:"destinations,omitempty"`
	jwt.RegisteredClaims
}

// Sign returns a JWT signed by key: ES256 for an ECDSA P-256 key, RS256 for
// RSA. It carries agent_id (a string, or a list for several agents),
// role, destinations when given, exp, jti and, when set, aud as a
// one-element list; its header only alg.
//
// The claims are kept to those the proxy (and the reference's proxy)
// reads, so that a client token fits where a password may be at most 255
// bytes (SOCKS5, RFC 1929; see MaxCompactAgentID): no iss, sub, nbf or
// iat. Tokens with more claims, as the reference signs them, verify all
// the same.
func Sign(key crypto.Signer, o TokenOptions) (string, error) {
	alg, err := algOf(key)
	if err != nil {
		return "", err
	}
	if o.Role != RoleClient && o.Role != RoleAgent {
		return "", fmt.Errorf("role %q, want %s or %s", o.Role, RoleClient, RoleAgent)
	}
	agents := o.Agents
	if o.AgentID != "" {
		agents = append([]string{o.AgentID}, agents...)
	}
	var agentClaim any
	switch {
	case len(agents) == 0:
		return "", errors.New("agent ID: empty")
	case o.Role == RoleAgent && len(agents) != 1:
		return "", fmt.Errorf("agent ID: an agent token names exactly one agent, got %d", len(agents))
	case o.Role == RoleAgent:
		if err := checkAgentID(agents[0]); err != nil {
			return "", fmt.Errorf("agent ID: %w", err)
		}
		agentClaim = agents[0]
	default:
		ps, err := ParseAgentPatterns(agents)
		if err != nil {
			return "", fmt.Errorf("agent ID: %w", err)
		}
		agentClaim = []string(ps)
		if len(ps) == 1 {
			agentClaim = ps[0]
		}
	}
	if len(o.Destinations) > 0 {
		if o.Role != RoleClient {
			return "", errors.New("destinations: only a client token has them")
		}
		if _, err := allow.Parse(o.Destinations); err != nil {
			return "", fmt.Errorf("destinations: %w", err)
		}
	}
	if o.Duration <= 0 {
		return "", fmt.Errorf("token duration %v, want a positive duration", o.Duration)
	}
	now := o.Now
	if now.IsZero() {
		now = time.Now()
	}
	id := o.ID
	if id == "" {
		b := make([]byte, 8)
		rand.Read(b)
		id = base64.RawURLEncoding.EncodeToString(b)
	} else if err := checkJTI([]byte(id)); err != nil {
		return "", err
	}
	claims := signedClaims{
		AgentID: agentClaim,
		Role:    o.Role,
		RegisteredClaims: jwt.RegisteredClaims{
			ExpiresAt: jwt.NewNumericDate(now.Add(o.Duration)),
			ID:        id,
		},
	}
	if len(o.Destinations) > 0 {
		claims.Destinations = splitPatterns(o.Destinations)
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
const MaxCompactAgentID = 42

// KeySource finds the public key that verifies a token: the key of
// --auth.jwt.public-key, or a key set fetched from a JWKS URL that picks
// by the header's kid. A Verifier may have several; a token verifies if
// one of the keys they return verifies its signature.
type KeySource interface {
	// VerificationKey returns the key (an *ecdsa.PublicKey or
	// *rsa.PublicKey) for t, whose header says its alg and kid, or an
	// error saying why there is none.
	VerificationKey(t *jwt.Token) (crypto.PublicKey, error)
}

// StaticKey is a KeySource of one key, which it returns for every token
// whose alg matches it (and only then). Make it with NewStaticKey.
type StaticKey struct {
	key crypto.PublicKey
	alg string
	err error // why key is unusable, if it is
}

// NewStaticKey returns the KeySource of pub, an ECDSA P-256 or RSA public
// key as ParsePublicKey returns; an unsupported key fails every token
// with the reason.
func NewStaticKey(pub crypto.PublicKey) *StaticKey {
	alg, err := publicAlgOf(pub)
	return &StaticKey{key: pub, alg: alg, err: err}
}

// VerificationKey returns the key if t's alg matches it.
func (k *StaticKey) VerificationKey(t *jwt.Token) (crypto.PublicKey, error) {
	if k.err != nil {
		return nil, k.err
	}
	if t.Method == nil || t.Method.Alg() != k.alg {
		return nil, fmt.Errorf("the key is %s", k.alg)
	}
	return k.key, nil
}

// VerifierConfig configures NewVerifierWith.
type VerifierConfig struct {
	// Keys verify the signatures; at least one.
	Keys []KeySource
	// Audience, when not "", must be in a token's aud; when "", aud is
	// not checked.
	Audience string
	// AgentsClaim names the claim of a client token that says which
	// agents it may use (a string or a list of agent ID patterns); ""
	// means agent_id. Agent tokens always use agent_id.
	AgentsClaim string
	// Revoked, if not nil, refuses tokens whose jti it lists.
	Revoked *RevokedFile
}

// Verifier checks tokens. It is safe for concurrent use.
type Verifier struct {
	cfg    VerifierConfig
	keyErr error // why no key can verify anything, if so
	parser *jwt.Parser
	keys   *keySource // nil: cfg.Keys alone; see WithKeySource (keysource.go)
}

// NewVerifier returns a Verifier for tokens signed by the private half of pub,
// an ECDSA P-256 or RSA public key as ParsePublicKey returns. Only the
// matching algorithm (ES256 or RS256) is accepted. When audience is not "",
// tokens must carry it in aud; when it is "", aud is not checked.
//
// An unsupported key makes every Verify fail with the reason.
func NewVerifier(pub crypto.PublicKey, audience string) *Verifier {
	return NewVerifierWith(VerifierConfig{Keys: []KeySource{NewStaticKey(pub)}, Audience: audience})
}

// NewVerifierWith returns a Verifier with the keys, audience, agents claim
// and revocation list of cfg. Only ES256 and RS256 are ever accepted
// (with only static keys, only their algorithms), and a key only for the
// algorithm of its type.
func NewVerifierWith(cfg VerifierConfig) *Verifier {
	if cfg.AgentsClaim == "" {
		cfg.AgentsClaim = "agent_id"
	}
	v := &Verifier{cfg: cfg}
	algs := map[string]bool{}
	for _, k := range cfg.Keys {
		s, ok := k.(*StaticKey)
		if !ok {
			algs["ES256"], algs["RS256"] = true, true
			continue
		}
		if s.err != nil {
			if len(cfg.Keys) == 1 {
				v.keyErr = s.err
			}
			continue
		}
		algs[s.alg] = true
	}
	if len(cfg.Keys) == 0 {
		v.keyErr = errors.New("no keys")
	}
	var valid []string
	for _, a := range []string{"ES256", "RS256"} {
		if algs[a] {
			valid = append(valid, a)
		}
	}
	if len(valid) == 0 {
		valid = []string{"ES256"} // no usable key: keyErr says why
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(valid),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(leeway),
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v.parser = jwt.NewParser(opts...)
	return v
}

// Verify checks token and returns its claims. The signature must be ES256 or
// RS256 by one of the verifier's keys (none, HS256 and the rest are
// refused); exp is required; exp and nbf are checked with 5s leeway; aud
// when the Verifier has an audience; jti must not be revoked. The role
// claim must equal role. An agent token's agent_id must be a valid agent
// ID; a client token's agents claim must be one or a list of agent ID
// patterns (Claims.Agents), and its destinations claim, if any,
// allowlist patterns (Claims.Destinations). Errors wrap ErrUnauthorized.
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
	if v.cfg.Revoked.Has(c.ID) {
		return nil, &denied{reason: fmt.Sprintf("token %s is revoked (--auth.jwt.revoked)", quoteIfOdd(c.ID)), cause: ErrRevoked}
	}
	if role == RoleAgent {
		if err := checkAgentID(c.AgentID); err != nil {
			return nil, deny("agent_id: %v", err)
		}
		return &c, nil
	}
	agents, ok, err := c.stringOrList(v.cfg.AgentsClaim)
	switch {
	case err != nil:
		return nil, deny("%v", err)
	case !ok:
		return nil, deny("no %s claim: a client token must say which agents it may use", v.cfg.AgentsClaim)
	}
	if c.Agents, err = ParseAgentPatterns(agents); err != nil {
		return nil, deny("claim %s: %v", v.cfg.AgentsClaim, err)
	}
	dests, ok, err := c.stringOrList("destinations")
	if err != nil {
		return nil, deny("%v", err)
	}
	if ok {
		if c.dest, err = allow.Parse(dests); err != nil {
			return nil, deny("claim destinations: %v", err)
		}
		if c.dest.Empty() {
			return nil, deny("claim destinations: empty (leave it out to allow every destination the node allows)")
		}
		c.Destinations = dests
	}
	return &c, nil
}

// keyFunc returns the keys of every source that has one for t.
func (v *Verifier) keyFunc(t *jwt.Token) (any, error) {
	var keys []jwt.VerificationKey
	var errs []error
	for _, s := range v.cfg.Keys {
		k, err := s.VerificationKey(t)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		keys = append(keys, k)
	}
	switch len(keys) {
	case 0:
		return nil, fmt.Errorf("no key for this token: %w", errors.Join(errs...))
	case 1:
		return keys[0], nil
	}
	return jwt.VerificationKeySet{Keys: keys}, nil
}

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
		reason = fmt.Sprintf("token audience mismatch, want %q", v.cfg.Audience)
	}
	return &denied{reason: reason, cause: err}
}
