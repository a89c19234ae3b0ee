package lb

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/reverse-http/reverse-http/internal/front"
	"github.com/reverse-http/reverse-http/internal/route"
)

type fixedStore struct{ addr string }

func (s fixedStore) Lookup(context.Context, string) (route.Route, error) {
	return route.Route{Addr: s.addr}, nil
}

func (s fixedStore) Members(_ context.Context, addrs []string) map[string]bool {
	live := map[string]bool{}
	for _, a := range addrs {
		live[a] = a == s.addr
	}
	return live
}

func (fixedStore) Ping(context.Context) error { return nil }

// fakeProxy accepts one connection at a time, reads a CONNECT and hands
// the connection and the request to serve.
func fakeProxy(t *testing.T, serve func(net.Conn, *http.Request)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				serve(c, req)
			}()
		}
	}()
	return ln.Addr().String()
}

func forwarder(addr string, key []byte) *Forwarder {
	return &Forwarder{Store: fixedStore{addr}, DialTimeout: 5 * time.Second, ClusterKey: key,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// TestForwarderTunnel: the owning proxy's 200 and the tunnel's bytes
// after it, far past the answer's size limit, all arrive; the CONNECT
// carries a ForwardedHeader signed for the agent and destination.
func TestForwarderTunnel(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	payload := strings.Repeat("x", 3*maxAnswerBytes)
	headers := make(chan http.Header, 1)
	addr := fakeProxy(t, func(c net.Conn, req *http.Request) {
		headers <- req.Header
		io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"+payload)
	})
	conn, err := forwarder(addr, key).Dial(context.Background(), "4711", "db:5432")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != payload {
		t.Fatalf("tunnel bytes: %d of %d, %v", len(got), len(payload), err)
	}
	h := <-headers
	v := h.Get(front.ForwardedHeader)
	if !strings.HasPrefix(v, "rhf1 ") {
		t.Errorf("Reverse-Http-Forwarded %q, want a signed one", v)
	}
	if want := front.SignForwarded(key, "4711", "db:5432", time.Now()); strings.Fields(v)[0] != strings.Fields(want)[0] {
		t.Errorf("Reverse-Http-Forwarded %q, want the form of %q", v, want)
	}
}

// TestForwarderAnswerBounded: a proxy whose answer never ends (headers
// without end) gets an error once maxAnswerBytes are read, not this
// node's memory.
func TestForwarderAnswerBounded(t *testing.T) {
	written := make(chan int, 1)
	addr := fakeProxy(t, func(c net.Conn, _ *http.Request) {
		io.WriteString(c, "HTTP/1.1 403 Forbidden\r\n")
		line := []byte("X-Pad: " + strings.Repeat("a", 1000) + "\r\n")
		// Until the forwarder hangs up (bounded: 200 MB).
		n := 0
		for range 200 << 20 / len(line) {
			if _, err := c.Write(line); err != nil {
				break
			}
			n += len(line)
		}
		written <- n
	})
	start := time.Now()
	_, err := forwarder(addr, nil).Dial(context.Background(), "4711", "db:5432")
	if err == nil {
		t.Fatal("endless answer accepted")
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("endless answer refused after %s, want at once (not at the dial timeout)", took)
	}
	// What the forwarder did not read sits in socket buffers (a few MB
	// on loopback at most) until it hangs up.
	if n := <-written; n > 32<<20 {
		t.Errorf("the proxy could write %d MB of answer before the forwarder hung up, want about %d KB", n>>20, maxAnswerBytes>>10)
	}
	t.Logf("endless answer: %v", err)
}
