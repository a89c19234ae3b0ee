package wire

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
)

func TestMessageRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  string
	}{
		{"empty", ""},
		{"one byte", "x"},
		{"agent id", "agent-4711"},
		{"max", strings.Repeat("j", MaxAuthLen)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := WriteMessage(&buf, tc.msg); err != nil {
				t.Fatalf("WriteMessage: %v", err)
			}
			if got, want := buf.Len(), 4+len(tc.msg); got != want {
				t.Fatalf("wrote %d bytes, want %d", got, want)
			}
			buf.WriteString("trailing")
			got, err := ReadMessage(&buf)
			if err != nil {
				t.Fatalf("ReadMessage: %v", err)
			}
			if got != tc.msg {
				t.Fatalf("ReadMessage = %d bytes, want %d", len(got), len(tc.msg))
			}
			if rest := buf.String(); rest != "trailing" {
				t.Fatalf("ReadMessage consumed bytes behind the message: left %q", rest)
			}
		})
	}
}

func TestWriteMessageBytes(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteMessage(&buf, "ab"); err != nil {
		t.Fatal(err)
	}
	if want := []byte{0, 0, 0, 2, 'a', 'b'}; !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("WriteMessage(\"ab\") = % x, want % x", buf.Bytes(), want)
	}

	buf.Reset()
	if err := WriteMessage(&buf, strings.Repeat("a", 0x010203)); err != nil {
		t.Fatal(err)
	}
	if want := []byte{0, 1, 2, 3}; !bytes.Equal(buf.Bytes()[:4], want) {
		t.Fatalf("length prefix = % x, want % x (big endian)", buf.Bytes()[:4], want)
	}
}

func TestWriteMessageTooLong(t *testing.T) {
	var buf bytes.Buffer
	err := WriteMessage(&buf, strings.Repeat("x", MaxAuthLen+1))
	if !errors.Is(err, ErrTooLong) {
		t.Fatalf("WriteMessage(1 MiB + 1) = %v, want ErrTooLong", err)
	}
	if buf.Len() != 0 {
		t.Fatalf("WriteMessage wrote %d bytes of a refused message", buf.Len())
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// endless yields the same byte forever.
type endless byte

func (e endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(e)
	}
	return len(p), nil
}

func TestReadMessageMalformed(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"no header", nil, io.EOF},
		{"short header", []byte{0, 0}, io.ErrUnexpectedEOF},
		{"truncated payload", []byte{0, 0, 0, 10, 'a', 'b', 'c'}, io.ErrUnexpectedEOF},
		{"header only", []byte{0, 0, 0, 1}, io.EOF},
		{"length 1 MiB + 1", []byte{0, 0x10, 0, 1}, ErrTooLong},
		{"length 4 GiB - 1", []byte{0xff, 0xff, 0xff, 0xff}, ErrTooLong},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReadMessage(bytes.NewReader(tc.in))
			if err == nil {
				t.Fatalf("ReadMessage(% x) = %d bytes, nil error", tc.in, len(got))
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("ReadMessage(% x) error = %v, want it to wrap %v", tc.in, err, tc.want)
			}
		})
	}
}

// A length above MaxAuthLen is refused from the header alone: nothing of the
// payload is read and no buffer of that size is allocated.
func TestReadMessageTooLongDoesNotAllocate(t *testing.T) {
	for _, n := range []uint32{MaxAuthLen + 1, 64 << 20, 1<<32 - 1} {
		hdr := []byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
		cr := &countingReader{r: io.MultiReader(bytes.NewReader(hdr), endless('x'))}
		const calls = 16
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range calls {
			cr.r = io.MultiReader(bytes.NewReader(hdr), endless('x'))
			cr.n = 0
			if _, err := ReadMessage(cr); !errors.Is(err, ErrTooLong) {
				t.Fatalf("length %d: error %v, want ErrTooLong", n, err)
			}
			if cr.n != 4 {
				t.Fatalf("length %d: read %d bytes, want only the 4-byte header", n, cr.n)
			}
		}
		runtime.ReadMemStats(&after)
		// A buffer for the claimed length would be at least 1 MiB per call.
		if per := (after.TotalAlloc - before.TotalAlloc) / calls; per > 16<<10 {
			t.Fatalf("length %d: refusing it allocates %d bytes per call", n, per)
		}
	}
}

