package roletest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// SOCKS5Request is a SOCKS5 request for cmd (1 CONNECT) to host:port: an
// IPv4 or IPv6 literal as an address, anything else as a domain name.
func SOCKS5Request(cmd byte, hostport string) []byte {
	host, p, _ := net.SplitHostPort(hostport)
	port, _ := strconv.Atoi(p)
	b := []byte{5, cmd, 0}
	if a, err := netip.ParseAddr(host); err == nil && a.Is4() {
		b = append(append(b, 1), a.AsSlice()...)
	} else if err == nil {
		b = append(append(b, 4), a.AsSlice()...)
	} else {
		b = append(append(b, 3, byte(len(host))), host...)
	}
	return binary.BigEndian.AppendUint16(b, uint16(port))
}

// SOCKS5Error is a handshake the server ended: Stage says where ("method",
// "auth", "reply"), Code what it answered (0xFF no acceptable method, an
// RFC 1929 status, a reply code).
type SOCKS5Error struct {
	Stage string
	Code  byte
}

func (e *SOCKS5Error) Error() string { return fmt.Sprintf("socks5 %s: 0x%02x", e.Stage, e.Code) }

// SOCKS5Dial connects to the SOCKS5 server at addr, authenticates with
// user and password and sends req (see SOCKS5Request). It returns the
// connection once the server replied success; a refusal is a
// *SOCKS5Error.
func SOCKS5Dial(addr, user, password string, req []byte) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, Wait)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(Wait))
	fail := func(err error) (net.Conn, error) {
		c.Close()
		return nil, err
	}
	var b [10]byte
	if _, err := c.Write([]byte{5, 1, 2}); err != nil {
		return fail(err)
	}
	if _, err := io.ReadFull(c, b[:2]); err != nil {
		return fail(fmt.Errorf("socks5 method: %w", err))
	}
	if b[1] != 2 {
		return fail(&SOCKS5Error{"method", b[1]})
	}
	var a bytes.Buffer
	a.Write([]byte{1, byte(len(user))})
	a.WriteString(user)
	a.WriteByte(byte(len(password)))
	a.WriteString(password)
	if _, err := c.Write(a.Bytes()); err != nil {
		return fail(err)
	}
	if _, err := io.ReadFull(c, b[:2]); err != nil {
		return fail(fmt.Errorf("socks5 auth: %w", err))
	}
	if b[1] != 0 {
		return fail(&SOCKS5Error{"auth", b[1]})
	}
	if _, err := c.Write(req); err != nil {
		return fail(err)
	}
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return fail(fmt.Errorf("socks5 reply: %w", err))
	}
	if b[1] != 0 {
		return fail(&SOCKS5Error{"reply", b[1]})
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// SOCKS5Connect opens a SOCKS5 tunnel to target through the server at
// addr as agentID (password noauth) and checks that it echoes; the tunnel
// stays open until the test ends.
func SOCKS5Connect(t testing.TB, addr, agentID, target string) net.Conn {
	t.Helper()
	c, err := SOCKS5Dial(addr, agentID, "noauth", SOCKS5Request(1, target))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(Wait))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	var b [4]byte
	if _, err := io.ReadFull(c, b[:]); err != nil || string(b[:]) != "ping" {
		t.Fatalf("SOCKS5 tunnel echo: %q, %v", b, err)
	}
	c.SetDeadline(time.Time{})
	return c
}
