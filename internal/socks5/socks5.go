// Package socks5 reads and writes the server side of a SOCKS5 handshake:
// RFC 1928 method negotiation and requests, and RFC 1929 username/password
// authentication. It does no I/O of its own beyond the reader and writer
// it is given, keeps nothing between calls, and reads at most the bytes
// each message can hold: a caller bounds time with a deadline on the
// connection.
//
// # Greeting (client, RFC 1928 section 3)
//
//	+-----+----------+----------+
//	| VER | NMETHODS | METHODS  |
//	+-----+----------+----------+
//	|  1  |    1     | 1 to 255 |
//	+-----+----------+----------+
//
// VER is 5. NMETHODS 0 is malformed. The server answers VER 5 and the
// method it chose, or 0xFF (no acceptable methods) and closes.
//
// # Username/password (client, RFC 1929 section 2)
//
//	+-----+------+----------+------+----------+
//	| VER | ULEN |  UNAME   | PLEN |  PASSWD  |
//	+-----+------+----------+------+----------+
//	|  1  |  1   | 0 to 255 |  1   | 0 to 255 |
//	+-----+------+----------+------+----------+
//
// VER is 1. RFC 1929 wants ULEN and PLEN of at least 1; empty ones are
// read here and left to the authenticator to refuse. The server answers
// VER 1 and STATUS, 0 for success; on any other status it closes.
//
// # Request (client, RFC 1928 section 4)
//
//	+-----+-----+-------+------+----------+----------+
//	| VER | CMD |  RSV  | ATYP | DST.ADDR | DST.PORT |
//	+-----+-----+-------+------+----------+----------+
//	|  1  |  1  | X'00' |  1   | Variable |    2     |
//	+-----+-----+-------+------+----------+----------+
//
// CMD is 1 CONNECT, 2 BIND, 3 UDP ASSOCIATE. ATYP 1 is an IPv4 address (4
// bytes), 3 a domain name (a length byte, then that many bytes), 4 an IPv6
// address (16 bytes). DST.PORT is big-endian. RSV is not checked.
//
// # Reply (server, RFC 1928 section 6)
//
//	+-----+-----+-------+------+----------+----------+
//	| VER | REP |  RSV  | ATYP | BND.ADDR | BND.PORT |
//	+-----+-----+-------+------+----------+----------+
//	|  1  |  1  | X'00' |  1   | Variable |    2     |
//	+-----+-----+-------+------+----------+----------+
//
// WriteReply always sends BND 0.0.0.0:0 (ATYP 1): the address the agent
// dialed from is on the far side of the tunnel and means nothing to the
// client. After a reply other than Succeeded the server closes.
package socks5

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
)

// Version is the SOCKS protocol version, the first byte of a greeting and
// of a request; AuthVersion the RFC 1929 subnegotiation's.
const (
	Version     = 5
	AuthVersion = 1
)

// Authentication methods (RFC 1928 section 3).
const (
	MethodNoAuth       = 0x00
	MethodUserPass     = 0x02
	MethodNoAcceptable = 0xFF
)

// Commands (RFC 1928 section 4).
const (
	CmdConnect      = 0x01
	CmdBind         = 0x02
	CmdUDPAssociate = 0x03
)

// Address types (RFC 1928 section 5).
const (
	AtypIPv4   = 0x01
	AtypDomain = 0x03
	AtypIPv6   = 0x04
)

// Reply is the REP field of a reply (RFC 1928 section 6).
type Reply byte

const (
	Succeeded           Reply = 0x00
	GeneralFailure      Reply = 0x01 // general SOCKS server failure
	NotAllowed          Reply = 0x02 // connection not allowed by ruleset
	NetworkUnreachable  Reply = 0x03
	HostUnreachable     Reply = 0x04
	ConnectionRefused   Reply = 0x05
	TTLExpired          Reply = 0x06
	CommandNotSupported Reply = 0x07
	AddressNotSupported Reply = 0x08 // address type not supported
)

var replyNames = [...]string{
	"succeeded", "general failure", "not allowed by ruleset", "network unreachable",
	"host unreachable", "connection refused", "TTL expired", "command not supported",
	"address type not supported",
}

func (r Reply) String() string {
	if int(r) < len(replyNames) {
		return replyNames[r]
	}
	return fmt.Sprintf("reply 0x%02x", byte(r))
}

// Largest messages a client sends, in bytes: a greeting with 255
// methods, a username/password message with 255-byte fields, a request
// for a 255-byte domain name. A reader never reads more for one message.
const (
	MaxGreeting = 2 + 255
	MaxUserPass = 3 + 255 + 255
	MaxRequest  = 4 + 1 + 255 + 2
)

// Errors of a malformed message. Each is wrapped with the details.
var (
	// ErrVersion: the first byte is not the version; the peer does not
	// speak SOCKS5 (an HTTP request, SOCKS4, a TLS handshake...). RFC 1928
	// has no reply for it: close.
	ErrVersion = errors.New("not SOCKS5")
	// ErrMalformed: a message breaks the RFC in a way it has no reply for
	// (NMETHODS 0, an empty domain name): close. In a request it is
	// answered with GeneralFailure.
	ErrMalformed = errors.New("malformed SOCKS5 message")
	// ErrAddressType: a request's ATYP is not 1, 3 or 4; the rest of the
	// request cannot be read. Answer AddressNotSupported and close.
	ErrAddressType = errors.New("address type not supported")
)

