package relay_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/relay"
)

var _ net.Conn = (*relay.Stream)(nil)
var _ relay.Conn = (*relay.Stream)(nil)
var _ relay.Conn = (*relay.TCP)(nil)

// Bytes the handshake read ahead into a bufio.Reader come first, then the
// stream's own.
func TestStreamReadsBufferedFirst(t *testing.T) {
	cc, sc := quicPair(t)
	local, remote := streamPair(t, cc, sc)

	answer := "HTTP/1.1 200 Connection established\r\n\r\n"
	if _, err := remote.Write([]byte(answer + "early")); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(local)
	if _, err := br.Peek(len(answer + "early")); err != nil {
		t.Fatal(err)
	}
	br.Discard(len(answer))
	s := relay.NewStream(local, br, cc.LocalAddr(), cc.RemoteAddr())

	if _, err := remote.Write([]byte(" late")); err != nil {
		t.Fatal(err)
	}
	remote.Close()
	got, err := io.ReadAll(s)
	if err != nil || string(got) != "early late" {
		t.Fatalf("read %q, %v; want %q", got, err, "early late")
	}
}

// CloseWrite sends the FIN: the peer reads EOF, and the stream still reads.
func TestStreamCloseWrite(t *testing.T) {
	s, remote := newStreams(t)
	if _, err := s.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	if got, err := io.ReadAll(remote); err != nil || string(got) != "request" {
		t.Fatalf("peer read %q, %v; want the bytes then EOF", got, err)
	}
	if _, err := remote.Write([]byte("response")); err != nil {
		t.Fatalf("peer write after our FIN: %v", err)
	}
	remote.Close()
	if got, err := io.ReadAll(s); err != nil || string(got) != "response" {
		t.Fatalf("read after CloseWrite: %q, %v", got, err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// Ending a stream right after its FIN (Close, or Abort on an error in the
// other direction) must not reset the write half: the peer gets every byte
// and a clean EOF, even bytes still in flight.
func TestStreamEndAfterFINKeepsData(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(*relay.Stream)
	}{
		{"Close", func(s *relay.Stream) { s.Close() }},
		{"Abort", func(s *relay.Stream) { s.Abort() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, remote := newStreams(t)
			data := pattern(1 << 20)
			type result struct {
				b   []byte
				err error
			}
			got := make(chan result, 1)
			go func() {
				b, err := io.ReadAll(remote)
				got <- result{b, err}
			}()
			if _, err := s.Write(data); err != nil {
				t.Fatal(err)
			}
			if err := s.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			tc.end(s)

			r := <-got
			if r.err != nil {
				t.Fatalf("peer read %d of %d bytes, then %v", len(r.b), len(data), r.err)
			}
			if !bytes.Equal(r.b, data) {
				t.Fatalf("peer received %d bytes, not the %d written", len(r.b), len(data))
			}
		})
	}
}

// Close without CloseWrite ends the write half cleanly too, and stops
// reading: the peer's writes fail with AbortCode.
func TestStreamCloseSendsFINAndStopsReading(t *testing.T) {
	s, remote := newStreams(t)
	if _, err := s.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got, err := io.ReadAll(remote); err != nil || string(got) != "bye" {
		t.Fatalf("peer read %q, %v; want the bytes then EOF", got, err)
	}
	wantStreamError(t, "peer write after Close", writeUntilError(remote), relay.AbortCode)
}

// Abort resets both halves: the peer's read and write fail with AbortCode.
func TestStreamAbort(t *testing.T) {
	s, remote := newStreams(t)
	if _, err := s.Write([]byte("partial")); err != nil {
		t.Fatal(err)
	}
	s.Abort()
	_, err := io.ReadAll(remote)
	wantStreamError(t, "peer read after Abort", err, relay.AbortCode)
	var se *quic.StreamError
	if errors.As(err, &se) && !se.Remote {
		t.Errorf("peer sees a local stream error, want a remote one: %v", se)
	}
	wantStreamError(t, "peer write after Abort", writeUntilError(remote), relay.AbortCode)
	if _, err := s.Read(make([]byte, 1)); err == nil {
		t.Error("Read after Abort succeeded")
	}
}

func TestStreamNetConn(t *testing.T) {
	cc, sc := quicPair(t)
	local, _ := streamPair(t, cc, sc)
	s := relay.NewStream(local, nil, cc.LocalAddr(), cc.RemoteAddr())
	if s.LocalAddr() != cc.LocalAddr() || s.RemoteAddr() != cc.RemoteAddr() {
		t.Fatalf("addresses %v, %v; want the connection's %v, %v", s.LocalAddr(), s.RemoteAddr(), cc.LocalAddr(), cc.RemoteAddr())
	}
	if err := s.SetReadDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	_, err := s.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past the deadline: %v, want a timeout", err)
	}
}

// Join between TCP and a QUIC stream: both half-closes pass through, and the
// counts are right.
func TestJoinTCPStream(t *testing.T) {
	peerA, a := tcpPair(t)
	s, remote := newStreams(t)
	done := joinAsync(relay.NewTCP(a, nil), s)

	upload := pattern(256 << 10)
	writeErr := make(chan error, 1)
	go func() {
		_, err := peerA.Write(upload)
		if err == nil {
			err = peerA.CloseWrite()
		}
		writeErr <- err
	}()
	got, err := io.ReadAll(remote)
	if err != nil || !bytes.Equal(got, upload) {
		t.Fatalf("QUIC peer read %d bytes, %v; want %d then EOF", len(got), err, len(upload))
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}

	download := pattern(100 << 10)
	go func() {
		_, err := remote.Write(download)
		if err == nil {
			err = remote.Close()
		}
		writeErr <- err
	}()
	got, err = io.ReadAll(peerA)
	if err != nil || !bytes.Equal(got, download) {
		t.Fatalf("TCP peer read %d bytes, %v; want %d then EOF", len(got), err, len(download))
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	res := waitJoin(t, done)
	if res.Err != nil || res.AToB != int64(len(upload)) || res.BToA != int64(len(download)) {
		t.Fatalf("Result = %+v; want %d, %d, no error", res, len(upload), len(download))
	}
}

// A reset on either side of a TCP↔QUIC relay becomes a reset on the other.
func TestJoinTCPStreamReset(t *testing.T) {
	t.Run("QUIC peer resets", func(t *testing.T) {
		peerA, a := tcpPair(t)
		s, remote := newStreams(t)
		done := joinAsync(relay.NewTCP(a, nil), s)

		if _, err := peerA.Write([]byte("hi")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(remote, make([]byte, 2)); err != nil {
			t.Fatal(err)
		}
		const code quic.StreamErrorCode = 42
		remote.CancelWrite(code)

		res := waitJoin(t, done)
		wantStreamError(t, "Result.Err", res.Err, code)
		_, err := peerA.Read(make([]byte, 1))
		wantReset(t, "TCP peer read", err)
		_, err = io.ReadAll(remote)
		wantStreamError(t, "QUIC peer read", err, relay.AbortCode)
	})
	t.Run("TCP peer resets", func(t *testing.T) {
		peerA, a := tcpPair(t)
		s, remote := newStreams(t)
		done := joinAsync(relay.NewTCP(a, nil), s)

		if _, err := remote.Write([]byte("hi")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(peerA, make([]byte, 2)); err != nil {
			t.Fatal(err)
		}
		peerA.SetLinger(0)
		peerA.Close()

		res := waitJoin(t, done)
		wantReset(t, "Result.Err", res.Err)
		_, err := io.ReadAll(remote)
		wantStreamError(t, "QUIC peer read", err, relay.AbortCode)
		wantStreamError(t, "QUIC peer write", writeUntilError(remote), relay.AbortCode)
	})
}
