// Package wire is the agent<->proxy protocol spoken over QUIC, byte for byte
// compatible with grepplabs/reverse-http.
//
// # Connection
//
// The agent is the QUIC client. TLS 1.3 with ALPN [ALPN] ("reverse-http-proto").
// Where UDP is blocked the same bytes travel over TLS on TCP, in yamux
// streams (package transport, ALPN "reverse-http-tcp").
//
// # Authentication
//
// The agent opens the first bidirectional stream and writes one message:
//
//	+----------------------+---------------------------+
//	| length (uint32, BE)  | credential (length bytes) |
//	+----------------------+---------------------------+
//
// The credential is the agent ID (noauth) or a JWT with role "agent" (jwt).
// A length above [MaxAuthLen] (1 MiB) is refused. On success the proxy answers
// on the same stream with a message of the same framing whose payload is
// [AuthOK] ("authenticated") and closes the stream; on failure it closes the
// whole connection with an application error ([CodeAuthFailed]; the reference
// proxy uses 500), and a proxy at its limit of agents closes it with
// [CodeTooManyAgents] instead of answering. Both sides bound the exchange with
// a timeout.
//
// # Tunnels
//
// Every tunnel is one bidirectional stream opened by the proxy. The proxy writes
// an HTTP/1.1 CONNECT request in authority form:
//
//	CONNECT host:port HTTP/1.1\r\n
//	Host: host:port\r\n
//	\r\n
//
// (the reference proxy adds "Proxy-Connection: keep-alive"; extra headers are
// ignored). The agent answers with an HTTP/1.1 response:
//
//	HTTP/1.1 200 Connection established\r\n
//	\r\n
//
// after which the stream carries raw bytes in both directions, a FIN on the
// stream standing for a TCP half-close. Or it answers with an error status and
// a short text/plain reason, and closes the stream:
//
//	HTTP/1.1 403 Forbidden\r\n
//	Content-Type: text/plain; charset=utf-8\r\n
//	Content-Length: 37\r\n
//	\r\n
//	destination example.com:25 not allowed
//
// Statuses the agent sends: 403 (its allowlist denies the destination), 502
// (refused, unreachable or unresolvable), 504 (the dial timed out), 400 (the
// request is malformed). The reference agent answers 503 for any dial error.
//
// The proxy must not send tunnel bytes before it has read the 200: the
// reference agent drops bytes that arrive together with the request.
package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/quic-go/quic-go"
)

// ALPN is the TLS application protocol of the agent connection.
const ALPN = "reverse-http-proto"

// MaxAuthLen is the largest credential an agent may send, and the largest
// authentication answer it accepts.
const MaxAuthLen = 1 << 20

// AuthOK is the proxy's answer to a successful authentication.
const AuthOK = "authenticated"

// Application error codes used to close an agent connection. The reference
// uses 0 (normal), 400 and 500; we keep those numbers meaningful and add ours
// above 0x100 so that logs on either side can say why a connection ended.
const (
	// CodeNoError: the connection was closed normally.
	CodeNoError quic.ApplicationErrorCode = 0
	// CodeBadRequest: the reference's code for an empty agent ID.
	CodeBadRequest quic.ApplicationErrorCode = 400
	// CodeAuthFailed: the credential was refused (the reference's 500).
	CodeAuthFailed quic.ApplicationErrorCode = 500
	// CodeReplaced: another connection authenticated with the same agent ID
	// and replaced this one. An agent that sees it waits before it reconnects.
	CodeReplaced quic.ApplicationErrorCode = 0x101
	// CodeShutdown: the proxy is shutting down; reconnect (to another proxy).
	CodeShutdown quic.ApplicationErrorCode = 0x102
	// CodeProtocol: the peer broke this protocol.
	CodeProtocol quic.ApplicationErrorCode = 0x103
	// CodeDuplicate: the agent ID is in use by a live connection from
	// another address, and the two have been replacing each other (two
	// agents configured with one ID). The proxy keeps the connected one and
	// closes the newcomer with this code right after its authentication
	// succeeded (within a few seconds, before any tunnel); the agent waits,
	// longer each time, before it tries again, and takes the ID over once
	// the other connection is gone.
	CodeDuplicate quic.ApplicationErrorCode = 0x104
	// CodeTooManyAgents: the proxy holds as many agents as it may
	// (--limits.agents); the agent authenticated but is not registered.
	// The reason names the limit. Reconnect with backoff, possibly to
	// another proxy.
	CodeTooManyAgents quic.ApplicationErrorCode = 0x110
)

