package front_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/front"
)

// directDialer stands for an agent that dials every destination itself.
type directDialer struct{}

func (directDialer) Dial(ctx context.Context, _, hostport string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", hostport)
}

// startFront serves a Handler over a real listener, with an origin that
// answers the size of each request body it read (or the read error).
func startFront(t *testing.T, cfg front.Config) (proxyAddr, originAddr string) {
	t.Helper()
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "got %d bytes: %s\n", len(b), b)
	}))
	t.Cleanup(origin.Close)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.Auth, cfg.Dialer = auth.NoAuth(), directDialer{}
	srv := front.NewServer("", front.New(cfg, log), nil, log)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go front.Serve(srv, ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), origin.Listener.Addr().String()
}

func postHead(origin string, n int) string {
	return fmt.Sprintf("POST http://%s/up HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\nContent-Length: %d\r\n\r\n",
		origin, origin, basic("4711", "noauth"), n)
}

// TestBodyStalled: a client that announces a body and stops sending it is
// answered 408 and its connection closed once the body idle timeout ends;
// without it the tunnel to the origin would be held forever.
func TestBodyStalled(t *testing.T) {
	const idle = 300 * time.Millisecond
	addr, origin := startFront(t, front.Config{BodyIdleTimeout: idle})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	io.WriteString(c, postHead(origin, 10)+"ab")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: "POST"})
	if err != nil {
		t.Fatalf("stalled body: no answer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	took := time.Since(start)
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(body), "no data for 300ms") {
		t.Errorf("stalled body: %s %q, want 408 naming the timeout", resp.Status, body)
	}
	if took < idle || took > idle+3*time.Second {
		t.Errorf("stalled body answered after %s, want about %s", took, idle)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("connection after the 408: %v, want it closed", err)
	}
}

// TestBodyTrickle: a body that keeps coming, one byte at a time with gaps
// shorter than the timeout, is served whole, and the connection stays
// usable after a pause longer than the body timeout (the deadline is
// cleared with the body).
func TestBodyTrickle(t *testing.T) {
	const idle = time.Second
	addr, origin := startFront(t, front.Config{BodyIdleTimeout: idle})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	const payload = "trickling"
	io.WriteString(c, postHead(origin, len(payload)))
	for i := range len(payload) {
		time.Sleep(idle / 5)
		c.Write([]byte{payload[i]})
	}
	br := bufio.NewReader(c)
	for round := range 2 {
		resp, err := http.ReadResponse(br, &http.Request{Method: "POST"})
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if want := fmt.Sprintf("got %d bytes: %s\n", len(payload), payload); resp.StatusCode != 200 || string(body) != want {
			t.Fatalf("round %d: %s %q, want 200 %q", round, resp.Status, body, want)
		}
		if round == 0 {
			time.Sleep(idle * 3 / 2)
			io.WriteString(c, postHead(origin, len(payload))+payload)
		}
	}
}
