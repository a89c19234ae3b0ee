package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"net/http"
	"strings"
	"testing"
)

func FuzzReadMessage(f *testing.F) {
	for _, seed := range [][]byte{
		nil,
		{0, 0, 0, 0},
		{0, 0, 0, 2, 'a', 'b'},
		{0, 0, 0, 2, 'a'},
		{0, 0},
		{0, 0x10, 0, 0},
		{0, 0x10, 0, 1},
		{0xff, 0xff, 0xff, 0xff},
		append([]byte{0, 0, 0, 13}, AuthOK...),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := ReadMessage(bytes.NewReader(data))
		if len(data) >= 4 && binary.BigEndian.Uint32(data) > MaxAuthLen && !errors.Is(err, ErrTooLong) {
			t.Fatalf("length %d accepted: err %v", binary.BigEndian.Uint32(data), err)
		}
		if err != nil {
			return
		}
		if len(msg) > MaxAuthLen {
			t.Fatalf("ReadMessage returned %d bytes, more than MaxAuthLen", len(msg))
		}
		if n := binary.BigEndian.Uint32(data); int(n) != len(msg) || msg != string(data[4:4+n]) {
			t.Fatalf("ReadMessage = %q, header says %d bytes", msg, n)
		}
		var buf bytes.Buffer
		if err := WriteMessage(&buf, msg); err != nil {
			t.Fatalf("WriteMessage of a message ReadMessage accepted: %v", err)
		}
		if !bytes.Equal(buf.Bytes(), data[:4+len(msg)]) {
			t.Fatalf("round trip: wrote % x, read from % x", buf.Bytes(), data[:4+len(msg)])
		}
	})
}

func FuzzReadConnect(f *testing.F) {
	for _, seed := range []string{
		"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
		"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Connection: keep-alive\r\n\r\n",
		"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\nDATA",
		"CONNECT  HTTP/1.1\r\nHost: h:1\r\n\r\n",
		"CONNECT example.com HTTP/1.1\r\n\r\n",
		"CONNECT example.com:0 HTTP/1.1\r\n\r\n",
		"CONNECT example.com:65536 HTTP/1.1\r\n\r\n",
		"CONNECT :443 HTTP/1.1\r\n\r\n",
		"CONNECT example.com:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
		"CONNECT example.com:443 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
		"CONNECT example.com:443 HTTP/1.1\r\n",
		"\x00garbage",
		"",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		target, err := ReadConnect(bufio.NewReader(strings.NewReader(in)))
		if err != nil {
			return
		}
		if _, _, err := SplitHostPort(target); err != nil {
			t.Fatalf("ReadConnect accepted %q, which SplitHostPort refuses: %v", target, err)
		}
		// What we accept, we can send again and read back unchanged.
		var buf bytes.Buffer
		WriteConnect(&buf, target)
		again, err := ReadConnect(bufio.NewReader(&buf))
		if err != nil || again != target {
			t.Fatalf("round trip of %q: %q, %v", target, again, err)
		}
	})
}

func FuzzReadResponse(f *testing.F) {
	for _, seed := range []string{
		"HTTP/1.1 200 Connection established\r\n\r\n",
		"HTTP/1.1 200 Connection established\r\nContent-Length: 0\r\n\r\nHELLO",
		"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 38\r\n\r\ndestination example.com:25 not allowed",
		"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 503 Service Unavailable\r\n\r\nbody until eof",
		"HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 100\r\n\r\nshort",
		"HTTP/1.1 200 Conn",
		"HTTP/1.1 2x0 OK\r\n\r\n",
		"HTTP/0.0 000 \n\n0000000000000000",
		"\x00garbage",
		"",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		status, reason, err := ReadResponse(bufio.NewReader(strings.NewReader(in)))
		if err != nil {
			if status != 0 || reason != "" {
				t.Fatalf("error %v with status %d, reason %q", err, status, reason)
			}
			return
		}
		// net/http takes any three digits, "000" included; a status
		// other than 200 is an error answer whatever its value.
		if status < 0 || status > 999 {
			t.Fatalf("status %d", status)
		}
		if status == http.StatusOK {
			if reason != "" {
				t.Fatalf("200 with reason %q", reason)
			}
			return
		}
		if reason == "" {
			t.Fatalf("status %d with an empty reason", status)
		}
		if len(reason) > maxReasonLen {
			t.Fatalf("reason of %d bytes, more than %d", len(reason), maxReasonLen)
		}
		// A bare CR from the status line is covered by
		// TestReadResponseReasonOneLine; here only what must never happen.
		if strings.Contains(reason, "\n") {
			t.Fatalf("reason %q spans lines", reason)
		}
	})
}
