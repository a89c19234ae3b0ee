// Package auth decides who may connect: agents on their QUIC auth stream and
// HTTP proxy clients through Basic credentials.
//
// Two modes exist. NoAuth trusts whatever agent ID it is given. JWT checks
// ES256 or RS256 tokens signed by the operator's private key; keys and tokens
// are interchangeable with grepplabs/reverse-http (see key.go and token.go).
package auth

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
)

// Roles a token can carry, and the issuer every token is signed with.
const (
	RoleClient = "client"
	RoleAgent  = "agent"
	Issuer     = "reverse-http"
)

// maxAgentIDLen bounds an agent ID in bytes.
const maxAgentIDLen = 256

// ErrUnauthorized is wrapped by every error an Authenticator, Verifier.Verify
// or ParseBasic returns; the message carries the reason.
var ErrUnauthorized = errors.New("unauthorized")

// denied is an authentication failure: it wraps ErrUnauthorized and, when
// there is one, the underlying cause (for example jwt.ErrTokenExpired).
type denied struct {
	reason string
	cause  error
}

func (e *denied) Error() string { return ErrUnauthorized.Error() + ": " + e.reason }

func (e *denied) Unwrap() []error {
	if e.cause == nil {
		return []error{ErrUnauthorized}
	}
	return []error{ErrUnauthorized, e.cause}
}

func deny(format string, args ...any) error {
	return &denied{reason: fmt.Sprintf(format, args...)}
}

// Authenticator decides who may connect. Implemented by NoAuth, JWT and
// WithClients. Implementations are safe for concurrent use.
type Authenticator interface {
	// Agent checks the credential an agent sent on its auth stream and returns its agent ID.
	Agent(credential string) (agentID string, err error)
	// Client checks the credentials of a client who wants agent c.User
	// and returns who it is and what it may reach.
	Client(c Credentials) (*Identity, error)
}

// NoAuth returns an Authenticator that trusts everyone.
//
// Agent takes the credential as the agent ID itself, unchanged (not trimmed,
// like the reference). Client accepts any non-empty user and ignores the
// password entirely, as the reference's noauth mode does: anyone who can reach
// the proxy can use any connected agent.
//
// Unlike the reference, an ID (agent credential or client user) must also be
// at most 256 bytes of valid UTF-8 without control characters or ':' (see
// CheckAgentID).
func NoAuth() Authenticator { return noAuth{} }

type noAuth struct{}

func (noAuth) Agent(credential string) (string, error) {
	if err := checkAgentID(credential); err != nil {
		if looksLikeJWT(credential) {
			return "", deny("agent ID: %v; this proxy uses noauth and the credential sent looks like a JWT (start the proxy with --auth.type=jwt, or the agent with --auth.noauth.agent-id)", err)
		}
		return "", deny("agent ID: %v", err)
	}
	return credential, nil
}

func (noAuth) Client(c Credentials) (*Identity, error) {
	if err := checkAgentID(c.User); err != nil {
		return nil, deny("user: %v", err)
	}
	return &Identity{Kind: KindNoAuth, Metric: OtherClient}, nil
}

// JWT returns an Authenticator that checks tokens with v, which must not be nil.
//
// Agent wants a token with role "agent" and returns its agent_id. Client
// wants the password to be a token with role "client" whose agents claim
// names user (exactly or by a pattern); its destinations claim, if any,
// becomes the identity's destination policy.
func JWT(v *Verifier) Authenticator { return jwtAuth{v: v} }

type jwtAuth struct{ v *Verifier }

func (a jwtAuth) Agent(credential string) (string, error) {
	if !looksLikeJWT(credential) {
		// Most likely a noauth agent, whose credential is its ID.
		return "", deny("this proxy requires an agent JWT (--auth.type=jwt --auth.jwt.token=file:PATH); the credential sent is not a JWT")
	}
	c, err := a.v.Verify(credential, RoleAgent)
	if err != nil {
		return "", err
	}
	return c.AgentID, nil
}

func (a jwtAuth) Client(cr Credentials) (*Identity, error) {
	if cr.User == "" {
		return nil, deny("empty user")
	}
	c, err := a.v.Verify(cr.Password, RoleClient)
	if err != nil {
		return nil, err
	}
	if !c.Agents.Match(cr.User) {
		if len(c.Agents) == 1 {
			return nil, deny("agent_id mismatch: user %s, token %s", quoteIfOdd(cr.User), c.Agents[0])
		}
		return nil, deny("agent %s is not among the token's agents (%s)", quoteIfOdd(cr.User), strings.Join(c.Agents, ","))
	}
	name := c.Subject
	if name == "" && c.ID != "" {
		name = "jti:" + c.ID
	}
	id := &Identity{Kind: KindJWT, Name: clipName(name), Metric: OtherClient, destinations: c.dest}
	if c.ExpiresAt != nil {
		id.Expires = c.ExpiresAt.Add(leeway)
	}
	if jti, revokedList := c.ID, a.v.cfg.Revoked; jti != "" && revokedList != nil {
		id.check = func(string, string) error {
			if revokedList.Has(jti) {
				return revoked("token %s was revoked (--auth.jwt.revoked)", quoteIfOdd(jti))
			}
			return nil
		}
	}
	return id, nil
}

