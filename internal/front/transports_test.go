package front

import (
	"net"
	"net/http"
	"testing"
	"testing/synctest"
	"time"
)

// TestTransportsIdleAndCap: a pool unused for transportIdle is dropped at
// the next request (not while a request uses it), at most max pools are
// kept with the least recently used dropped first, and the connection a
// dial made for a pool is closed if no request took it.
func TestTransportsIdleAndCap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ts := newTransports(2, func(*transportEntry) *http.Transport { return &http.Transport{} })
		pipe := func() net.Conn {
			a, b := net.Pipe()
			t.Cleanup(func() { a.Close(); b.Close() })
			return a
		}
		ea := ts.add("a", pipe(), "x:80")
		ts.done(ea)
		eb := ts.add("b", pipe(), "x:80")
		// b stays in use across the idle time.
		time.Sleep(transportIdle + time.Second)
		if e := ts.get("c"); e != nil {
			t.Fatal("get of an unknown agent made an entry")
		}
		if ts.len() != 1 || ts.get("a") != nil {
			t.Fatalf("%d pools after a's idle time, want only b's", ts.len())
		}
		if e := ts.get("b"); e != eb {
			t.Fatal("b's pool, in use, was dropped")
		} else {
			ts.done(e)
		}
		ts.done(eb)

		// The cap: a third pool drops the least recently used one.
		ts.done(ts.add("c", pipe(), "x:80"))
		if e := ts.get("b"); e != nil {
			ts.done(e) // b is now the most recently used
		}
		ts.done(ts.add("d", pipe(), "x:80"))
		if n := ts.len(); n != 2 {
			t.Fatalf("%d pools with a cap of 2", n)
		}
		if e := ts.get("c"); e != nil {
			t.Fatal("c, the least recently used, was kept past the cap")
		}

		// A kept first connection goes to the matching dial only, and is
		// closed when the request that made it ends without using it.
		first := pipe()
		e := ts.add("e", first, "x:80")
		if c := e.take("y:80"); c != nil {
			t.Fatal("took the connection for another address")
		}
		e.dropFirst(first)
		if _, err := first.Write([]byte{1}); err == nil {
			t.Fatal("unused first connection still open")
		}
		ts.done(e)
	})
}
