package socks5

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// handshake is a client's greeting, username/password message and request,
// as a client writes them.
func handshake(user, pass string, cmd, atyp byte, addr []byte, port uint16) []byte {
	b := []byte{Version, 2, MethodNoAuth, MethodUserPass}
	b = append(b, AuthVersion, byte(len(user)))
	b = append(b, user...)
	b = append(b, byte(len(pass)))
	b = append(b, pass...)
	b = append(b, Version, cmd, 0, atyp)
	if atyp == AtypDomain {
		b = append(b, byte(len(addr)))
	}
	b = append(b, addr...)
	return append(b, byte(port>>8), byte(port))
}

func TestHandshake(t *testing.T) {
	v6 := []byte{0x20, 0x01, 0x0d, 0xb8, 15: 1}
	for _, tc := range []struct {
		name string
		in   []byte
		dest string
		cmd  byte
	}{
		{"ipv4", handshake("4711", "noauth", CmdConnect, AtypIPv4, []byte{127, 0, 0, 1}, 22), "127.0.0.1:22", CmdConnect},
		{"ipv6", handshake("4711", "noauth", CmdConnect, AtypIPv6, v6, 443), "[2001:db8::1]:443", CmdConnect},
		{"domain", handshake("4711", "noauth", CmdConnect, AtypDomain, []byte("service.internal"), 8080), "service.internal:8080", CmdConnect},
		{"bind", handshake("4711", "noauth", CmdBind, AtypIPv4, []byte{0, 0, 0, 0}, 0), "0.0.0.0:0", CmdBind},
		{"udp associate", handshake("4711", "noauth", CmdUDPAssociate, AtypIPv4, []byte{0, 0, 0, 0}, 0), "0.0.0.0:0", CmdUDPAssociate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := bytes.NewReader(append(tc.in, "pipelined"...))
			methods, err := ReadGreeting(r)
			if err != nil || !bytes.Equal(methods, []byte{MethodNoAuth, MethodUserPass}) {
				t.Fatalf("ReadGreeting = %v, %v", methods, err)
			}
			user, pass, err := ReadUserPass(r)
			if err != nil || user != "4711" || pass != "noauth" {
				t.Fatalf("ReadUserPass = %q, %q, %v", user, pass, err)
			}
			req, err := ReadRequest(r)
			if err != nil {
				t.Fatal(err)
			}
			if req.Dest() != tc.dest || req.Cmd != tc.cmd {
				t.Errorf("request %+v (%s), want %s cmd %d", req, req.Dest(), tc.dest, tc.cmd)
			}
			if rest, _ := io.ReadAll(r); string(rest) != "pipelined" {
				t.Errorf("read past the request: %q left", rest)
			}
		})
	}
}

func TestMalformed(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		read func(io.Reader) error
		is   error
		want string
	}{
		{"socks4", []byte{4, 1, 0, 80}, greeting, ErrVersion, "(SOCKS4)"},
		{"http", []byte("CONNECT x:1 HTTP/1.1\r\n"), greeting, ErrVersion, "HTTP request"},
		{"tls", []byte{0x16, 0x03, 0x01}, greeting, ErrVersion, "TLS handshake"},
		{"no methods", []byte{5, 0}, greeting, ErrMalformed, "no authentication method"},
		{"short greeting", []byte{5, 3, 0}, greeting, io.ErrUnexpectedEOF, ""},
		{"empty", nil, greeting, io.EOF, ""},
		{"auth version", []byte{5, 4, 'u', 1, 'p'}, userPass, ErrMalformed, "version 0x05"},
		{"short user", []byte{1, 4, 'u'}, userPass, io.ErrUnexpectedEOF, ""},
		{"short password", []byte{1, 1, 'u', 9, 'p'}, userPass, io.ErrUnexpectedEOF, ""},
		{"request version", []byte{4, 1, 0, 1, 1, 2, 3, 4, 0, 80}, request, ErrMalformed, "request version"},
		{"address type", []byte{5, 1, 0, 9, 1, 2, 3, 4, 0, 80}, request, ErrAddressType, "ATYP 0x09"},
		{"empty domain", []byte{5, 1, 0, 3, 0, 0, 80}, request, ErrMalformed, "empty domain"},
		{"short domain", []byte{5, 1, 0, 3, 9, 'a'}, request, io.ErrUnexpectedEOF, ""},
		{"no port", []byte{5, 1, 0, 1, 1, 2, 3, 4, 0}, request, io.ErrUnexpectedEOF, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.read(bytes.NewReader(tc.in))
			if !errors.Is(err, tc.is) || !strings.Contains(errString(err), tc.want) {
				t.Errorf("error %v, want %v with %q", err, tc.is, tc.want)
			}
		})
	}
}

func greeting(r io.Reader) error { _, err := ReadGreeting(r); return err }
func userPass(r io.Reader) error { _, _, err := ReadUserPass(r); return err }
func request(r io.Reader) error  { _, err := ReadRequest(r); return err }

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestWrite(t *testing.T) {
	var b bytes.Buffer
	WriteMethod(&b, MethodUserPass)
	WriteAuthStatus(&b, true)
	WriteAuthStatus(&b, false)
	WriteReply(&b, TTLExpired)
	want := []byte{5, 2, 1, 0, 1, 1, 5, 6, 0, 1, 0, 0, 0, 0, 0, 0}
	if !bytes.Equal(b.Bytes(), want) {
		t.Errorf("wrote % x, want % x", b.Bytes(), want)
	}
	if TTLExpired.String() != "TTL expired" || Reply(0x42).String() != "reply 0x42" {
		t.Errorf("names: %s, %s", TTLExpired, Reply(0x42))
	}
}