func TestWriteConnectBytes(t *testing.T) {
	for _, tc := range []struct{ hostport, want string }{
		{"example.com:443", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"},
		{"[::1]:22", "CONNECT [::1]:22 HTTP/1.1\r\nHost: [::1]:22\r\n\r\n"},
	} {
		var buf bytes.Buffer
		if err := WriteConnect(&buf, tc.hostport); err != nil {
			t.Fatal(err)
		}
		if buf.String() != tc.want {
			t.Errorf("WriteConnect(%q) = %q, want %q", tc.hostport, buf.String(), tc.want)
		}
	}
}

func TestReadConnect(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"ours", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", "example.com:443"},
		{"reference proxy", "CONNECT example.com:8080 HTTP/1.1\r\nHost: example.com:8080\r\nProxy-Connection: keep-alive\r\n\r\n", "example.com:8080"},
		{"ipv6", "CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n", "[::1]:443"},
		{"ipv4", "CONNECT 10.0.0.1:5432 HTTP/1.1\r\nHost: 10.0.0.1:5432\r\n\r\n", "10.0.0.1:5432"},
		{"no host header", "CONNECT example.com:443 HTTP/1.1\r\n\r\n", "example.com:443"},
		{"http/1.0", "CONNECT example.com:443 HTTP/1.0\r\n\r\n", "example.com:443"},
		{"empty content-length", "CONNECT example.com:443 HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "example.com:443"},
		{"max port", "CONNECT h:65535 HTTP/1.1\r\n\r\n", "h:65535"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReadConnect(bufio.NewReader(strings.NewReader(tc.in)))
			if err != nil {
				t.Fatalf("ReadConnect: %v", err)
			}
			if got != tc.want {
				t.Fatalf("ReadConnect = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestReadConnectLeavesPipelinedBytes(t *testing.T) {
	in := "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Connection: keep-alive\r\n\r\n\x16\x03\x01TLS hello"
	br := bufio.NewReader(strings.NewReader(in))
	got, err := ReadConnect(br)
	if err != nil || got != "example.com:443" {
		t.Fatalf("ReadConnect = %q, %v", got, err)
	}
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatal(err)
	}
	if string(rest) != "\x16\x03\x01TLS hello" {
		t.Fatalf("bytes behind the request = %q", rest)
	}
}

func TestReadConnectRejects(t *testing.T) {
	for _, tc := range []struct{ name, in string }{
		{"get", "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"},
		{"get authority", "GET example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"},
		{"missing port", "CONNECT example.com HTTP/1.1\r\nHost: example.com\r\n\r\n"},
		{"empty port", "CONNECT example.com: HTTP/1.1\r\n\r\n"},
		{"port 0", "CONNECT example.com:0 HTTP/1.1\r\n\r\n"},
		{"port 65536", "CONNECT example.com:65536 HTTP/1.1\r\n\r\n"},
		{"negative port", "CONNECT example.com:-1 HTTP/1.1\r\n\r\n"},
		{"non-numeric port", "CONNECT example.com:https HTTP/1.1\r\n\r\n"},
		{"empty host", "CONNECT :443 HTTP/1.1\r\nHost: :443\r\n\r\n"},
		{"ipv6 unbracketed", "CONNECT ::1:443 HTTP/1.1\r\n\r\n"},
		{"userinfo", "CONNECT user@example.com:443 HTTP/1.1\r\n\r\n"},
		{"path", "CONNECT /example.com:443 HTTP/1.1\r\n\r\n"},
		{"absolute url", "CONNECT http://example.com:443/ HTTP/1.1\r\n\r\n"},
		{"garbage", "\x00\x01\x02 not http at all\r\n\r\n"},
		{"no version", "CONNECT example.com:443\r\n\r\n"},
		{"http/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"},
		{"body", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nContent-Length: 5\r\n\r\nhello"},
		{"chunked body", "CONNECT example.com:443 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{"header-less eof", "CONNECT example.com:443 HTTP/1.1\r\n"},
		{"truncated request line", "CONNECT exam"},
		{"empty", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReadConnect(bufio.NewReader(strings.NewReader(tc.in)))
			if err == nil {
				t.Fatalf("ReadConnect(%q) = %q, want an error", tc.in, got)
			}
		})
	}
}

func TestSplitHostPort(t *testing.T) {
	for _, tc := range []struct {
		in   string
		host string
		port int
		ok   bool
	}{
		{"example.com:443", "example.com", 443, true},
		{"example.com:1", "example.com", 1, true},
		{"example.com:65535", "example.com", 65535, true},
		{"10.1.2.3:80", "10.1.2.3", 80, true},
		{"[::1]:443", "::1", 443, true},
		{"[fe80::1%eth0]:22", "fe80::1%eth0", 22, true},
		{"localhost:8080", "localhost", 8080, true},

		{"example.com", "", 0, false},
		{"example.com:", "", 0, false},
		{"example.com:0", "", 0, false},
		{"example.com:65536", "", 0, false},
		{"example.com:99999999999999999999", "", 0, false},
		{"example.com:-1", "", 0, false},
		{"example.com:http", "", 0, false},
		{"example.com:4 43", "", 0, false},
		{":443", "", 0, false},
		{"[]:443", "", 0, false},
		{"::1:443", "", 0, false},
		{"[::1]", "", 0, false},
		{"[::1:443", "", 0, false},
		{"exa mple.com:443", "", 0, false},
		{"example.com\r\nX-Evil: 1:443", "", 0, false},
		{"a/b:443", "", 0, false},
		{"a\\b:443", "", 0, false},
		{"user@example.com:443", "", 0, false},
		{"\tx:443", "", 0, false},
		{"", "", 0, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			host, port, err := SplitHostPort(tc.in)
			if !tc.ok {
				if err == nil {
					t.Fatalf("SplitHostPort(%q) = %q, %d; want an error", tc.in, host, port)
				}
				if !strings.Contains(err.Error(), "destination") {
					t.Errorf("error %q does not name the destination", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("SplitHostPort(%q): %v", tc.in, err)
			}
			if host != tc.host || port != tc.port {
				t.Fatalf("SplitHostPort(%q) = %q, %d; want %q, %d", tc.in, host, port, tc.host, tc.port)
			}
		})
	}
}

func TestWriteOKBytes(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteOK(&buf); err != nil {
		t.Fatal(err)
	}
	if want := "HTTP/1.1 200 Connection established\r\n\r\n"; buf.String() != want {
		t.Fatalf("WriteOK = %q, want %q", buf.String(), want)
	}
}

func TestWriteErrorBytes(t *testing.T) {
	for _, tc := range []struct {
		status      int
		reason, out string
	}{
		{403, "destination example.com:25 not allowed",
			"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 38\r\n\r\ndestination example.com:25 not allowed"},
		{502, "dial tcp 10.0.0.1:80: connection refused",
			"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 40\r\n\r\ndial tcp 10.0.0.1:80: connection refused"},
		{504, "", "HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 0\r\n\r\n"},
		{400, "two\nlines", "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 9\r\n\r\ntwo lines"},
	} {
		var buf bytes.Buffer
		if err := WriteError(&buf, tc.status, tc.reason); err != nil {
			t.Fatal(err)
		}
		if buf.String() != tc.out {
			t.Errorf("WriteError(%d, %q) =\n%q\nwant\n%q", tc.status, tc.reason, buf.String(), tc.out)
		}
	}
}

func TestReadResponseOKLeavesTunnelBytes(t *testing.T) {
	for _, tc := range []struct{ name, in string }{
		{"ours", "HTTP/1.1 200 Connection established\r\n\r\nHELLO"},
		{"written by WriteOK", func() string {
			var b strings.Builder
			WriteOK(&b)
			return b.String() + "HELLO"
		}()},
		{"reference agent", func() string {
			var b strings.Builder
			(&http.Response{StatusCode: 200, Status: "200 Connection established", ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}}).Write(&b)
			return b.String() + "HELLO"
		}()},
		{"http/1.0", "HTTP/1.0 200 OK\r\n\r\nHELLO"},
		{"extra headers", "HTTP/1.1 200 OK\r\nProxy-Agent: x\r\nConnection: keep-alive\r\n\r\nHELLO"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br := bufio.NewReader(strings.NewReader(tc.in))
			status, reason, err := ReadResponse(br)
			if err != nil {
				t.Fatalf("ReadResponse(%q): %v", tc.in, err)
			}
			if status != 200 || reason != "" {
				t.Fatalf("ReadResponse = %d, %q; want 200, \"\"", status, reason)
			}
			next := make([]byte, 5)
			if _, err := io.ReadFull(br, next); err != nil || string(next) != "HELLO" {
				t.Fatalf("next bytes = %q, %v; want HELLO", next, err)
			}
		})
	}
}

// A 200 must not wait for a body, even when the tunnel stays open: the
// bytes behind it may never end.
func TestReadResponseOKDoesNotReadTunnel(t *testing.T) {
	br := bufio.NewReader(io.MultiReader(strings.NewReader("HTTP/1.1 200 Connection established\r\n\r\n"), endless('t')))
	status, _, err := ReadResponse(br)
	if err != nil || status != 200 {
		t.Fatalf("ReadResponse = %d, %v", status, err)
	}
	b, _ := br.ReadByte()
	if b != 't' {
		t.Fatalf("next byte = %q, want 't'", b)
	}
}

func TestReadResponseError(t *testing.T) {
	reference := func(status int) string {
		var b strings.Builder
		(&http.Response{StatusCode: status, ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}}).Write(&b)
		return b.String()
	}
	written := func(status int, reason string) string {
		var b strings.Builder
		WriteError(&b, status, reason)
		return b.String()
	}
	for _, tc := range []struct {
		name, in   string
		wantStatus int
		wantReason string
	}{
		{"ours 403", written(403, "destination example.com:25 not allowed"), 403, "destination example.com:25 not allowed"},
		{"ours 502", written(502, "connection refused"), 502, "connection refused"},
		{"ours 504", written(504, "dial timeout"), 504, "dial timeout"},
		{"ours 400", written(400, "bad\nrequest"), 400, "bad request"},
		{"ours empty reason", written(502, ""), 502, "502 Bad Gateway"},
		{"reference 403", reference(403), 403, "403 Forbidden"},
		{"reference 503", reference(503), 503, "503 Service Unavailable"},
		{"first line only", "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 25\r\n\r\n  first line\r\nsecond line\r\n", 502, "first line"},
		{"lf only", "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 9\r\n\r\none\ntwo\n\n", 502, "one"},
		{"custom status text", "HTTP/1.1 403 Nope\r\nContent-Length: 0\r\n\r\n", 403, "403 Nope"},
		{"whitespace body", "HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\n \r\n", 403, "403 Forbidden"},
		{"body until eof", "HTTP/1.1 502 Bad Gateway\r\n\r\nrefused", 502, "refused"},
		{"chunked", "HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ndenied\r\n0\r\n\r\n", 403, "denied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, reason, err := ReadResponse(bufio.NewReader(strings.NewReader(tc.in)))
			if err != nil {
				t.Fatalf("ReadResponse(%q): %v", tc.in, err)
			}
			if status != tc.wantStatus || reason != tc.wantReason {
				t.Fatalf("ReadResponse(%q) = %d, %q; want %d, %q", tc.in, status, reason, tc.wantStatus, tc.wantReason)
			}
		})
	}
}

// The reason is the body's first line, trimmed: whitespace at the end of
// that line must go too, not only whitespace at the end of the whole body.
func TestReadResponseReasonFirstLineTrimmed(t *testing.T) {
	body := "  no route to host \t\r\ndetails follow\r\n"
	in := fmt.Sprintf("HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	_, reason, err := ReadResponse(bufio.NewReader(strings.NewReader(in)))
	if err != nil {
		t.Fatal(err)
	}
	if reason != "no route to host" {
		t.Fatalf("reason = %q, want %q", reason, "no route to host")
	}
}

// The reason is one line even when it comes from the status line: a bare CR
// there (found by FuzzReadResponse) must not reach the caller.
func TestReadResponseReasonOneLine(t *testing.T) {
	in := "HTTP/1.1 502 Bad\rGateway\r\nContent-Length: 0\r\n\r\n"
	status, reason, err := ReadResponse(bufio.NewReader(strings.NewReader(in)))
	if err != nil {
		return // refusing it is fine too
	}
	if status != 502 || strings.ContainsAny(reason, "\r\n") {
		t.Fatalf("ReadResponse(%q) = %d, %q; want 502 and a one-line reason", in, status, reason)
	}
}

func TestReadResponseMalformed(t *testing.T) {
	for _, tc := range []struct{ name, in string }{
		{"empty", ""},
		{"garbage", "\x00\x01garbage\r\n\r\n"},
		{"not http", "SSH-2.0-OpenSSH_9.6\r\n"},
		{"no status code", "HTTP/1.1\r\n\r\n"},
		{"bad status code", "HTTP/1.1 2x0 OK\r\n\r\n"},
		{"bad version", "HTTP/x 200 OK\r\n\r\n"},
		{"truncated status line", "HTTP/1.1 200 Conn"},
		{"truncated headers", "HTTP/1.1 200 Connection established\r\nContent-Le"},
		{"no blank line", "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n"},
		{"bad content-length", "HTTP/1.1 403 Forbidden\r\nContent-Length: x\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, reason, err := ReadResponse(bufio.NewReader(strings.NewReader(tc.in)))
			if err == nil {
				t.Fatalf("ReadResponse(%q) = %d, %q; want an error", tc.in, status, reason)
			}
		})
	}
}

// An error answer with a huge body (or one that claims to be huge) is read
// only up to the reason limit.
func TestReadResponseHugeBodyBounded(t *testing.T) {
	// Large enough to show, small enough that an unbounded read fails the
	// test rather than the machine.
	const bodyLen = 16 << 20
	for _, tc := range []struct{ name, hdr string }{
		{"no length", "HTTP/1.1 403 Forbidden\r\n\r\n"},
		{"huge length", "HTTP/1.1 403 Forbidden\r\nContent-Length: 1099511627776\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cr := &countingReader{r: io.MultiReader(strings.NewReader(tc.hdr), io.LimitReader(endless('x'), bodyLen))}
			status, reason, err := ReadResponse(bufio.NewReader(cr))
			if err != nil || status != 403 {
				t.Fatalf("ReadResponse = %d, %v", status, err)
			}
			if len(reason) != maxReasonLen || strings.Trim(reason, "x") != "" {
				t.Fatalf("reason is %d bytes, want %d bytes of the body", len(reason), maxReasonLen)
			}
			if cr.n > len(tc.hdr)+maxReasonLen+8<<10 {
				t.Fatalf("read %d bytes for a %d-byte reason", cr.n, maxReasonLen)
			}
		})
	}
}

func TestErrorFromStatus(t *testing.T) {
	for _, tc := range []struct {
		status     int
		kind       error
		wantStatus int
	}{
		{http.StatusForbidden, ErrDenied, 403},
		{http.StatusGatewayTimeout, ErrTimeout, 504},
		{http.StatusBadRequest, ErrBadRequest, 400},
		{http.StatusBadGateway, ErrUnreachable, 502},
		// A proxy we forwarded to is at a limit.
		{http.StatusTooManyRequests, ErrLimit, 429},
		// The reference agent's answer to every dial failure: the
		// destination failed, the agent is there.
		{http.StatusServiceUnavailable, ErrUnreachable, 502},
		{http.StatusInternalServerError, ErrUnreachable, 502},
		{http.StatusNotFound, ErrUnreachable, 502},
		{http.StatusProxyAuthRequired, ErrUnreachable, 502},
		{0, ErrUnreachable, 502},
	} {
		err := ErrorFromStatus(tc.status, "why")
		if !errors.Is(err, tc.kind) {
			t.Errorf("ErrorFromStatus(%d) = %v, not %v", tc.status, err, tc.kind)
		}
		if errors.Is(err, ErrAgentOffline) {
			t.Errorf("ErrorFromStatus(%d) is ErrAgentOffline", tc.status)
		}
		if err.Error() != "why" {
			t.Errorf("ErrorFromStatus(%d).Error() = %q, want the reason", tc.status, err.Error())
		}
		var we *Error
		if !errors.As(err, &we) || we.Reason != "why" {
			t.Errorf("ErrorFromStatus(%d) = %#v, want an *Error with the reason", tc.status, err)
		}
		if got := Status(err); got != tc.wantStatus {
			t.Errorf("Status(ErrorFromStatus(%d)) = %d, want %d", tc.status, got, tc.wantStatus)
		}
	}
}

func TestStatus(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"offline", ErrAgentOffline, 503},
		{"denied", ErrDenied, 403},
		{"timeout", ErrTimeout, 504},
		{"bad request", ErrBadRequest, 400},
		{"unreachable", ErrUnreachable, 502},
		{"limit", Errorf(ErrLimit, "agent a has 10 tunnels open"), 429},
		{"unknown", errors.New("boom"), 502},
		{"io", io.ErrUnexpectedEOF, 502},
		{"Errorf offline", Errorf(ErrAgentOffline, "agent a is not connected"), 503},
		{"Errorf denied", Errorf(ErrDenied, "no"), 403},
		{"wrapped once", fmt.Errorf("dial agent a: %w", Errorf(ErrTimeout, "slow")), 504},
		{"wrapped twice", fmt.Errorf("front: %w", fmt.Errorf("dial: %w", ErrorFromStatus(403, "denied"))), 403},
		{"joined", errors.Join(errors.New("other"), Errorf(ErrBadRequest, "x")), 400},
		{"nil kind", &Error{Reason: "x"}, 502},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Status(tc.err); got != tc.want {
				t.Fatalf("Status(%v) = %d, want %d", tc.err, got, tc.want)
			}
		})
	}
}

func TestErrorChain(t *testing.T) {
	err := fmt.Errorf("dial agent a: %w", Errorf(ErrUnreachable, "connection refused"))
	if !errors.Is(err, ErrUnreachable) {
		t.Fatal("errors.Is through a wrapped *Error fails")
	}
	var we *Error
	if !errors.As(err, &we) || we.Reason != "connection refused" || we.Kind != ErrUnreachable {
		t.Fatalf("errors.As = %#v", we)
	}
	if got := err.Error(); got != "dial agent a: connection refused" {
		t.Fatalf("Error() = %q", got)
	}
}

func TestOutcome(t *testing.T) {
	for status, want := range map[int]string{
		0: "ok", 200: "ok", 101: "ok", 403: "denied", 503: "offline", 502: "refused", 504: "timeout",
		408: "timeout", 407: "unauthorized", 400: "bad_request", 431: "bad_request", 429: "limited", 500: "error",
	} {
		if got := Outcome(status); got != want {
			t.Errorf("Outcome(%d) = %q, want %q", status, got, want)
		}
	}
}
