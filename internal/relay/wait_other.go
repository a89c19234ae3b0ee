//go:build !linux

package relay

import "net"

// socketWaiter does nothing off Linux: Copy then keeps its buffer while a
// connection is idle.
type socketWaiter struct{}

func (w *socketWaiter) init(net.Conn)  {}
func (w *socketWaiter) wait()          {}
func (w *socketWaiter) pending() error { return nil }
