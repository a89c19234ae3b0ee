package relay_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"github.com/reverse-http/reverse-http/internal/relay"
)

// A 64 KiB upload that ends with a half-close reaches the other side
// entirely, followed by EOF, while the other direction keeps flowing; Join
// returns once both directions have ended and closes both connections.
func TestJoinHalfClose(t *testing.T) {
	peerA, a := tcpPair(t)
	peerB, b := tcpPair(t)
	done := joinAsync(relay.NewTCP(a, nil), relay.NewTCP(b, nil))

	upload := pattern(64 << 10)
	writeErr := make(chan error, 1)
	go func() {
		_, err := peerA.Write(upload)
		if err == nil {
			err = peerA.CloseWrite()
		}
		writeErr <- err
	}()
	got, err := io.ReadAll(peerB)
	if err != nil {
		t.Fatalf("peer B read: %v", err)
	}
	if !bytes.Equal(got, upload) {
		t.Fatalf("peer B received %d bytes, want the %d written", len(got), len(upload))
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("peer A write: %v", err)
	}

	// A→B has ended; B→A must still work, and Join must still be running.
	var sent int
	for i := range 3 {
		msg := fmt.Sprintf("answer %d after the half-close", i)
		if _, err := peerB.Write([]byte(msg)); err != nil {
			t.Fatalf("peer B write: %v", err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(peerA, buf); err != nil || string(buf) != msg {
			t.Fatalf("peer A read %q, %v; want %q", buf, err, msg)
		}
		sent += len(msg)
	}
	select {
	case res := <-done:
		t.Fatalf("Join returned while B→A was still open: %+v", res)
	default:
	}

	if err := peerB.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(peerA); err != nil || len(rest) != 0 {
		t.Fatalf("peer A after B's half-close: %q, %v; want EOF", rest, err)
	}
	res := waitJoin(t, done)
	if res.Err != nil {
		t.Errorf("Result.Err = %v, want nil", res.Err)
	}
	if res.AToB != int64(len(upload)) || res.BToA != int64(sent) {
		t.Errorf("Result = %d a→b, %d b→a; want %d, %d", res.AToB, res.BToA, len(upload), sent)
	}
	for name, c := range map[string]net.Conn{"a": a, "b": b} {
		if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Errorf("%s after Join: Write error %v, want net.ErrClosed", name, err)
		}
	}
}

// Same with the half-close first in the other direction, and with bytes
// that a bufio.Reader read ahead on one side.
func TestJoinHalfCloseOtherWay(t *testing.T) {
	peerA, a := tcpPair(t)
	peerB, b := tcpPair(t)

	if _, err := peerA.Write([]byte("HEAD\nearly")); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(a)
	if _, err := br.Peek(len("HEAD\nearly")); err != nil {
		t.Fatal(err)
	}
	br.Discard(len("HEAD\n"))
	done := joinAsync(relay.NewTCP(a, br), relay.NewTCP(b, nil))

	if _, err := peerB.Write([]byte("from b")); err != nil {
		t.Fatal(err)
	}
	if err := peerB.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(peerA); err != nil || string(got) != "from b" {
		t.Fatalf("peer A read %q, %v", got, err)
	}
	if _, err := peerA.Write([]byte(" late")); err != nil {
		t.Fatal(err)
	}
	if err := peerA.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(peerB); err != nil || string(got) != "early late" {
		t.Fatalf("peer B read %q, %v; want %q", got, err, "early late")
	}
	res := waitJoin(t, done)
	if res.Err != nil || res.AToB != int64(len("early late")) || res.BToA != int64(len("from b")) {
		t.Fatalf("Result = %+v", res)
	}
}

// A reset on one side ends the relay promptly, even though the other
// direction is idle, and the other side sees a reset too, not a clean end.
func TestJoinResetAbortsOtherDirection(t *testing.T) {
	t.Run("reader side resets", func(t *testing.T) {
		peerA, a := tcpPair(t)
		peerB, b := tcpPair(t)
		done := joinAsync(relay.NewTCP(a, nil), relay.NewTCP(b, nil))

		if _, err := peerA.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 5)
		if _, err := io.ReadFull(peerB, buf); err != nil {
			t.Fatal(err)
		}
		// B→A is idle: peer B neither writes nor closes.
		peerA.SetLinger(0)
		peerA.Close()

		res := waitJoin(t, done)
		if res.Err == nil {
			t.Fatal("Result.Err = nil after a reset")
		}
		wantReset(t, "Result.Err", res.Err)
		if res.AToB != 5 {
			t.Errorf("AToB = %d, want 5", res.AToB)
		}
		_, err := peerB.Read(buf)
		wantReset(t, "peer B read", err)
	})
	t.Run("writer side resets", func(t *testing.T) {
		peerA, a := tcpPair(t)
		peerB, b := tcpPair(t)
		done := joinAsync(relay.NewTCP(a, nil), relay.NewTCP(b, nil))

		// Peer A streams into the relay while peer B resets.
		writeErr := make(chan error, 1)
		go func() { writeErr <- writeUntilError(peerA) }()
		if _, err := io.ReadFull(peerB, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		peerB.SetLinger(0)
		peerB.Close()

		res := waitJoin(t, done)
		if res.Err == nil {
			t.Fatal("Result.Err = nil after a reset")
		}
		wantReset(t, "peer A write", <-writeErr)
	})
}

// Copy is io.Copy without ReaderFrom/WriterTo: same results on the usual
// readers and writers.
func TestCopy(t *testing.T) {
	data := pattern(100<<10 + 7)
	errRead := errors.New("read failed")
	errWrite := errors.New("write failed")
	for _, tc := range []struct {
		name    string
		src     io.Reader
		dst     io.Writer
		wantN   int64
		wantErr error
	}{
		{"empty", strings.NewReader(""), io.Discard, 0, nil},
		{"several buffers", bytes.NewReader(data), io.Discard, int64(len(data)), nil},
		{"one byte reads", iotest.OneByteReader(bytes.NewReader(data[:1000])), io.Discard, 1000, nil},
		{"data with EOF", iotest.DataErrReader(bytes.NewReader(data)), io.Discard, int64(len(data)), nil},
		{"read error", io.MultiReader(bytes.NewReader(data[:10]), iotest.ErrReader(errRead)), io.Discard, 10, errRead},
		{"read error with data", &dataErrReader{data: data[:10], err: errRead}, io.Discard, 10, errRead},
		{"zero-byte reads", &zeroThenData{zeros: 3, data: data[:10]}, io.Discard, 10, nil},
		{"write error", bytes.NewReader(data), &failWriter{after: 3, err: errWrite}, 3, errWrite},
		{"short write", bytes.NewReader(data), &shortWriter{}, 1, io.ErrShortWrite},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := relay.Copy(tc.dst, tc.src)
			if n != tc.wantN || !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("Copy = %d, %v; want %d, %v", n, err, tc.wantN, tc.wantErr)
			}
		})
	}

	var buf bytes.Buffer
	n, err := relay.Copy(&buf, iotest.HalfReader(bytes.NewReader(data)))
	if err != nil || n != int64(len(data)) || !bytes.Equal(buf.Bytes(), data) {
		t.Fatalf("Copy into a buffer: %d, %v; contents equal: %v", n, err, bytes.Equal(buf.Bytes(), data))
	}
}

