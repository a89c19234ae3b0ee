package transport

import (
	"io"
	"sync"
	"testing"
	"time"
)

// TestTCPBulkUnderLoad moves 8 x 32 MiB over one connection at once, with
// window updates and pings delayed by a millisecond, the reader waiting
// with Peek as the relay does: every byte arrives and no stream stalls.
func TestTCPBulkUnderLoad(t *testing.T) {
	client, server := tcpPairDelay(t, TCPConfig{KeepAlive: 2 * time.Second, IdleTimeout: 6 * time.Second, MaxIncomingStreams: 100},
		TCPConfig{IdleTimeout: 15 * time.Second}, time.Millisecond)
	const size = 32 << 20
	var wg sync.WaitGroup
	for range 8 {
		a := open(t, server)
		a.Write([]byte("CONNECT"))
		b := accept(t, client)
		var p7 [7]byte
		if _, err := io.ReadFull(b, p7[:]); err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			buf := make([]byte, 128<<10)
			for n := 0; n < size; n += len(buf) {
				if _, err := b.Write(buf); err != nil {
					t.Error(err)
					return
				}
			}
			b.Close()
		})
		wg.Go(func() {
			var got int
			buf := make([]byte, 32<<10)
			var one [1]byte
			a.SetReadDeadline(time.Now().Add(30 * time.Second))
			for {
				if _, err := a.Peek(one[:]); err != nil && err != io.EOF {
					t.Errorf("after %d bytes: %v", got, err)
					return
				}
				n, err := a.Read(buf)
				got += n
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Errorf("after %d bytes: %v", got, err)
					return
				}
			}
			if got != size {
				t.Errorf("read %d bytes, want %d", got, size)
			}
		})
	}
	wg.Wait()
}
