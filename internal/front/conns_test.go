package front_test

import (
	"bufio"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/reverse-http/reverse-http/internal/front"
	"github.com/reverse-http/reverse-http/internal/tlsconf"
)

// serveWatched serves h like the proxy does (front.NewServer, front.Serve)
// with a short idle timeout, and returns its address.
func serveWatched(t *testing.T, h *front.Handler, tlsConf *tls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := front.NewServer("", h, tlsConf, slog.New(slog.NewTextHandler(io.Discard, nil)))
	hs.IdleTimeout = 300 * time.Millisecond
	go front.Serve(hs, ln)
	t.Cleanup(func() { hs.Close() })
	return ln.Addr().String()
}

// readAll reads what the proxy sends until it closes the connection.
func readAll(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(wait))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading until close: %v (got %q)", err, b)
	}
	return string(b)
}

// TestRefusedBeforeHandlerLogged: the requests net/http refuses before any
// handler runs (a header over the limit, a header that never ends, a
// connection that never sends one, a malformed request) are logged and
// counted like every other refusal; an idle keep-alive connection closing
// is not a refusal.
func TestRefusedBeforeHandlerLogged(t *testing.T) {
	h, logs, _ := newFront(t, front.Config{MaxHeaderBytes: 1024, ReadHeaderTimeout: 300 * time.Millisecond}, "4711")
	addr := serveWatched(t, h, nil)
	dest := origin(t, nil, nil)

	t.Run("header too large", func(t *testing.T) {
		c := dial(t, addr)
		io.WriteString(c, "CONNECT "+dest+" HTTP/1.1\r\nHost: "+dest+"\r\nX-Big: "+strings.Repeat("a", 8<<10)+"\r\n\r\n")
		if got := readAll(t, c); !strings.HasPrefix(got, "HTTP/1.1 431 ") {
			t.Errorf("answer %q, want 431", got)
		}
		logs.waitLog(t, "request refused", "status=431", "request header larger than 1024 bytes (--http-proxy.max-header-bytes)", "client="+c.LocalAddr().String())
	})
	t.Run("header never ends", func(t *testing.T) {
		c := dial(t, addr)
		io.WriteString(c, "CONNECT "+dest+" HTTP/1.1\r\nHost: ")
		if got := readAll(t, c); got != "" {
			t.Errorf("answer %q, want the connection closed", got)
		}
		logs.waitLog(t, "status=408", "request header not complete within 300ms (--http-proxy.read-header-timeout)", "client="+c.LocalAddr().String())
	})
	t.Run("no request", func(t *testing.T) {
		c := dial(t, addr)
		readAll(t, c)
		logs.waitLog(t, "status=408", "no request within 300ms of connecting", "client="+c.LocalAddr().String())
	})
	t.Run("malformed", func(t *testing.T) {
		c := dial(t, addr)
		io.WriteString(c, "GET http://"+dest+"/ HTTP/1.1\r\n\r\n")
		if got := readAll(t, c); !strings.HasPrefix(got, "HTTP/1.1 400 ") {
			t.Errorf("answer %q, want 400", got)
		}
		logs.waitLog(t, "status=400", `reason="Bad Request: missing required Host header"`, "client="+c.LocalAddr().String())
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		c := dial(t, addr)
		io.WriteString(c, "GET http://"+dest+"/ HTTP/1.1\r\nHost: "+dest+"\r\nProxy-Authorization: "+basic("4711", "noauth")+"\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("request: %v %v", resp, err)
		}
		resp.Body.Close()
		readAll(t, c) // closed by the idle timeout
		time.Sleep(100 * time.Millisecond)
		if line := findLine(logs.String(), "client="+c.LocalAddr().String(), "request refused"); line != "" {
			t.Errorf("idle keep-alive connection logged as refused: %s", line)
		}
	})
	t.Run("handler refusal logged once", func(t *testing.T) {
		// The handler's own refusal, flushed after it returned, and
		// the body net/http then discards are not taken for a refusal
		// of net/http's; nor is the idle timeout after them.
		c := dial(t, addr)
		io.WriteString(c, "POST http://"+dest+"/ HTTP/1.1\r\nHost: "+dest+"\r\nProxy-Authorization: "+basic("offline", "noauth")+
			"\r\nContent-Length: 5\r\n\r\nhello")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 503 {
			t.Fatalf("request for an offline agent: %v %v", resp, err)
		}
		resp.Body.Close()
		readAll(t, c) // closed by the idle timeout
		time.Sleep(100 * time.Millisecond)
		if n := strings.Count(logs.String(), "client="+c.LocalAddr().String()); n != 1 {
			t.Errorf("%d log lines for one refused request, want 1:\n%s", n, logs.String())
		}
	})
	t.Run("tunnel unwatched", func(t *testing.T) {
		// A tunnel's own bytes are never read as an HTTP answer: the
		// origin's reply here looks like one.
		c := dial(t, addr)
		io.WriteString(c, "CONNECT "+dest+" HTTP/1.1\r\nHost: "+dest+"\r\nProxy-Authorization: "+basic("4711", "noauth")+"\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("CONNECT: %v %v", resp, err)
		}
		io.WriteString(c, "GET /nothere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		resp, err = http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("through the tunnel: %v %v", resp, err)
		}
		time.Sleep(100 * time.Millisecond)
		if line := findLine(logs.String(), "client="+c.LocalAddr().String(), "request refused"); line != "" {
			t.Errorf("tunnel logged as refused: %s", line)
		}
	})
}

// TestRefusedBeforeHandlerTLS: on the TLS listener the same refusals are
// seen (the watch sits above TLS), a CONNECT still works, and a client
// that speaks plain HTTP to it is told so.
func TestRefusedBeforeHandlerTLS(t *testing.T) {
	cert, _, err := tlsconf.SelfSigned([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	h, logs, _ := newFront(t, front.Config{MaxHeaderBytes: 1024}, "4711")
	addr := serveWatched(t, h, &tls.Config{Certificates: []tls.Certificate{cert}})
	dest := origin(t, nil, nil)
	dialTLS := func() *tls.Conn {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: wait}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	c := dialTLS()
	io.WriteString(c, "CONNECT "+dest+" HTTP/1.1\r\nHost: "+dest+"\r\nProxy-Authorization: "+basic("4711", "noauth")+"\r\n\r\n")
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT over TLS: %v %v", resp, err)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("through the TLS tunnel: %v %v", resp, err)
	}

	c = dialTLS()
	io.WriteString(c, "CONNECT "+dest+" HTTP/1.1\r\nX-Big: "+strings.Repeat("a", 8<<10)+"\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(wait))
	if got, _ := io.ReadAll(c); !strings.HasPrefix(string(got), "HTTP/1.1 431 ") {
		t.Errorf("oversized header over TLS: %q, want 431", got)
	}
	logs.waitLog(t, "status=431", "--http-proxy.max-header-bytes", "client="+c.LocalAddr().String())

	plain := dial(t, addr)
	io.WriteString(plain, "CONNECT "+dest+" HTTP/1.1\r\nHost: "+dest+"\r\n\r\n")
	if got := readAll(t, plain); !strings.Contains(got, "400 Bad Request") || !strings.Contains(got, "HTTP request to an HTTPS server") {
		t.Errorf("plain HTTP to the TLS port: %q", got)
	}
	logs.waitLog(t, "status=400", "plain HTTP sent to the TLS proxy port", "client="+plain.LocalAddr().String())
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func findLine(log string, parts ...string) string {
	for _, line := range strings.Split(log, "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			return line
		}
	}
	return ""
}