// Control messages. The proxy sends one on a unidirectional stream it
// opens, as one length-prefixed message (WriteMessage) of at most
// MaxControlLen bytes: the message's first line names it, the rest is a
// reason for humans. The reference agent never accepts unidirectional
// streams, so it ignores them; an agent that does not know a message
// ignores it too.
const (
	// ControlMove: the proxy is draining. The agent opens a new
	// connection (through the load balancer, to another proxy, or to this
	// one once it is back) and keeps this one, and the tunnels on it, until
	// the proxy closes it; new tunnels come on whichever connection the
	// proxies pick.
	ControlMove = "move"
	// MaxControlLen bounds a control message.
	MaxControlLen = 4 << 10
	// MaxControlStreams is how many control streams an agent lets the
	// proxy open at once.
	MaxControlStreams = 4
)

// Stream error codes, for CancelRead/CancelWrite on a tunnel stream.
const (
	// StreamCodeAbort: the tunnel ended abnormally (a TCP reset, an I/O error).
	StreamCodeAbort quic.StreamErrorCode = 0x1
)

// ErrTooLong is returned for an authentication message above MaxAuthLen.
var ErrTooLong = errors.New("message longer than 1 MiB")

// WriteMessage writes one length-prefixed message.
func WriteMessage(w io.Writer, msg string) error {
	if len(msg) > MaxAuthLen {
		return ErrTooLong
	}
	buf := make([]byte, 4+len(msg))
	binary.BigEndian.PutUint32(buf, uint32(len(msg)))
	copy(buf[4:], msg)
	_, err := w.Write(buf)
	return err
}

// ReadMessage reads one length-prefixed message.
func ReadMessage(r io.Reader) (string, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return "", fmt.Errorf("read length: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > MaxAuthLen {
		return "", fmt.Errorf("%w: %d bytes", ErrTooLong, n)
	}
	// Grow the buffer with what arrives rather than trusting the claimed
	// length: a peer that claims 1 MiB and sends four bytes costs four.
	var buf bytes.Buffer
	got, err := buf.ReadFrom(io.LimitReader(r, int64(n)))
	switch {
	case err == nil && got == 0 && n > 0:
		err = io.EOF // as io.ReadFull says it
	case err == nil && got < int64(n):
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return "", fmt.Errorf("read %d-byte message: %w", n, err)
	}
	return buf.String(), nil
}

// WriteConnect writes the tunnel request for hostport.
func WriteConnect(w io.Writer, hostport string) error {
	_, err := io.WriteString(w, "CONNECT "+hostport+" HTTP/1.1\r\nHost: "+hostport+"\r\n\r\n")
	return err
}

// ReadConnect reads a tunnel request and returns its validated destination
// (host:port; IPv6 hosts bracketed). Bytes behind the request stay in br.
func ReadConnect(br *bufio.Reader) (string, error) {
	req, err := http.ReadRequest(br)
	if err != nil {
		return "", fmt.Errorf("read tunnel request: %w", err)
	}
	if req.Method != http.MethodConnect {
		return "", fmt.Errorf("tunnel request: method %q, want CONNECT", req.Method)
	}
	if req.ContentLength > 0 || len(req.TransferEncoding) > 0 {
		return "", errors.New("tunnel request: unexpected body")
	}
	target := req.RequestURI
	if target == "" {
		target = req.Host
	}
	if _, _, err := SplitHostPort(target); err != nil {
		return "", fmt.Errorf("tunnel request: %w", err)
	}
	return target, nil
}

