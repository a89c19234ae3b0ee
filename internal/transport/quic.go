package transport

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/wire"
)

// FromQUIC is conn as a Conn. Control messages travel on unidirectional
// streams: the agent must allow some (wire.MaxControlStreams).
func FromQUIC(conn *quic.Conn) Conn { return &quicConn{conn} }

type quicConn struct{ c *quic.Conn }

func (q *quicConn) OpenStream(ctx context.Context) (Stream, error) {
	st, err := q.c.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	return st, nil
}

func (q *quicConn) AcceptStream(ctx context.Context) (Stream, error) {
	st, err := q.c.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return st, nil
}

// SendControl sends msg on a new unidirectional stream, within a second.
// An agent that allows no such stream (one from before control messages)
// makes it fail at once.
func (q *quicConn) SendControl(msg string) error {
	st, err := q.c.OpenUniStream()
	if err != nil {
		return err
	}
	st.SetWriteDeadline(time.Now().Add(time.Second))
	if err := wire.WriteMessage(st, msg); err != nil {
		st.CancelWrite(wire.StreamCodeAbort)
		return err
	}
	return st.Close()
}

func (q *quicConn) AcceptControl(ctx context.Context) (string, error) {
	for {
		st, err := q.c.AcceptUniStream(ctx)
		if err != nil {
			return "", err
		}
		st.SetReadDeadline(time.Now().Add(5 * time.Second))
		msg, err := wire.ReadMessage(io.LimitReader(st, 4+wire.MaxControlLen))
		st.CancelRead(0)
		if err == nil {
			return msg, nil
		}
	}
}

func (q *quicConn) CloseWithError(code quic.ApplicationErrorCode, reason string) error {
	return q.c.CloseWithError(code, reason)
}

func (q *quicConn) Context() context.Context { return q.c.Context() }
func (q *quicConn) LocalAddr() net.Addr      { return q.c.LocalAddr() }
func (q *quicConn) RemoteAddr() net.Addr     { return q.c.RemoteAddr() }
func (q *quicConn) TLS() tls.ConnectionState { return q.c.ConnectionState().TLS }
func (q *quicConn) RTT() time.Duration       { return q.c.ConnectionStats().SmoothedRTT }
func (q *quicConn) Received() uint64         { return q.c.ConnectionStats().PacketsReceived }
func (q *quicConn) Transport() string        { return QUIC }

// Wait returns once the connection is closed; quic-go's goroutines for it
// end then (the Transport's, shared by its connections, with the
// Transport).
func (q *quicConn) Wait() { <-q.c.Context().Done() }
