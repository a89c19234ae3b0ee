package auth

import (
	"errors"
	"fmt"
	"time"

	"github.com/reverse-http/reverse-http/internal/allow"
)

// Kinds of client identity.
const (
	KindNoAuth = "noauth" // noauth mode without a clients file: anyone
	KindClient = "client" // a client of the clients file, by NAME:SECRET
	KindCert   = "cert"   // a client of the clients file, by its certificate's CN
	KindJWT    = "jwt"    // a client token
)

// Credentials are what a client presents: the Basic (or SOCKS5) user and
// password, and the common name of the TLS client certificate the HTTPS
// listener verified ("" without one).
type Credentials struct {
	User     string
	Password string
	CertName string
}

// OtherClient is the metrics label of every client that is not named in a
// clients file (noauth, JWT), so that the label set stays bounded by the
// file; no client may be named so.
const OtherClient = "other"

// Identity is who a client is, once authenticated, and what it may do
// beyond the node's allowlist. It is immutable; Check tells whether it
// still holds.
type Identity struct {
	// Kind is KindNoAuth, KindClient, KindCert or KindJWT.
	Kind string
	// Name is the client's name in the clients file, the token's sub (or
	// its jti, as "jti:ID", when it has no sub), or the certificate's CN;
	// "" for noauth.
	Name string
	// Expires is when the identity stops being valid (a client's expiry,
	// a token's exp plus leeway); zero: never. The front ends the
	// client's tunnels then.
	Expires time.Time

	// Metric is the value of the client label of
	// reverse_http_client_tunnels_total: a clients-file name, else
	// OtherClient.
	Metric string

	destinations *allow.List // nil: no policy of its own
	// check reports whether the identity still holds now for agentID and
	// destination hostport (the file or revocation list may have
	// changed); nil: always.
	check func(agentID, hostport string) error
}

// String is the identity as logs, the audit log and /tunnels show it:
// "kind:name", or the kind alone when there is no name.
func (id *Identity) String() string {
	if id == nil {
		return ""
	}
	if id.Name == "" {
		return id.Kind
	}
	return id.Kind + ":" + id.Name
}

// AllowedDestination reports whether the identity's own destination
// policy allows host:port (true when it has none). The node's allowlist
// applies as well: both must allow.
func (id *Identity) AllowedDestination(host string, port int) bool {
	return id == nil || id.destinations.Allowed(host, port)
}

// HasDestinations reports whether the identity carries a destination
// policy of its own.
func (id *Identity) HasDestinations() bool { return id != nil && !id.destinations.Empty() }

// ErrRevoked is wrapped by Check's errors: the identity no longer holds.
var ErrRevoked = errors.New("revoked")

// Check reports why the identity no longer holds for a tunnel through
// agentID to hostport, or nil: its client was removed from the clients
// file, changed or expired, or its token's jti was revoked. Errors wrap
// ErrRevoked. It is cheap (no hashing): the front calls it for every open
// tunnel when an auth file changes.
func (id *Identity) Check(agentID, hostport string, now time.Time) error {
	if id == nil {
		return nil
	}
	if !id.Expires.IsZero() && !now.Before(id.Expires) {
		return revoked("%s expired at %s", id, id.Expires.UTC().Format(time.RFC3339))
	}
	if id.check == nil {
		return nil
	}
	return id.check(agentID, hostport)
}

func revoked(format string, args ...any) error {
	return &denied{reason: fmt.Sprintf(format, args...), cause: ErrRevoked}
}

// MetricLabel is Metric, or OtherClient for a nil identity or none set.
func (id *Identity) MetricLabel() string {
	if id == nil || id.Metric == "" {
		return OtherClient
	}
	return id.Metric
}
