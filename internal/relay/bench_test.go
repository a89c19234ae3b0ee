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
