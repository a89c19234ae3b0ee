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

// Authenticator decides who may connect. Implemented by NoAuth and JWT.
// Implementations are safe for concurrent use.
type Authenticator interface {
	// Agent checks the credential an agent sent on its auth stream and returns its agent ID.
	Agent(credential string) (agentID string, err error)
	// Client checks the Basic credentials of an HTTP proxy client who wants agent `user`.
	Client(user, password string) error
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

func (noAuth) Client(user, _ string) error {
	if err := checkAgentID(user); err != nil {
		return deny("user: %v", err)
	}
	return nil
}

// JWT returns an Authenticator that checks tokens with v, which must not be nil.
//
// Agent wants a token with role "agent" and returns its agent_id. Client
// wants the password to be a token with role "client" whose agent_id equals
// user.
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

func (a jwtAuth) Client(user, password string) error {
	if user == "" {
		return deny("empty user")
	}
	c, err := a.v.Verify(password, RoleClient)
	if err != nil {
		return err
	}
	if c.AgentID != user {
		return deny("agent_id mismatch: user %s, token %s", quoteIfOdd(user), c.AgentID)
	}
	return nil
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
// (so it is safe to log and to use as a route key) and without ':', which
// would split the Basic user:password a client selects the agent with.
func CheckAgentID(id string) error { return checkAgentID(id) }

// checkAgentID is CheckAgentID.
func checkAgentID(id string) error {
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
		if r == ':' {
			return errors.New("contains ':', which separates user and password in Proxy-Authorization, so no client could select this agent")
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
