package relay

import (
	"bufio"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/transport"
)

// AbortCode is the QUIC stream error code sent when a tunnel is torn down
// after an error.
const AbortCode quic.StreamErrorCode = 0x1

// Stream adapts a stream (QUIC, or yamux over TCP) that carries one tunnel to net.Conn and Conn.
// Bytes the tunnel's handshake read ahead into a bufio.Reader are returned
// first. Close aborts only the halves that did not end cleanly, so a stream
// whose FIN was written never loses buffered bytes to a reset.
type Stream struct {
	s      transport.Stream
	br     *bufio.Reader
	local  net.Addr
	remote net.Addr

	wroteFIN atomic.Bool
	readEOF  atomic.Bool
	released atomic.Bool
	onClose  func()
	peek     [1]byte
	// read and written, if not nil, get the bytes of each Read and Write.
	read, written *atomic.Int64
}

// Count adds the bytes read from and written to the stream from now on to
// read and written (counters shared by every tunnel of an agent). Call it
// before the Stream is used.
func (c *Stream) Count(read, written *atomic.Int64) { c.read, c.written = read, written }

// OnClose makes f run once, at the first Close or Abort: a proxy counts
// the tunnels open through an agent with it. Call it before the Stream is
// used.
func (c *Stream) OnClose(f func()) { c.onClose = f }

func (c *Stream) release() {
	if c.onClose != nil && !c.released.Swap(true) {
		c.onClose()
	}
}

// NewStream wraps s. br, if not nil, is a reader over s holding bytes read
// ahead; local and remote are the agent connection's addresses.
func NewStream(s transport.Stream, br *bufio.Reader, local, remote net.Addr) *Stream {
	if br != nil && br.Buffered() == 0 {
		br = nil
	}
	return &Stream{s: s, br: br, local: local, remote: remote}
}

func (c *Stream) Read(p []byte) (int, error) {
	if c.br != nil {
		if c.br.Buffered() > 0 {
			return c.br.Read(p)
		}
		c.br = nil
	}
	n, err := c.s.Read(p)
	if c.read != nil {
		c.read.Add(int64(n))
	}
	if err == io.EOF {
		c.readEOF.Store(true)
	}
	return n, err
}

// waitRead blocks until the stream has data, has ended or failed.
func (c *Stream) waitRead() {
	if c.br != nil && c.br.Buffered() > 0 {
		return
	}
	c.s.Peek(c.peek[:])
}

func (c *Stream) Write(p []byte) (int, error) {
	n, err := c.s.Write(p)
	if c.written != nil {
		c.written.Add(int64(n))
	}
	return n, err
}

// CloseWrite sends the stream's FIN.
func (c *Stream) CloseWrite() error {
	c.wroteFIN.Store(true)
	return c.s.Close()
}

// Close ends the stream cleanly: it writes the FIN if that was not done
// yet, and stops reading.
func (c *Stream) Close() error {
	defer c.release()
	if !c.wroteFIN.Swap(true) {
		c.s.Close()
	}
	if !c.readEOF.Load() {
		c.s.CancelRead(AbortCode)
	}
	return nil
}

// Abort resets the halves of the stream that did not end cleanly.
func (c *Stream) Abort() {
	defer c.release()
	if !c.wroteFIN.Load() {
		c.s.CancelWrite(AbortCode)
	}
	if !c.readEOF.Load() {
		c.s.CancelRead(AbortCode)
	}
}

func (c *Stream) LocalAddr() net.Addr                { return c.local }
func (c *Stream) RemoteAddr() net.Addr               { return c.remote }
func (c *Stream) SetDeadline(t time.Time) error      { return c.s.SetDeadline(t) }
func (c *Stream) SetReadDeadline(t time.Time) error  { return c.s.SetReadDeadline(t) }
func (c *Stream) SetWriteDeadline(t time.Time) error { return c.s.SetWriteDeadline(t) }
