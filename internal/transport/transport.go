// Package transport carries the agent<->proxy protocol (package wire) over
// either of two transports: QUIC, the reference's and the default, or TLS
// over TCP with streams multiplexed by yamux, for networks that block UDP.
// The proxy and the agent see both through Conn and Stream, so a tunnel,
// an authentication and a control message are the same bytes on either.
//
// # The TCP variant
//
// The agent opens a TCP connection and a TLS 1.3 session on it with ALPN
// [ALPNTCP] ("reverse-http-tcp"); certificates, client CA and the
// authentication are the QUIC variant's. On the TLS session runs yamux
// (github.com/libp2p/go-yamux/v5, the libp2p implementation of the yamux
// specification: a 12-byte frame header of version, type, flags, stream ID
// and length; windowed flow control per stream; ping; go-away with an error
// code), the agent as its client (odd stream IDs) and the proxy as its
// server. Each yamux stream is one QUIC bidirectional stream of the QUIC
// variant:
//
//   - the agent opens the first stream and authenticates on it exactly as
//     over QUIC;
//   - the proxy opens one stream per tunnel and writes the CONNECT request
//     on it, and the agent answers, exactly as over QUIC; a FIN (yamux's
//     FIN flag) is a TCP half-close, a reset (RST with an error code) is
//     QUIC's RESET_STREAM or STOP_SENDING with that code;
//   - a control message, which QUIC carries on a unidirectional stream,
//     is a stream the proxy opens, writes the message on (wire.WriteMessage
//     framing) and closes. A control message is at most wire.MaxControlLen
//     (4 KiB) long, so its stream's first byte, the high byte of its
//     length, is 0x00; a tunnel's is 'C' of CONNECT. The agent tells the
//     two apart by that byte.
//
// Closing a connection with an application error code and reason, which
// QUIC's CONNECTION_CLOSE frame carries, is a control message "close" whose
// second line is the code in decimal and third line the reason, sent by
// either side, followed by a yamux go-away with the same code and the end
// of the TCP connection. A side that reads "close" closes at once; one
// that does not read it in time still learns the code from the go-away.
package transport

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"time"

	"github.com/quic-go/quic-go"
)

// Names of the transports, as logs and /agents show them.
const (
	QUIC = "quic"
	TCP  = "tcp"
)

// ALPNTCP is the TLS application protocol of the TCP variant.
const ALPNTCP = "reverse-http-tcp"

// Stream is one bidirectional stream: an authentication exchange, a tunnel
// or (TCP) a control message. *quic.Stream is one.
type Stream interface {
	io.Reader
	io.Writer
	// Close ends the writing half cleanly (a FIN); reading goes on.
	Close() error
	// CancelRead and CancelWrite abort a half with an error code. A read
	// or write that fails for a peer's abort returns a *quic.StreamError,
	// on either transport.
	CancelRead(code quic.StreamErrorCode)
	CancelWrite(code quic.StreamErrorCode)
	SetDeadline(t time.Time) error
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
	// Peek blocks until a Read would not block: bytes are there, the
	// stream ended or failed. It may fill p with bytes the next Read
	// returns (QUIC), or with none (TCP).
	Peek(p []byte) (int, error)
}

// Conn is an agent connection over either transport.
type Conn interface {
	// OpenStream opens a stream, waiting for the peer's stream limit.
	OpenStream(ctx context.Context) (Stream, error)
	// AcceptStream returns the next stream the peer opened (not control
	// messages).
	AcceptStream(ctx context.Context) (Stream, error)
	// SendControl sends one control message to the peer, within a second.
	SendControl(msg string) error
	// AcceptControl returns the next control message the peer sent.
	// Messages longer than wire.MaxControlLen are skipped.
	AcceptControl(ctx context.Context) (string, error)
	// CloseWithError closes the connection and tells the peer code and
	// reason. It does not wait for the peer.
	CloseWithError(code quic.ApplicationErrorCode, reason string) error
	// Context ends when the connection is closed; its cause says why: a
	// *quic.ApplicationError for an application close by either side, on
	// either transport.
	Context() context.Context
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
	// TLS is the connection's TLS state.
	TLS() tls.ConnectionState
	// RTT is the smoothed round-trip time, zero if not measured yet.
	RTT() time.Duration
	// Received counts what arrived from the peer so far, packets (QUIC)
	// or reads (TCP): a peer that sends keep-alives makes it grow.
	Received() uint64
	// Transport is QUIC or TCP.
	Transport() string
	// Wait returns once the connection is closed and every goroutine it
	// started has ended: a role's Run waits for it before it returns.
	Wait()
}