// SplitHostPort splits and validates a CONNECT authority: a non-empty host
// and a port in 1..65535.
func SplitHostPort(hostport string) (host string, port int, err error) {
	// The destination comes from a client and ends up in errors, logs and
	// a client's response: quote it, and cut a long one short.
	quoted := strconv.Quote(hostport)
	if len(quoted) > 80 {
		quoted = quoted[:64] + fmt.Sprintf(`..." (%d bytes)`, len(hostport))
	}
	h, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", 0, fmt.Errorf("destination %s: %w", quoted, stripAddrErr(err))
	}
	if h == "" {
		return "", 0, fmt.Errorf("destination %s: missing host", quoted)
	}
	if strings.HasPrefix(hostport, "[") {
		if a, err := netip.ParseAddr(h); err != nil || !a.Is6() {
			return "", 0, fmt.Errorf("destination %s: brackets hold only an IPv6 address", quoted)
		}
	}
	if len(h) > MaxHostLen {
		return "", 0, fmt.Errorf("destination %s: host longer than %d bytes", quoted, MaxHostLen)
	}
	for _, c := range []byte(h) {
		if !validHostByte[c] {
			return "", 0, fmt.Errorf("destination %s: invalid character %q in host", quoted, c)
		}
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 || p[0] < '0' || p[0] > '9' {
		return "", 0, fmt.Errorf("destination %s: invalid port %q", quoted, truncate(p, 16))
	}
	return h, n, nil
}

// MaxHostLen bounds the host of a destination: a DNS name has at most 253
// bytes, an IPv6 address with a zone far fewer.
const MaxHostLen = 255

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// firstLine is the first non-empty line of s, trimmed, in at most
// maxReasonLen bytes; control characters become spaces and invalid UTF-8
// "?", since a reason ends up in logs and a client's response. (Invalid
// bytes once became U+FFFD, three bytes each, so a reason could outgrow
// its bound: found by FuzzReadResponse.)
func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
	if len(s) > maxReasonLen {
		i := maxReasonLen
		for i > 0 && !utf8.RuneStart(s[i]) {
			i--
		}
		s = s[:i]
	}
	return s
}

// validHostByte: letters, digits and ".-_" for names, ":" for IPv6, "%"
// for an IPv6 zone.
var validHostByte = func() (t [256]bool) {
	for c := range 256 {
		t[c] = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '.' || c == '-' || c == '_' || c == ':' || c == '%'
	}
	return t
}()

func stripAddrErr(err error) error {
	var ae *net.AddrError
	if errors.As(err, &ae) {
		return errors.New(ae.Err)
	}
	return err
}

// WriteOK writes the agent's success answer.
func WriteOK(w io.Writer) error {
	_, err := io.WriteString(w, "HTTP/1.1 200 Connection established\r\n\r\n")
	return err
}

// WriteError writes an error answer with a one-line reason.
func WriteError(w io.Writer, status int, reason string) error {
	reason = strings.ReplaceAll(reason, "\n", " ")
	_, err := fmt.Fprintf(w, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s",
		status, http.StatusText(status), len(reason), reason)
	return err
}

// maxReasonLen bounds the reason read from an error answer.
const maxReasonLen = 4 << 10

// connectReq lets http.ReadResponse know the answer belongs to a CONNECT, so a
// 200 has no body and the tunnel bytes behind it stay in the reader.
var connectReq = &http.Request{Method: http.MethodConnect}

// ReadResponse reads the agent's answer. On 200 it returns (200, "", nil) and
// the tunnel bytes that follow stay in br. On an error status it returns the
// status and the reason text (the status text when the body is empty).
func ReadResponse(br *bufio.Reader) (status int, reason string, err error) {
	resp, err := http.ReadResponse(br, connectReq)
	if err != nil {
		return 0, "", fmt.Errorf("read tunnel response: %w", err)
	}
	if resp.StatusCode == http.StatusOK {
		return http.StatusOK, "", nil
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxReasonLen))
	reason = firstLine(string(body))
	if reason == "" {
		reason = firstLine(resp.Status)
	}
	return resp.StatusCode, reason, nil
}
