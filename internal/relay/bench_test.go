package relay_test

import (
	"io"
	"testing"
	"time"

	"github.com/reverse-http/reverse-http/internal/relay"
)

// BenchmarkCopy copies 1 MiB in 32 KiB chunks from memory to a discarding
// writer: the cost of Copy itself.
func BenchmarkCopy(b *testing.B) {
	src := &chunkReader{chunk: pattern(32 << 10), chunks: 32}
	dst := &discard{}
	b.SetBytes(32 * 32 << 10)
	b.ReportAllocs()
	for b.Loop() {
		src.reset()
		if _, err := relay.Copy(dst, src); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkJoinTCP pushes 32 KiB per op through a Join between two loopback
// TCP connections.
func BenchmarkJoinTCP(b *testing.B) {
	peerA, a := tcpPair(b)
	peerB, bc := tcpPair(b)
	for _, c := range []interface{ SetDeadline(time.Time) error }{peerA, a, peerB, bc} {
		c.SetDeadline(time.Time{})
	}
	done := joinAsync(relay.NewTCP(a, nil), relay.NewTCP(bc, nil))
	received := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, peerB)
		received <- n
	}()

	chunk := pattern(32 << 10)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	var sent int64
	for b.Loop() {
		n, err := peerA.Write(chunk)
		if err != nil {
			b.Fatal(err)
		}
		sent += int64(n)
	}
	peerA.CloseWrite()
	if n := <-received; n != sent {
		b.Fatalf("received %d bytes, sent %d", n, sent)
	}
	b.StopTimer()
	peerB.CloseWrite()
	if res := <-done; res.Err != nil || res.AToB != sent {
		b.Fatalf("Result = %+v, sent %d", res, sent)
	}
}

// BenchmarkRoundTrip is the latency a relay adds: 16 bytes sent and echoed
// back over loopback TCP, directly and through a Join (TCP to TCP) or a
// Join between TCP and a QUIC stream.
func BenchmarkRoundTrip(b *testing.B) {
	pingPong := func(b *testing.B, rw io.ReadWriter) {
		b.Helper()
		msg, buf := pattern(16), make([]byte, 16)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := rw.Write(msg); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(rw, buf); err != nil {
				b.Fatal(err)
			}
		}
	}
	echo := func(rw io.ReadWriter) {
		buf := make([]byte, 64)
		for {
			n, err := rw.Read(buf)
			if err != nil {
				return
			}
			if _, err := rw.Write(buf[:n]); err != nil {
				return
			}
		}
	}
	noDeadline := func(cs ...interface{ SetDeadline(time.Time) error }) {
		for _, c := range cs {
			c.SetDeadline(time.Time{})
		}
	}
	b.Run("direct", func(b *testing.B) {
		client, server := tcpPair(b)
		noDeadline(client, server)
		go echo(server)
		pingPong(b, client)
	})
	b.Run("tcp-tcp", func(b *testing.B) {
		client, a := tcpPair(b)
		bc, server := tcpPair(b)
		noDeadline(client, a, bc, server)
		go echo(server)
		joinAsync(relay.NewTCP(a, nil), relay.NewTCP(bc, nil))
		pingPong(b, client)
	})
	b.Run("tcp-quic", func(b *testing.B) {
		client, a := tcpPair(b)
		local, remote := newStreams(b)
		noDeadline(client, a)
		go echo(remote)
		joinAsync(relay.NewTCP(a, nil), local)
		pingPong(b, client)
	})
}
