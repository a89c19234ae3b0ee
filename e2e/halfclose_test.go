package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestHalfClose sends the CONNECT request and the tunnel's first bytes in
// one write and half-closes at once, before the response: every byte must
// come back from the echo origin, then EOF. Small payloads and none at all
// matter most: the proxy has read all of them, and the FIN, before the
// tunnel is up.
func TestHalfClose(t *testing.T) {
	t.Parallel()
	e := startEcho(t)
	p := startProxy(t)
	startAgent(t, p, "4711")
	auth := basicAuth("4711", "noauth")

	for _, tc := range []struct {
		name string
		size int
	}{
		{"64 KiB", 64 << 10},
		{"1 MiB", 1 << 20},
		{"100 bytes", 100},
		{"no bytes", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			payload := make([]byte, tc.size)
			io.ReadFull(pattern(uint64(tc.size)), payload)
			c, err := net.DialTimeout("tcp", p.httpAddr, clientTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(clientTimeout))
			// One write: request and payload. Then the FIN.
			if _, err := c.Write(append([]byte(connectHeader(e.addr, auth)), payload...)); err != nil {
				t.Fatal(err)
			}
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 200 {
				body, _ := io.ReadAll(resp.Body)
				t.Fatalf("CONNECT, %d bytes, FIN: %s %q", tc.size, resp.Status, body)
			}
			got, err := io.ReadAll(br) // to EOF
			if err != nil {
				t.Fatalf("after %d of %d bytes: %v", len(got), tc.size, err)
			}
			if !bytes.Equal(got, payload) {
				t.Errorf("echo: %d bytes sha256 %x, want %d bytes sha256 %x", len(got), sha256.Sum256(got), len(payload), sha256.Sum256(payload))
			}
		})
	}

	// Sent before the response arrives but after the request: a client
	// that does not wait for the 200.
	t.Run("payload in a second write", func(t *testing.T) {
		t.Parallel()
		c, err := net.DialTimeout("tcp", p.httpAddr, clientTimeout)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(clientTimeout))
		io.WriteString(c, connectHeader(e.addr, auth))
		io.WriteString(c, "early bytes")
		c.(*net.TCPConn).CloseWrite()
		all, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		if want := "HTTP/1.1 200 Connection established\r\n\r\nearly bytes"; string(all) != want {
			t.Errorf("got %q, want %q", all, want)
		}
	})

	// The origin ends its side first; the client keeps sending, and the
	// origin receives it all.
	t.Run("origin half-closes first", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		received := make(chan []byte, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				received <- nil
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(clientTimeout))
			io.WriteString(c, "bye\n")
			c.(*net.TCPConn).CloseWrite()
			b, _ := io.ReadAll(c)
			received <- b
		}()
		tn := mustConnect(t, p.httpAddr, ln.Addr().String(), auth)
		defer tn.Close()
		if got, err := io.ReadAll(tn); err != nil || string(got) != "bye\n" {
			t.Fatalf("read from origin: %q %v, want \"bye\\n\" then EOF", got, err)
		}
		payload := make([]byte, 256<<10)
		io.ReadFull(pattern(7), payload)
		if _, err := tn.Write(payload); err != nil {
			t.Fatalf("write after the origin's FIN: %v", err)
		}
		tn.Conn.(*net.TCPConn).CloseWrite()
		select {
		case got := <-received:
			if !bytes.Equal(got, payload) {
				t.Errorf("origin received %d bytes, want the %d sent after its FIN", len(got), len(payload))
			}
		case <-time.After(clientTimeout):
			t.Fatal("origin did not see the client's FIN")
		}
	})
}
