package audit_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/reverse-http/reverse-http/internal/audit"
	"github.com/reverse-http/reverse-http/internal/metrics"
)

// syncBuffer is a log destination safe for the writer goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newLog(t *testing.T, m *metrics.Metrics) (*audit.Log, string, *syncBuffer) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	logs := &syncBuffer{}
	l, err := audit.New(path, "node-1", m, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return l, path, logs
}

// start runs l and returns the function that stops it and waits.
func start(t *testing.T, l *audit.Log) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func readLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	// Only whole lines: the writer may be half-way through one.
	data = data[:bytes.LastIndexByte(data, '\n')+1]
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q is not JSON: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// waitLines waits until path holds n lines.
func waitLines(t *testing.T, path string, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		lines := readLines(t, path)
		if len(lines) >= n || time.Now().After(deadline) {
			if len(lines) != n {
				t.Fatalf("%s: %d lines, want %d", path, len(lines), n)
			}
			return lines
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestLineFormat(t *testing.T) {
	l, path, _ := newLog(t, nil)
	stop := start(t, l)
	end := time.Date(2025, 3, 4, 5, 6, 7, 891_234_567, time.FixedZone("CET", 3600))
	l.Record(audit.Entry{
		Time: end, Agent: "4711", Client: "10.0.0.1:5555", Method: "CONNECT", Destination: "example.com:443",
		Dialed: "93.184.216.34:443", Status: 200, Outcome: "ok", BytesUp: 10, BytesDown: 20,
		Duration: 1500*time.Millisecond + 700*time.Microsecond,
	})
	l.Record(audit.Entry{Time: end, Client: "10.0.0.2:1", Status: 431, Outcome: "bad_request", Reason: "too large"})
	stop()
	data, _ := os.ReadFile(path)
	want := `{"time":"2025-03-04T04:06:07.891Z","node":"node-1","agent":"4711","client":"10.0.0.1:5555","method":"CONNECT","destination":"example.com:443","dialed":"93.184.216.34:443","status":200,"outcome":"ok","bytes_up":10,"bytes_down":20,"duration_ms":1500}
{"time":"2025-03-04T04:06:07.891Z","node":"node-1","agent":"","client":"10.0.0.2:1","method":"","destination":"","status":431,"outcome":"bad_request","reason":"too large","bytes_up":0,"bytes_down":0,"duration_ms":0}
`
	if string(data) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", data, want)
	}
}

// Values from the network cannot forge a line or break the JSON, and are
// bounded.
func TestHostileValues(t *testing.T) {
	l, path, _ := newLog(t, nil)
	stop := start(t, l)
	forged := "x\n{\"time\":\"2020-01-01T00:00:00.000Z\",\"agent\":\"admin\"}\r\n"
	hostile := []string{
		forged,
		"\x00\x1b[31mred\u2028\u2029</script>\"\\",
		"\xff\xfe invalid utf-8 \xc3",
		strings.Repeat("é", 70000),
	}
	for _, h := range hostile {
		l.Record(audit.Entry{Agent: h, Client: h, Method: h, Destination: h, Dialed: h, Reason: h, Outcome: "bad_request"})
	}
	stop()
	data, _ := os.ReadFile(path)
	if n := bytes.Count(data, []byte("\n")); n != len(hostile) {
		t.Fatalf("%d newlines for %d records:\n%s", n, len(hostile), data)
	}
	lines := readLines(t, path)
	for i, m := range lines {
		if m["node"] != "node-1" {
			t.Errorf("line %d: node %v", i, m["node"])
		}
		for _, k := range []string{"agent", "client", "method", "destination", "dialed"} {
			v, _ := m[k].(string)
			if len(v) > audit.MaxField+40 {
				t.Errorf("line %d: %s is %d bytes", i, k, len(v))
			}
		}
	}
	if got := lines[0]["agent"]; got != forged {
		t.Errorf("agent = %q, want %q kept as a value", got, forged)
	}
	long, _ := lines[3]["agent"].(string)
	if !strings.HasSuffix(long, "... (140000 bytes)") || !strings.HasPrefix(long, "éé") {
		t.Errorf("long agent clipped to %q", long)
	}
	if strings.ContainsRune(long, '\uFFFD') {
		t.Errorf("clip cut a character in two: %q", long)
	}
}

func counter(t *testing.T, m *metrics.Metrics) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.AuditDrops.Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetCounter().GetValue()
}