type dataErrReader struct {
	data []byte
	err  error
}

func (r *dataErrReader) Read(p []byte) (int, error) {
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, r.err
}

type zeroThenData struct {
	zeros int
	data  []byte
}

func (r *zeroThenData) Read(p []byte) (int, error) {
	if r.zeros > 0 {
		r.zeros--
		return 0, nil
	}
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// failWriter accepts `after` bytes of its first write, then fails.
type failWriter struct {
	after int
	err   error
}

func (w *failWriter) Write(p []byte) (int, error) { return min(len(p), w.after), w.err }

// shortWriter takes one byte of every write without an error.
type shortWriter struct{}

func (shortWriter) Write(p []byte) (int, error) { return min(len(p), 1), nil }

// spyTCP is a *net.TCPConn whose ReadFrom and WriteTo are counted.
type spyTCP struct {
	*net.TCPConn
	readFrom, writeTo int
}

func (s *spyTCP) ReadFrom(r io.Reader) (int64, error) {
	s.readFrom++
	return s.TCPConn.ReadFrom(r)
}

func (s *spyTCP) WriteTo(w io.Writer) (int64, error) {
	s.writeTo++
	return s.TCPConn.WriteTo(w)
}

// Copy into a *net.TCPConn must not go through its ReadFrom, which brings
// its own buffer per call; out of one it must not use WriteTo.
func TestCopyBypassesReadFromAndWriteTo(t *testing.T) {
	client, server := tcpPair(t)
	dst := &spyTCP{TCPConn: client}
	data := pattern(200 << 10)
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(server, 2*int64(len(data))))
		got <- b
	}()

	n, err := relay.Copy(dst, bytes.NewReader(data))
	if err != nil || n != int64(len(data)) {
		t.Fatalf("Copy = %d, %v", n, err)
	}
	if dst.readFrom != 0 {
		t.Fatalf("Copy called ReadFrom %d times", dst.readFrom)
	}
	// The spy works: io.Copy takes the ReadFrom path (given a source
	// without WriteTo, which io.Copy would prefer).
	if _, err := io.Copy(dst, struct{ io.Reader }{bytes.NewReader(data)}); err != nil {
		t.Fatal(err)
	}
	if dst.readFrom != 1 {
		t.Fatalf("io.Copy called ReadFrom %d times; the spy is broken", dst.readFrom)
	}
	if b := <-got; !bytes.Equal(b[:len(data)], data) || !bytes.Equal(b[len(data):], data) {
		t.Fatal("peer received different bytes")
	}

	// And out of a *net.TCPConn, no WriteTo.
	src := &spyTCP{TCPConn: server}
	go func() {
		client.Write(data[:1000])
		client.CloseWrite()
	}()
	var buf bytes.Buffer
	if n, err := relay.Copy(&buf, src); err != nil || n != 1000 {
		t.Fatalf("Copy from TCP = %d, %v", n, err)
	}
	if src.writeTo != 0 {
		t.Fatalf("Copy called WriteTo %d times", src.writeTo)
	}
}

