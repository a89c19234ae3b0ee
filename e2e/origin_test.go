package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// pattern is a deterministic stream of pseudo-random bytes: the same seed
// gives the same bytes, with no period a lost or repeated chunk could hide in.
func pattern(seed uint64) io.Reader {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	return rand.NewChaCha8(key)
}

// sinkResult is what /sink answers.
type sinkResult struct {
	SHA256 string `json:"sha256"`
	Bytes  int64  `json:"bytes"`
}

// echoHeadersResult is what /echo-headers answers.
type echoHeadersResult struct {
	Host   string      `json:"host"`
	Header http.Header `json:"header"`
}

// originHandler serves the origin's endpoints:
//
//	GET  /hello           "hello\n"
//	GET  /bytes?n=N&seed=S N bytes of pattern(S), chunked, with their sha256
//	                      in the trailer X-Sha256
//	POST /sink            reads the body; answers its sha256 and length (JSON)
//	GET  /slow?ms=N       "slow\n" after N ms (at most 10s)
//	ANY  /echo-headers    answers the request's Host and headers (JSON), and
//	                      sends a hop-by-hop response header X-Resp-Hop
func originHandler(o *httpOrigin) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /hello", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello\n")
	})
	mux.HandleFunc("GET /bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "bad n", http.StatusBadRequest)
			return
		}
		seed, _ := strconv.ParseUint(r.URL.Query().Get("seed"), 10, 64)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Trailer", "X-Sha256")
		h := sha256.New()
		buf := make([]byte, 256<<10)
		if _, err := io.CopyBuffer(io.MultiWriter(w, h), io.LimitReader(pattern(seed), n), buf); err != nil {
			return
		}
		w.Header().Set("X-Sha256", hex.EncodeToString(h.Sum(nil)))
	})
	mux.HandleFunc("POST /sink", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.CopyBuffer(h, r.Body, make([]byte, 256<<10))
		if err != nil {
			http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(sinkResult{SHA256: hex.EncodeToString(h.Sum(nil)), Bytes: n})
	})
	mux.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		if o != nil {
			o.slowStarted.Add(1)
		}
		select {
		case <-time.After(time.Duration(min(ms, 10_000)) * time.Millisecond):
			io.WriteString(w, "slow\n")
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/echo-headers", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Connection", "X-Resp-Hop")
		w.Header().Set("X-Resp-Hop", "origin-only")
		w.Header().Set("X-Resp-End", "yes")
		json.NewEncoder(w).Encode(echoHeadersResult{Host: r.Host, Header: r.Header})
	})
	return mux
}

// httpOrigin is an in-process HTTP origin on 127.0.0.1:0.
type httpOrigin struct {
	srv   *httptest.Server
	addr  string // 127.0.0.1:port
	port  int
	conns atomic.Int64 // connections accepted so far

	slowStarted atomic.Int64 // /slow requests received
}

func (o *httpOrigin) url(path string) string { return "http://" + o.addr + path }

// startHTTPOrigin starts an origin; tlsOn makes it serve HTTPS with a
// certificate for 127.0.0.1 (o.srv.Certificate()).
func startHTTPOrigin(t testing.TB, tlsOn bool) *httpOrigin {
	t.Helper()
	o := &httpOrigin{}
	o.srv = httptest.NewUnstartedServer(originHandler(o))
	o.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			o.conns.Add(1)
		}
	}
	if tlsOn {
		o.srv.StartTLS()
	} else {
		o.srv.Start()
	}
	t.Cleanup(o.srv.Close)
	o.addr = o.srv.Listener.Addr().String()
	o.port = o.srv.Listener.Addr().(*net.TCPAddr).Port
	return o
}

// echoServer is an in-process TCP echo origin: it echoes until the client
// half-closes, then closes its write side.
type echoServer struct {
	addr  string
	port  int
	ln    net.Listener
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startEcho(t testing.TB) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{ln: ln, addr: ln.Addr().String(), port: ln.Addr().(*net.TCPAddr).Port, conns: map[net.Conn]struct{}{}}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.serve()
	}()
	t.Cleanup(e.close)
	return e
}

func (e *echoServer) serve() {
	for {
		c, err := e.ln.Accept()
		if err != nil {
			return
		}
		e.mu.Lock()
		e.conns[c] = struct{}{}
		e.mu.Unlock()
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			echo(c)
			e.mu.Lock()
			delete(e.conns, c)
			e.mu.Unlock()
		}()
	}
}

// echo copies c back to itself until EOF, then half-closes and closes c.
func echo(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 16<<10)
	// Hide ReadFrom/WriteTo: a plain loop, whatever the platform can splice.
	if _, err := io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, buf); err != nil {
		return
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}

func (e *echoServer) close() {
	e.ln.Close()
	e.mu.Lock()
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Wait()
}

// helperEnv names the helper a re-executed test binary runs instead of the
// tests.
const helperEnv = "REVERSE_HTTP_E2E_HELPER"

// runHelper runs a helper in this process and returns the exit code.
//
// "echo" is an echo origin in a process of its own, so that its sockets do
// not count against the test process's file limit. It prints its address
// on the first line of stdout, then answers each "active" line on stdin
// with the number of open connections; it exits when stdin closes.
func runHelper(name string) int {
	if name != "echo" {
		fmt.Fprintln(os.Stderr, "unknown helper", name)
		return 2
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var active atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			active.Add(1)
			go func() {
				echo(c)
				active.Add(-1)
			}()
		}
	}()
	fmt.Println(ln.Addr().String())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == "active" {
			fmt.Println(active.Load())
		}
	}
	return 0
}

// echoHelper is the "echo" helper process.
type echoHelper struct {
	addr string
	port int
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Reader
	mu   sync.Mutex
}

func startEchoHelper(t testing.TB) *echoHelper {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	h := &echoHelper{cmd: exec.Command(exe)}
	h.cmd.Env = append(childEnv(), helperEnv+"=echo")
	h.cmd.Stderr = os.Stderr
	h.cmd.SysProcAttr = childSysProcAttr()
	if h.in, err = h.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	h.out = bufio.NewReader(stdout)
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		line, _ := h.out.ReadString('\n')
		h.addr = strings.TrimSpace(line)
	}()
	t.Cleanup(func() {
		h.in.Close()
		exited := make(chan error, 1)
		go func() { exited <- h.cmd.Wait() }()
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("echo helper: %v", err)
			}
		case <-time.After(stopTimeout):
			h.cmd.Process.Kill()
			t.Errorf("echo helper did not exit within %s of closing its stdin", stopTimeout)
		}
	})
	select {
	case <-done:
	case <-time.After(startTimeout):
		t.Fatal("echo helper did not print its address")
	}
	_, port, err := net.SplitHostPort(h.addr)
	if err != nil {
		t.Fatalf("echo helper printed %q: %v", h.addr, err)
	}
	h.port, _ = strconv.Atoi(port)
	return h
}

// active returns the helper's number of open connections.
func (h *echoHelper) active() (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, err := io.WriteString(h.in, "active\n"); err != nil {
		return 0, err
	}
	type answer struct {
		line string
		err  error
	}
	ch := make(chan answer, 1)
	go func() {
		line, err := h.out.ReadString('\n')
		ch <- answer{line, err}
	}()
	select {
	case a := <-ch:
		if a.err != nil {
			return 0, a.err
		}
		return strconv.Atoi(strings.TrimSpace(a.line))
	case <-time.After(startTimeout):
		return 0, fmt.Errorf("echo helper did not answer within %s", startTimeout)
	}
}
