package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/wire"
)

// TestBadInput throws malformed and oversized input at both of the proxy's
// ports; it must refuse each with the right status and keep serving.
func TestBadInput(t *testing.T) {
	t.Parallel()
	web := startHTTPOrigin(t, false)
	// Debug level: net/http logs recovered handler panics there.
	p := startProxy(t, "--log.level=debug")
	startAgent(t, p, "4711")
	auth := "Proxy-Authorization: " + basicAuth("4711", "noauth") + "\r\n"
	get := func(target, headers string) string {
		return "GET " + target + " HTTP/1.1\r\nHost: " + web.addr + "\r\n" + headers + "\r\n"
	}
	hello := web.url("/hello")
	big := strings.Repeat("a", 100<<10)
	var many strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&many, "X-Many-%d: %d\r\n", i, i)
	}

	t.Run("group", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			method string
			raw    string
			want   int
		}{
			{"garbage", "GET", "\x00\x01\x02\xff\xfe garbage \x7f\r\n\r\n", 400},
			{"only CRLF", "GET", "\r\n\r\n\r\n", 400},
			{"bad method", "GET", "G@T " + hello + " HTTP/1.1\r\nHost: x\r\n\r\n", 400},
			{"bad version", "GET", "GET " + hello + " HTTP/9.9\r\nHost: x\r\n\r\n", 505},
			{"header without colon", "GET", get(hello, "NoColonHere\r\n"), 400},
			{"two Content-Lengths", "GET", get(hello, auth+"Content-Length: 1\r\nContent-Length: 2\r\n"), 400},
			{"origin-form", "GET", get("/hello", auth), 400},
			{"ftp scheme", "GET", get("ftp://"+web.addr+"/", auth), 400},
			{"CONNECT port 0", "CONNECT", connectHeader("127.0.0.1:0", basicAuth("4711", "noauth")), 400},
			{"CONNECT port 99999", "CONNECT", connectHeader("127.0.0.1:99999", basicAuth("4711", "noauth")), 400},
			{"CONNECT no host", "CONNECT", connectHeader(":80", basicAuth("4711", "noauth")), 400},
			{"CONNECT no port", "CONNECT", "CONNECT example.com HTTP/1.1\r\nHost: example.com\r\n\r\n", 400},
			{"header over 64 KiB", "GET", get(hello, auth+"X-Big: "+big+"\r\n"), 431},
			{"request line over 64 KiB", "GET", get(hello+"?"+big, auth), 431},
			{"header of 60 KiB", "GET", get(hello, auth+"X-Big: "+big[:60<<10]+"\r\n"), 200},
			{"1000 headers", "GET", get(hello, auth+many.String()), 200},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				resp, body, err := rawRequest(p.httpAddr, tc.method, []byte(tc.raw))
				if err != nil {
					t.Fatal(err)
				}
				if tc.want == 200 {
					if resp.StatusCode != 200 || string(body) != "hello\n" {
						t.Errorf("%s %q, want 200 \"hello\\n\"", resp.Status, body)
					}
					return
				}
				checkRefusal(t, resp, body, tc.want)
			})
		}

		t.Run("UDP garbage", func(t *testing.T) {
			t.Parallel()
			c, err := net.Dial("udp", p.agentAddr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for i, size := range []int{1, 5, 20, 100, 1199, 1200, 1350, 1500} {
				b := make([]byte, size)
				io.ReadFull(pattern(uint64(i)), b)
				if i%2 == 0 {
					b[0] |= 0xc0 // looks like a QUIC long header
				}
				c.Write(b)
			}
			// A real agent can still connect.
			a, answer, err := dialFakeAgent(t, p, "after-garbage")
			if err != nil || answer != wire.AuthOK {
				t.Fatalf("agent after garbage: %q %v", answer, err)
			}
			a.close()
		})

		t.Run("auth message over 1 MiB", func(t *testing.T) {
			t.Parallel()
			conn := dialQUIC(t, p)
			defer conn.CloseWithError(0, "")
			_, err := sendAuth(conn, []byte{0xff, 0xff, 0xff, 0xff, 'x'})
			checkAppError(t, conn, err, wire.CodeAuthFailed)
		})

		t.Run("empty agent ID", func(t *testing.T) {
			t.Parallel()
			conn := dialQUIC(t, p)
			defer conn.CloseWithError(0, "")
			var msg bytes.Buffer
			wire.WriteMessage(&msg, "")
			_, err := sendAuth(conn, msg.Bytes())
			// internal/wire: "CodeBadRequest: the reference's code for an
			// empty agent ID", and the proxy means to send it.
			checkAppError(t, conn, err, wire.CodeBadRequest)
		})

		t.Run("agent ID with a newline", func(t *testing.T) {
			t.Parallel()
			conn := dialQUIC(t, p)
			defer conn.CloseWithError(0, "")
			var msg bytes.Buffer
			wire.WriteMessage(&msg, "4711\nlevel=ERROR msg=forged")
			_, err := sendAuth(conn, msg.Bytes())
			checkAppError(t, conn, err, wire.CodeAuthFailed, wire.CodeBadRequest)
		})

		t.Run("wrong ALPN", func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
			defer cancel()
			conn, err := quic.DialAddr(ctx, p.agentAddr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h3"}}, nil)
			if err == nil {
				conn.CloseWithError(0, "")
				t.Fatal("handshake with ALPN h3 succeeded, want it refused")
			}
		})
	})

	// Still serving, the agent still connected, nothing panicked.
	mustGetHello(t, p, "4711", web)
	if n := p.count("agent connected", "agent", "4711"); n != 1 {
		t.Errorf("agent 4711 registered %d times, want 1", n)
	}
	if log := p.log.String(); strings.Contains(log, "panic") {
		t.Errorf("proxy log mentions a panic")
	}
	if n := p.count("agent authentication failed"); n < 3 {
		t.Errorf("proxy logged %d authentication failures, want 3", n)
	}
}

// checkAppError checks that the proxy closed conn with one of the codes.
// err is what the auth exchange returned: the stream may fail first, with
// a reset, so the connection's own end is what counts.
func checkAppError(t testing.TB, conn *quic.Conn, err error, codes ...quic.ApplicationErrorCode) {
	t.Helper()
	if err == nil {
		t.Fatal("the proxy accepted the credential")
	}
	select {
	case <-conn.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("auth exchange failed (%v) but the proxy kept the connection open", err)
	}
	cause := context.Cause(conn.Context())
	var ae *quic.ApplicationError
	if !errors.As(cause, &ae) || !ae.Remote {
		t.Fatalf("connection ended with %v, want the proxy to close it with an application error", cause)
	}
	for _, c := range codes {
		if ae.ErrorCode == c {
			return
		}
	}
	t.Errorf("proxy closed with %#x (%q), want one of %#x", uint64(ae.ErrorCode), ae.ErrorMessage, codes)
}