// chunkReader yields chunks copies of chunk, then EOF; reset rewinds it.
type chunkReader struct {
	chunk        []byte
	chunks, left int
}

func (r *chunkReader) reset() { r.left = r.chunks }

func (r *chunkReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	r.left--
	return copy(p, r.chunk), nil
}

// discard counts and drops what is written; unlike io.Discard it has no
// ReadFrom, so it cannot hide an allocation in Copy.
type discard struct{ n int64 }

func (d *discard) Write(p []byte) (int, error) {
	d.n += int64(len(p))
	return len(p), nil
}

func TestCopyDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	src := &chunkReader{chunk: pattern(relay.BufSize), chunks: 16}
	dst := &discard{}
	var err error
	allocs := testing.AllocsPerRun(100, func() {
		src.reset()
		_, err = relay.Copy(dst, src)
	})
	if err != nil {
		t.Fatal(err)
	}
	if dst.n != 101*16*relay.BufSize {
		t.Fatalf("copied %d bytes, want %d", dst.n, 101*16*relay.BufSize)
	}
	if allocs != 0 {
		t.Fatalf("Copy allocates %v times per call in steady state, want 0", allocs)
	}
}

// NewTCP hands out the bytes a bufio.Reader read ahead before reading the
// connection again.
func TestTCPReadsBufferedFirst(t *testing.T) {
	peer, c := tcpPair(t)
	if _, err := peer.Write([]byte("CONNECT x\nbuffered")); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	if _, err := br.Peek(len("CONNECT x\nbuffered")); err != nil {
		t.Fatal(err)
	}
	if line, _ := br.ReadString('\n'); line != "CONNECT x\n" {
		t.Fatalf("line %q", line)
	}
	tc := relay.NewTCP(c, br)
	if _, err := peer.Write([]byte(" then the socket")); err != nil {
		t.Fatal(err)
	}
	if err := peer.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(tc)
	if err != nil || string(got) != "buffered then the socket" {
		t.Fatalf("read %q, %v", got, err)
	}
}