// ReadGreeting reads a client's greeting and returns the methods it
// offers.
func ReadGreeting(r io.Reader) (methods []byte, err error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	if hdr[0] != Version {
		return nil, fmt.Errorf("%w: version byte 0x%02x%s", ErrVersion, hdr[0], guess(hdr[:]))
	}
	if hdr[1] == 0 {
		return nil, fmt.Errorf("%w: greeting offers no authentication method", ErrMalformed)
	}
	methods = make([]byte, hdr[1])
	if _, err := io.ReadFull(r, methods); err != nil {
		return nil, unexpected(err)
	}
	return methods, nil
}

// guess names what a peer that does not speak SOCKS5 may speak, from its
// first two bytes.
func guess(b []byte) string {
	switch {
	case b[0] == 4:
		return " (SOCKS4)"
	case b[0] == 0x16 && b[1] == 0x03:
		return " (a TLS handshake)"
	case b[0] >= 'A' && b[0] <= 'Z' && b[1] >= 'A' && b[1] <= 'Z':
		return " (an HTTP request? the HTTP proxy is on --http-proxy.listen-address)"
	}
	return ""
}

// WriteMethod answers a greeting with the chosen method, or
// MethodNoAcceptable.
func WriteMethod(w io.Writer, method byte) error {
	_, err := w.Write([]byte{Version, method})
	return err
}

// ReadUserPass reads an RFC 1929 username/password message.
func ReadUserPass(r io.Reader) (user, password string, err error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return "", "", unexpected(err)
	}
	if hdr[0] != AuthVersion {
		return "", "", fmt.Errorf("%w: username/password version 0x%02x, want 0x01", ErrMalformed, hdr[0])
	}
	// The user, and the password's length byte behind it.
	u := make([]byte, int(hdr[1])+1)
	if _, err := io.ReadFull(r, u); err != nil {
		return "", "", unexpected(err)
	}
	p := make([]byte, u[len(u)-1])
	if _, err := io.ReadFull(r, p); err != nil {
		return "", "", unexpected(err)
	}
	return string(u[:len(u)-1]), string(p), nil
}

// WriteAuthStatus answers a username/password message: status 0 for
// success, 1 for failure.
func WriteAuthStatus(w io.Writer, ok bool) error {
	status := byte(1)
	if ok {
		status = 0
	}
	_, err := w.Write([]byte{AuthVersion, status})
	return err
}

// Request is a client's request.
type Request struct {
	Cmd  byte
	Atyp byte
	// Host is the IP address in its text form (IPv6 without brackets)
	// or the domain name as the client sent it, unresolved.
	Host string
	Port uint16
}

// Dest is the request's destination as host:port, IPv6 in brackets.
func (r Request) Dest() string { return net.JoinHostPort(r.Host, strconv.Itoa(int(r.Port))) }

// CmdName names a command for logs: CONNECT, BIND, UDP-ASSOCIATE or its
// number.
func CmdName(cmd byte) string {
	switch cmd {
	case CmdConnect:
		return "CONNECT"
	case CmdBind:
		return "BIND"
	case CmdUDPAssociate:
		return "UDP-ASSOCIATE"
	}
	return fmt.Sprintf("CMD-0x%02x", cmd)
}

// ReadRequest reads a client's request. A request with an unknown
// address type returns its command with an error wrapping ErrAddressType;
// the caller answers AddressNotSupported. Any command is returned: the
// caller decides which it serves.
func ReadRequest(r io.Reader) (Request, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Request{}, unexpected(err)
	}
	req := Request{Cmd: hdr[1], Atyp: hdr[3]}
	if hdr[0] != Version {
		return req, fmt.Errorf("%w: request version byte 0x%02x", ErrMalformed, hdr[0])
	}
	switch req.Atyp {
	case AtypIPv4:
		var a [4]byte
		if _, err := io.ReadFull(r, a[:]); err != nil {
			return req, unexpected(err)
		}
		req.Host = netip.AddrFrom4(a).String()
	case AtypIPv6:
		var a [16]byte
		if _, err := io.ReadFull(r, a[:]); err != nil {
			return req, unexpected(err)
		}
		req.Host = netip.AddrFrom16(a).String()
	case AtypDomain:
		var n [1]byte
		if _, err := io.ReadFull(r, n[:]); err != nil {
			return req, unexpected(err)
		}
		if n[0] == 0 {
			return req, fmt.Errorf("%w: empty domain name", ErrMalformed)
		}
		name := make([]byte, n[0])
		if _, err := io.ReadFull(r, name); err != nil {
			return req, unexpected(err)
		}
		req.Host = string(name)
	default:
		return req, fmt.Errorf("%w: ATYP 0x%02x", ErrAddressType, req.Atyp)
	}
	var port [2]byte
	if _, err := io.ReadFull(r, port[:]); err != nil {
		return req, unexpected(err)
	}
	req.Port = binary.BigEndian.Uint16(port[:])
	return req, nil
}

// WriteReply sends a reply with BND.ADDR 0.0.0.0:0.
func WriteReply(w io.Writer, rep Reply) error {
	_, err := w.Write([]byte{Version, byte(rep), 0, AtypIPv4, 0, 0, 0, 0, 0, 0})
	return err
}

// unexpected turns the end of the stream inside a message into
// io.ErrUnexpectedEOF: the client hung up half way.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
