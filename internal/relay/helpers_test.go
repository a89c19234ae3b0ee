package relay_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/relay"
)

// wait bounds every blocking step of a test; a relay that hangs fails the
// test instead of the whole run.
const wait = 5 * time.Second

// tcpPair returns the two ends of a loopback TCP connection. The listener
// stays open until the test ends. Both ends get a deadline.
func tcpPair(t testing.TB) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	type accepted struct {
		c   *net.TCPConn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.AcceptTCP()
		ch <- accepted{c, err}
	}()
	client, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	a := <-ch
	if a.err != nil {
		t.Fatal(a.err)
	}
	server = a.c
	t.Cleanup(func() { client.Close(); server.Close() })
	deadline := time.Now().Add(wait)
	client.SetDeadline(deadline)
	server.SetDeadline(deadline)
	return client, server
}

const testALPN = "relay-test"

// selfSigned makes a certificate for 127.0.0.1 and localhost, in memory.
func selfSigned(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "relay test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// quicPair returns the two ends of a QUIC connection on loopback.
func quicPair(t testing.TB) (client, server *quic.Conn) {
	t.Helper()
	cert := selfSigned(t)
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{testALPN},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	type accepted struct {
		c   *quic.Conn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept(ctx)
		ch <- accepted{c, err}
	}()
	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	client, err = quic.DialAddr(ctx, ln.Addr().String(), &tls.Config{
		RootCAs:    roots,
		ServerName: "127.0.0.1",
		NextProtos: []string{testALPN},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.CloseWithError(0, "") })
	a := <-ch
	if a.err != nil {
		t.Fatal(a.err)
	}
	server = a.c
	t.Cleanup(func() { server.CloseWithError(0, "") })
	return client, server
}

// streamPair opens a stream on client and accepts it on server. The stream
// is announced with one byte that the server side consumes, so neither end
// holds anything when streamPair returns. Both ends get a deadline.
func streamPair(t testing.TB, client, server *quic.Conn) (local, remote *quic.Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	local, err := client.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := local.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	remote, err = server.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var one [1]byte
	if _, err := io.ReadFull(remote, one[:]); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(wait)
	local.SetDeadline(deadline)
	remote.SetDeadline(deadline)
	return local, remote
}

// newStreams returns a relay.Stream over a fresh QUIC stream and the raw
// stream at the other end.
func newStreams(t testing.TB) (*relay.Stream, *quic.Stream) {
	t.Helper()
	cc, sc := quicPair(t)
	local, remote := streamPair(t, cc, sc)
	return relay.NewStream(local, nil, cc.LocalAddr(), cc.RemoteAddr()), remote
}

// pattern returns n bytes that are not all alike, so that a lost or
// reordered chunk shows.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// joinAsync runs Join and returns a channel with its result.
func joinAsync(a, b relay.Conn) <-chan relay.Result {
	done := make(chan relay.Result, 1)
	go func() { done <- relay.Join(a, b) }()
	return done
}

func waitJoin(t testing.TB, done <-chan relay.Result) relay.Result {
	t.Helper()
	select {
	case res := <-done:
		return res
	case <-time.After(wait):
		t.Fatalf("Join did not return within %v", wait)
		return relay.Result{}
	}
}

// wantStreamError checks that err is a QUIC stream reset with code.
func wantStreamError(t testing.TB, what string, err error, code quic.StreamErrorCode) {
	t.Helper()
	var se *quic.StreamError
	if !errors.As(err, &se) {
		t.Fatalf("%s: error %v (%T), want a *quic.StreamError", what, err, err)
	}
	if se.ErrorCode != code {
		t.Fatalf("%s: stream error code %#x, want %#x", what, se.ErrorCode, code)
	}
}

// wantReset checks that a TCP read or write failed with a reset.
func wantReset(t testing.TB, what string, err error) {
	t.Helper()
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("%s: error %v, want a connection reset", what, err)
	}
}

// writeUntilError writes to w until a write fails or the deadline on w
// expires, and returns the error.
func writeUntilError(w io.Writer) error {
	buf := make([]byte, 16<<10)
	for {
		if _, err := w.Write(buf); err != nil {
			return err
		}
	}
}