// A reader with nothing buffered is not read from at all.
func TestNewTCPIgnoresEmptyReader(t *testing.T) {
	peer, c := tcpPair(t)
	empty := bufio.NewReader(strings.NewReader("never read"))
	tc := relay.NewTCP(c, empty)
	peer.Write([]byte("socket"))
	peer.CloseWrite()
	got, err := io.ReadAll(tc)
	if err != nil || string(got) != "socket" {
		t.Fatalf("read %q, %v; want the socket's bytes", got, err)
	}
	// And nil is fine.
	peer2, c2 := tcpPair(t)
	peer2.Write([]byte("x"))
	peer2.CloseWrite()
	if got, err := io.ReadAll(relay.NewTCP(c2, nil)); err != nil || string(got) != "x" {
		t.Fatalf("read %q, %v", got, err)
	}
}

func TestTCPCloseWrite(t *testing.T) {
	peer, c := tcpPair(t)
	tc := relay.NewTCP(c, nil)
	if _, err := tc.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := tc.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	if got, err := io.ReadAll(peer); err != nil || string(got) != "request" {
		t.Fatalf("peer read %q, %v; want the bytes then EOF", got, err)
	}
	// Reading goes on after the half-close.
	if _, err := peer.Write([]byte("response")); err != nil {
		t.Fatal(err)
	}
	peer.Close()
	if got, err := io.ReadAll(tc); err != nil || string(got) != "response" {
		t.Fatalf("read after CloseWrite: %q, %v", got, err)
	}
	// Once closed, a half-close is a no-op, not an error.
	tc.Close()
	if err := tc.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite after Close: %v", err)
	}
	// A connection without a half-close has nothing to do.
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if err := relay.NewTCP(p1, nil).CloseWrite(); err != nil {
		t.Fatalf("CloseWrite on net.Pipe: %v", err)
	}
}

func TestTCPAbortResets(t *testing.T) {
	peer, c := tcpPair(t)
	relay.NewTCP(c, nil).Abort()
	_, err := peer.Read(make([]byte, 1))
	wantReset(t, "peer read after Abort", err)
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Abort: %v, want net.ErrClosed", err)
	}
}

func TestAsConn(t *testing.T) {
	s, _ := newStreams(t)
	if got := relay.AsConn(s); got != relay.Conn(s) {
		t.Fatalf("AsConn(*Stream) = %T %p, want the stream itself", got, got)
	}
	_, c := tcpPair(t)
	tc := relay.NewTCP(c, nil)
	if got := relay.AsConn(tc); got != relay.Conn(tc) {
		t.Fatalf("AsConn(*TCP) = %T, want the *TCP itself", got)
	}
	wrapped, ok := relay.AsConn(c).(*relay.TCP)
	if !ok {
		t.Fatalf("AsConn(*net.TCPConn) = %T, want *relay.TCP", relay.AsConn(c))
	}
	if wrapped.Conn != net.Conn(c) {
		t.Fatal("AsConn wrapped a different connection")
	}
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if _, ok := relay.AsConn(p1).(*relay.TCP); !ok {
		t.Fatalf("AsConn(net.Pipe) = %T, want *relay.TCP", relay.AsConn(p1))
	}
}

