//go:build !unix

package relay

import "net"

// socketReader does nothing off Unix: a relay then keeps its buffer while
// a connection is idle.
type socketReader struct{}

func (r *socketReader) init(net.Conn) {}
func (r *socketReader) ok() bool      { return false }
func (r *socketReader) read() (*[]byte, int, error) {
	panic("relay: socketReader.read off Unix")
}