// clipName bounds a name taken from a token, and quotes it if it has
// control characters or is not UTF-8, so it is safe in logs.
func clipName(s string) string {
	if len(s) > maxAgentIDLen {
		s = s[:maxAgentIDLen]
	}
	if !utf8.ValidString(s) || strings.IndexFunc(s, unicode.IsControl) >= 0 {
		return fmt.Sprintf("%q", s)
	}
	return s
}

// WithClients returns an Authenticator that checks agents as base does and
// clients against the clients file f first:
//
//   - a verified client certificate whose CN names a client of f: that
//     client, without a password;
//   - a password NAME:SECRET where NAME is a client of f: that client, if
//     SECRET is its secret;
//   - with base a JWT authenticator, a client token, as base checks it;
//   - else refused: with a clients file, noauth applies to agents only.
//
// The client's agents (and destinations) are its policy.
func WithClients(base Authenticator, f *ClientsFile) Authenticator {
	return clientsAuth{base: base, f: f}
}

type clientsAuth struct {
	base Authenticator
	f    *ClientsFile
}

func (a clientsAuth) Agent(credential string) (string, error) { return a.base.Agent(credential) }

func (a clientsAuth) Client(c Credentials) (*Identity, error) {
	if err := checkAgentID(c.User); err != nil {
		return nil, deny("user: %v", err)
	}
	if c.CertName != "" {
		id, err := a.f.byCert(c.CertName, c.User)
		if id != nil || err != nil {
			return id, err
		}
	}
	_, isJWT := a.base.(jwtAuth)
	if isJWT && looksLikeJWT(c.Password) {
		return a.base.Client(c)
	}
	name, secret, ok := strings.Cut(c.Password, ":")
	if !ok || CheckClientName(name) != nil {
		if isJWT {
			return nil, deny("password: want NAME:SECRET of a client of the clients file, or a client JWT")
		}
		return nil, deny("password: want NAME:SECRET of a client of the clients file (--auth.clients.file)")
	}
	return a.f.authenticate(name, secret, c.User)
}

// looksLikeJWT reports whether s has the shape of a JWT in compact
// serialization: three non-empty base64url parts separated by dots.
func looksLikeJWT(s string) bool {
	parts := 0
	n := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == '.' {
			if n == 0 {
				return false
			}
			parts, n = parts+1, 0
			continue
		}
		switch c := s[i]; {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_', c == '=':
			n++
		default:
			return false
		}
	}
	return parts == 3
}

// CheckAgentID reports why id cannot be the ID of an agent that clients
// select, or nil. An ID is 1-256 bytes of UTF-8 without control characters
// (so it is safe to log and to use as a route key), without ':', which
// would split the Basic user:password a client selects the agent with,
// and without '*' or ',', which client policies (clients file, token
// claims) read as a wildcard and a separator: a policy naming such an
// agent would name others, or none.
func CheckAgentID(id string) error { return checkAgentID(id) }

// checkAgentID is CheckAgentID.
func checkAgentID(id string) error { return checkID(id, false) }

// checkPattern is checkAgentID for an agent pattern, in which '*' may
// appear.
func checkPattern(p string) error { return checkID(p, true) }

func checkID(id string, pattern bool) error {
	switch {
	case id == "":
		return errors.New("empty")
	case len(id) > maxAgentIDLen:
		return fmt.Errorf("longer than %d bytes", maxAgentIDLen)
	case !utf8.ValidString(id):
		return errors.New("not valid UTF-8")
	}
	for _, r := range id {
		if unicode.IsControl(r) {
			return fmt.Errorf("control character %U", r)
		}
		switch {
		case r == ':':
			return errors.New("contains ':', which separates user and password in Proxy-Authorization, so no client could select this agent")
		case r == '*' && !pattern:
			return errors.New("contains '*', which client policies read as a wildcard")
		case r == ',':
			return errors.New("contains ',', which separates agent patterns in client policies")
		}
	}
	return nil
}

// quoteIfOdd returns s as is when it is a well-formed agent ID, else quoted
// (and cut short), so untrusted input cannot forge log lines.
func quoteIfOdd(s string) string {
	if checkAgentID(s) == nil {
		return s
	}
	if len(s) > maxAgentIDLen {
		s = s[:maxAgentIDLen]
	}
	return fmt.Sprintf("%q", s)
}

// CredentialAgentID is the agent ID an agent's own credential names: the
// credential itself (noauth), or the agent_id of its JWT, read without
// verifying it (the proxy does that). It is for the agent's own logs; ""
// if a JWT cannot be read.
func CredentialAgentID(credential string) string {
	if !looksLikeJWT(credential) {
		return credential
	}
	var c Claims
	if _, _, err := jwt.NewParser().ParseUnverified(credential, &c); err != nil {
		return ""
	}
	return c.AgentID
}