// A tunnel that goes idle again and again, for longer than the relay waits
// before moving a direction to a fresh goroutine, keeps every byte in
// order, keeps exactly two goroutines, and reports once at the end.
func TestStartIdleTunnelKeepsBytesAndTwoGoroutines(t *testing.T) {
	peerA, a := tcpPair(t)
	peerB, b := tcpPair(t)
	var calls atomic.Int32
	done := make(chan relay.Result, 2)
	relay.Start(relay.NewTCP(a, nil), relay.NewTCP(b, nil), func(res relay.Result) {
		calls.Add(1)
		done <- res
	})
	var up, down int
	var prev []string
	for i := range 4 {
		for _, dir := range []struct {
			from, to *net.TCPConn
			n        *int
		}{{peerA, peerB, &up}, {peerB, peerA, &down}} {
			msg := fmt.Sprintf("round %d from %s", i, dir.from.LocalAddr())
			if _, err := dir.from.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, len(msg))
			if _, err := io.ReadFull(dir.to, buf); err != nil || string(buf) != msg {
				t.Fatalf("round %d: read %q, %v; want %q", i, buf, err, msg)
			}
			*dir.n += len(msg)
		}
		time.Sleep(150 * time.Millisecond) // longer than the hand-off interval
		ids := pumps()
		if len(ids) != 2 {
			t.Fatalf("round %d: the tunnel runs %d goroutines, want 2", i, len(ids))
		}
		if i > 0 && slices.Equal(ids, prev) {
			t.Errorf("round %d: the tunnel still runs on goroutines %v after being idle; want fresh ones", i, ids)
		}
		prev = ids
	}
	peerA.CloseWrite()
	peerB.CloseWrite()
	res := waitJoin(t, done)
	if res.Err != nil || res.AToB != int64(up) || res.BToA != int64(down) {
		t.Errorf("Result = %+v; want %d a→b, %d b→a, no error", res, up, down)
	}
	time.Sleep(50 * time.Millisecond)
	if n := calls.Load(); n != 1 {
		t.Errorf("done called %d times, want 1", n)
	}
}

// pumps returns the IDs of the goroutines that run a direction of a relay.
func pumps() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var ids []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "relay.(*pump).run(") {
			id, _, _ := strings.Cut(strings.TrimPrefix(g, "goroutine "), " ")
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// Over a TCP socket, *TCP reads into a pooled buffer taken once bytes are
// there, reports a clean end as io.EOF and a reset as the socket's error,
// with no buffer in either case.
func TestTCPReadPooled(t *testing.T) {
	peer, c := tcpPair(t)
	tc := relay.NewTCP(c, nil)
	if !relay.ReadsPooled(tc) {
		t.Fatal("a *net.TCPConn is not read through its socket")
	}
	go func() {
		time.Sleep(50 * time.Millisecond) // the read waits first
		peer.Write([]byte("hello"))
	}()
	bp, n, err := relay.ReadPooled(tc)
	if err != nil || bp == nil || string((*bp)[:n]) != "hello" {
		t.Fatalf("ReadPooled = %v, %d, %v; want the 5 bytes written", bp != nil, n, err)
	}
	if len(*bp) != relay.BufSize {
		t.Errorf("buffer of %d bytes, want %d", len(*bp), relay.BufSize)
	}

	peer.CloseWrite()
	bp, n, err = relay.ReadPooled(tc)
	if err != io.EOF || bp != nil || n != 0 {
		t.Fatalf("after the peer's FIN: ReadPooled = %v, %d, %v; want no buffer, 0, io.EOF", bp != nil, n, err)
	}

	peer2, c2 := tcpPair(t)
	tc2 := relay.NewTCP(c2, nil)
	peer2.SetLinger(0)
	peer2.Close() // a reset
	bp, n, err = relay.ReadPooled(tc2)
	var op *net.OpError
	if !errors.Is(err, syscall.ECONNRESET) || !errors.As(err, &op) || op.Op != "read" || bp != nil || n != 0 {
		t.Fatalf("after the peer's reset: ReadPooled = %v, %d, %v; want no buffer, 0, a read error with ECONNRESET", bp != nil, n, err)
	}

	tc2.Close()
	if _, _, err := relay.ReadPooled(tc2); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("after Close: ReadPooled error %v, want net.ErrClosed", err)
	}
}
