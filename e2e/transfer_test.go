package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// TestLargeTransfer moves 200 MiB each way through one CONNECT tunnel and
// checks their sha256, then downloads the same through a direct connection
// and logs the speeds. It does not run in parallel, so that the figures
// mean something.
func TestLargeTransfer(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping 3 x 200 MiB")
	}
	const size = 200 << 20
	web := startHTTPOrigin(t, false)
	p := startProxy(t)
	startAgent(t, p, "4711")

	tn := mustConnect(t, p.httpAddr, web.addr, basicAuth("4711", "noauth"))
	defer tn.Close()
	tn.SetDeadline(time.Now().Add(3 * time.Minute))
	down, err := download(tn.Conn, tn.br, web.addr, size, 1)
	if err != nil {
		t.Fatalf("download through the tunnel: %v", err)
	}
	up, err := upload(tn.Conn, tn.br, web.addr, size, 2)
	if err != nil {
		t.Fatalf("upload through the tunnel: %v", err)
	}
	tn.Close()

	direct, err := net.Dial("tcp", web.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	direct.SetDeadline(time.Now().Add(3 * time.Minute))
	base, err := download(direct, bufio.NewReader(direct), web.addr, size, 1)
	if err != nil {
		t.Fatalf("direct download: %v", err)
	}
	mbps := func(d time.Duration) float64 { return float64(size) / (1 << 20) / d.Seconds() }
	t.Logf("200 MiB through one tunnel: download %s (%.0f MiB/s), upload %s (%.0f MiB/s); direct download %s (%.0f MiB/s); tunnel/direct download speed %.2f",
		down.Round(time.Millisecond), mbps(down), up.Round(time.Millisecond), mbps(up),
		base.Round(time.Millisecond), mbps(base), mbps(down)/mbps(base))

	// The proxy counted the bytes it relayed.
	p.waitLog(t, 10*time.Second, 1, "tunnel closed", "destination", web.addr)
	l := p.lines("tunnel closed", "destination", web.addr)[0]
	upBytes, _ := strconv.ParseInt(l["bytes_up"], 10, 64)
	downBytes, _ := strconv.ParseInt(l["bytes_down"], 10, 64)
	if upBytes < size || downBytes < size {
		t.Errorf("proxy logged bytes_up=%d bytes_down=%d, want at least %d each", upBytes, downBytes, size)
	}
}

// download GETs /bytes?n=size&seed=seed over conn (responses read from br)
// and checks the body's length and sha256 against the origin's trailer.
func download(conn net.Conn, br *bufio.Reader, host string, size int64, seed uint64) (time.Duration, error) {
	start := time.Now()
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://%s/bytes?n=%d&seed=%d", host, size, seed), nil)
	if err := req.Write(conn); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("GET /bytes: %s", resp.Status)
	}
	h := sha256.New()
	n, err := io.CopyBuffer(h, resp.Body, make([]byte, 256<<10))
	if err != nil {
		return 0, fmt.Errorf("after %d bytes: %w", n, err)
	}
	got, want := hex.EncodeToString(h.Sum(nil)), resp.Trailer.Get("X-Sha256")
	if n != size || got != want {
		return 0, fmt.Errorf("received %d bytes sha256 %s; the origin sent %d bytes sha256 %s", n, got, size, want)
	}
	return time.Since(start), nil
}

// upload POSTs size bytes of pattern(seed) to /sink over conn and checks
// the length and sha256 the origin received.
func upload(conn net.Conn, br *bufio.Reader, host string, size int64, seed uint64) (time.Duration, error) {
	start := time.Now()
	h := sha256.New()
	body := io.TeeReader(io.LimitReader(pattern(seed), size), h)
	req, _ := http.NewRequest("POST", "http://"+host+"/sink", body)
	req.ContentLength = size
	bw := bufio.NewWriterSize(conn, 256<<10)
	if err := req.Write(bw); err != nil {
		return 0, err
	}
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var got sinkResult
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		return 0, fmt.Errorf("POST /sink: %s: %w", resp.Status, err)
	}
	if want := hex.EncodeToString(h.Sum(nil)); got.Bytes != size || got.SHA256 != want {
		return 0, fmt.Errorf("origin received %d bytes sha256 %s; sent %d bytes sha256 %s", got.Bytes, got.SHA256, size, want)
	}
	return time.Since(start), nil
}
