package socks5

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
)

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// FuzzHandshake feeds a client's bytes through the server's reads in
// order, as the SOCKS5 front does. No input may panic, make a read take
// more bytes than its message can hold, or yield a destination that does
// not split back into the host and port read.
func FuzzHandshake(f *testing.F) {
	f.Add(handshake("4711", "noauth", CmdConnect, AtypIPv4, []byte{127, 0, 0, 1}, 22))
	f.Add(handshake("4711", "noauth", CmdConnect, AtypIPv6, []byte{15: 1}, 443))
	f.Add(handshake("4711", "eyJhbGciOiJFUzI1NiJ9.e30.sig", CmdConnect, AtypDomain, []byte("service.internal"), 8080))
	f.Add(handshake("", "", CmdBind, AtypDomain, []byte("[::1]:80"), 0))
	f.Add(handshake("a", "b", CmdConnect, 9, nil, 1))
	f.Add([]byte{5, 0})
	f.Add([]byte{4, 1, 0, 80, 1, 2, 3, 4, 0})
	f.Add([]byte("CONNECT example.com:443 HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := &countingReader{r: bytes.NewReader(in)}
		methods, err := ReadGreeting(r)
		if r.n > MaxGreeting {
			t.Fatalf("greeting read %d bytes, more than %d", r.n, MaxGreeting)
		}
		if err != nil {
			return
		}
		if len(methods) == 0 || len(methods) > 255 {
			t.Fatalf("%d methods", len(methods))
		}
		before := r.n
		user, pass, err := ReadUserPass(r)
		if r.n-before > MaxUserPass {
			t.Fatalf("username/password read %d bytes, more than %d", r.n-before, MaxUserPass)
		}
		if err != nil {
			return
		}
		if len(user) > 255 || len(pass) > 255 {
			t.Fatalf("user %d bytes, password %d bytes", len(user), len(pass))
		}
		before = r.n
		req, err := ReadRequest(r)
		if r.n-before > MaxRequest {
			t.Fatalf("request read %d bytes, more than %d", r.n-before, MaxRequest)
		}
		if errors.Is(err, ErrAddressType) && (req.Atyp == AtypIPv4 || req.Atyp == AtypIPv6 || req.Atyp == AtypDomain) {
			t.Fatalf("known address type %d refused: %v", req.Atyp, err)
		}
		if err != nil {
			return
		}
		host, port, err := net.SplitHostPort(req.Dest())
		if err != nil {
			// A domain name may hold anything, ':' and '[' included;
			// the front checks the destination before it uses it.
			if req.Atyp != AtypDomain {
				t.Fatalf("destination %q of an address: %v", req.Dest(), err)
			}
			return
		}
		if req.Atyp != AtypDomain {
			a, err := netip.ParseAddr(host)
			if err != nil || (req.Atyp == AtypIPv4) != a.Is4() {
				t.Fatalf("address %q of ATYP %d: %v", host, req.Atyp, err)
			}
		}
		if port == "" {
			t.Fatalf("no port in %q", req.Dest())
		}
	})
}
