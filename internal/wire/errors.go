package wire

import (
	"errors"
	"net/http"
)

// Kinds of tunnel failure. Dialers wrap them in an *Error with a reason; the
// client edge maps them to HTTP statuses.
var (
	ErrAgentOffline = errors.New("agent not connected")
	ErrDenied       = errors.New("destination not allowed")
	ErrUnreachable  = errors.New("destination unreachable")
	ErrTimeout      = errors.New("timed out")
	ErrBadRequest   = errors.New("bad request")
	// ErrLimit: a configured limit (tunnels per agent or per client) is
	// reached; the client may retry later.
	ErrLimit = errors.New("limit reached")
)

// Error is a tunnel failure of one Kind, with a one-line reason for humans.
type Error struct {
	Kind   error
	Reason string
}

func (e *Error) Error() string { return e.Reason }
func (e *Error) Unwrap() error { return e.Kind }

// Errorf makes an *Error of the given kind.
func Errorf(kind error, reason string) error { return &Error{Kind: kind, Reason: reason} }

// ErrorFromStatus turns an agent's error answer into an *Error. The
// reference agent answers 503 for every dial failure; that is a
// destination failure, not an offline agent.
func ErrorFromStatus(status int, reason string) error {
	kind := ErrUnreachable
	switch status {
	case http.StatusForbidden:
		kind = ErrDenied
	case http.StatusGatewayTimeout:
		kind = ErrTimeout
	case http.StatusBadRequest:
		kind = ErrBadRequest
	case http.StatusTooManyRequests:
		kind = ErrLimit // from a proxy we forwarded to
	}
	return &Error{Kind: kind, Reason: reason}
}

// Status is the HTTP status for err: 503 agent offline, 403 denied, 504
// timeout, 400 bad request, 429 limit reached, 502 for everything else.
func Status(err error) int {
	switch {
	case errors.Is(err, ErrAgentOffline):
		return http.StatusServiceUnavailable
	case errors.Is(err, ErrDenied):
		return http.StatusForbidden
	case errors.Is(err, ErrTimeout):
		return http.StatusGatewayTimeout
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, ErrLimit):
		return http.StatusTooManyRequests
	default:
		return http.StatusBadGateway
	}
}

// Outcomes of a tunnel or request, as metrics and the audit log name them.
// Every HTTP status maps to one (Outcome), so a label of them stays small.
const (
	OutcomeOK           = "ok"
	OutcomeDenied       = "denied"       // 403: an allowlist, or the agent's own listeners
	OutcomeOffline      = "offline"      // 503: the agent is not connected (or not reachable)
	OutcomeRefused      = "refused"      // 502: the destination refused or is unreachable
	OutcomeTimeout      = "timeout"      // 504, 408: a dial, an answer or a body took too long
	OutcomeUnauthorized = "unauthorized" // 407
	OutcomeBadRequest   = "bad_request"  // 400, 431 and other 4xx
	OutcomeLimited      = "limited"      // 429
	OutcomeError        = "error"        // anything else (5xx of the proxy itself)
)

// Outcome is the outcome of a tunnel or request answered with status. An
// absolute-form request whose origin answered is ok, whatever the origin's
// status: the proxy did its job. Callers pass the proxy's own status.
func Outcome(status int) string {
	switch {
	case status == 0, status < 400:
		return OutcomeOK
	case status == http.StatusForbidden:
		return OutcomeDenied
	case status == http.StatusServiceUnavailable:
		return OutcomeOffline
	case status == http.StatusBadGateway:
		return OutcomeRefused
	case status == http.StatusGatewayTimeout, status == http.StatusRequestTimeout:
		return OutcomeTimeout
	case status == http.StatusProxyAuthRequired:
		return OutcomeUnauthorized
	case status == http.StatusTooManyRequests:
		return OutcomeLimited
	case status < 500:
		return OutcomeBadRequest
	default:
		return OutcomeError
	}
}