// A full buffer drops lines, never blocks, counts them and warns once.
func TestDropsWhenFull(t *testing.T) {
	m := metrics.New()
	l, path, logs := newLog(t, m)
	// Not running: nothing drains the buffer.
	const extra = 10
	done := make(chan struct{})
	go func() {
		for i := 0; i < audit.BufferLines+extra; i++ {
			l.Record(audit.Entry{Agent: "a", Status: 200, Outcome: "ok"})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Record blocked on a full buffer")
	}
	if got := counter(t, m); got != extra {
		t.Errorf("reverse_http_audit_dropped_total = %v, want %d", got, extra)
	}
	if n := strings.Count(logs.String(), "audit log buffer full"); n != 1 {
		t.Errorf("%d WARN lines about drops, want 1 (at most once per 10s):\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "dropped=1 ") {
		t.Errorf("first WARN does not say 1 dropped:\n%s", logs.String())
	}
	// Once running, the buffered lines are written; at the end the WARN
	// reports the drops since the last one.
	stop := start(t, l)
	waitLines(t, path, audit.BufferLines)
	stop()
	if !strings.Contains(logs.String(), "dropped=9 ") {
		t.Errorf("final WARN does not report the 9 later drops:\n%s", logs.String())
	}
}

// SIGUSR1 makes Run reopen the file: after logrotate moved it, the next
// lines go to a new file at the original path.
func TestReopenOnSIGUSR1(t *testing.T) {
	l, path, logs := newLog(t, nil)
	start(t, l)
	l.Record(audit.Entry{Agent: "before", Outcome: "ok"})
	waitLines(t, path, 1)
	rotated := path + ".1"
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	l.Record(audit.Entry{Agent: "still-old", Outcome: "ok"})
	waitLines(t, rotated, 2)
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "audit log reopened") {
		if time.Now().After(deadline) {
			t.Fatalf("not reopened:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	l.Record(audit.Entry{Agent: "after", Outcome: "ok"})
	lines := waitLines(t, path, 1)
	if lines[0]["agent"] != "after" {
		t.Errorf("new file: %v", lines)
	}
	if old := readLines(t, rotated); len(old) != 2 {
		t.Errorf("rotated file has %d lines, want 2", len(old))
	}
}

// Reopen called directly also flushes and switches files.
func TestReopen(t *testing.T) {
	l, path, _ := newLog(t, nil)
	stop := start(t, l)
	l.Record(audit.Entry{Agent: "1"})
	waitLines(t, path, 1)
	os.Rename(path, path+".old")
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	l.Record(audit.Entry{Agent: "2"})
	stop()
	if lines := readLines(t, path); len(lines) != 1 || lines[0]["agent"] != "2" {
		t.Errorf("after reopen: %v", lines)
	}
}

// A nil Log does nothing.
func TestNil(t *testing.T) {
	var l *audit.Log
	l.Record(audit.Entry{Agent: "x"})
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	if err := l.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestNewFails(t *testing.T) {
	if _, err := audit.New(filepath.Join(t.TempDir(), "no", "such", "dir"), "n", nil, slog.Default()); err == nil {
		t.Fatal("New with a path in a missing directory succeeded")
	}
}

func TestClip(t *testing.T) {
	for _, tc := range []struct {
		in   string
		max  int
		want string
	}{
		{"abc", 3, "abc"},
		{"abcd", 3, "abc... (4 bytes)"},
		{"aé", 2, "a... (3 bytes)"},
	} {
		if got := audit.Clip(tc.in, tc.max); got != tc.want {
			t.Errorf("Clip(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
	}
}
