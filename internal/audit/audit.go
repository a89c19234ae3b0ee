// Package audit writes the audit log: one JSON line per tunnel and per
// absolute-form request when it ends, refused ones included, to a file of
// its own. Recording never blocks a tunnel: lines go through a bounded
// buffer to one writer goroutine, and when the buffer is full they are
// dropped and counted. The file is reopened on SIGUSR1, so logrotate can
// move it away.
//
// A nil *Log records nothing, so a role without an audit log pays nothing.
package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/reverse-http/reverse-http/internal/metrics"
)

// Entry is one tunnel or request, as its role saw it end.
type Entry struct {
	// Time is when it ended; zero means when it is recorded.
	Time time.Time
	// Agent is the agent ID the client named (on an agent: its own ID).
	Agent string
	// Client is the client's address (empty on an agent, which does not
	// know it).
	Client string
	// Identity is who the client authenticated as: "client:NAME",
	// "cert:NAME", "jwt:SUB" (or "jwt:jti:ID"), "noauth"; empty when it
	// did not (refused before or at authentication) and on an agent.
	Identity string
	// Method is CONNECT or the HTTP method of an absolute-form request;
	// empty for a request refused before it was parsed.
	Method string
	// Destination is the host:port asked for.
	Destination string
	// Dialed is the address an agent dialed (resolved IP:port).
	Dialed string
	// Status is the status the client got: 200 for a CONNECT tunnel, the
	// origin's for an absolute-form request it answered, the proxy's own
	// (407, 403, 503, ...) for a refusal.
	Status int
	// Outcome is wire.Outcome of the proxy's status (ok, denied, ...).
	Outcome string
	// Reason says why the proxy refused, or why an opened tunnel ended
	// with an error (idle timeout, shutdown deadline, ...).
	Reason    string
	BytesUp   int64 // client to destination
	BytesDown int64
	Duration  time.Duration
}

// line is an Entry as written, in this field order.
type line struct {
	Time        string `json:"time"`
	Node        string `json:"node"`
	Agent       string `json:"agent"`
	Client      string `json:"client"`
	Identity    string `json:"identity,omitempty"`
	Method      string `json:"method"`
	Destination string `json:"destination"`
	Dialed      string `json:"dialed,omitempty"`
	Status      int    `json:"status"`
	Outcome     string `json:"outcome"`
	Reason      string `json:"reason,omitempty"`
	BytesUp     int64  `json:"bytes_up"`
	BytesDown   int64  `json:"bytes_down"`
	DurationMS  int64  `json:"duration_ms"`
}

// TimeFormat is the time field's format: RFC 3339 with milliseconds, UTC.
const TimeFormat = "2006-01-02T15:04:05.000Z07:00"

// MaxField bounds each string field of a line in bytes: agent IDs, methods
// and destinations come from the network and may be as long as a request
// header. A longer value is cut and says how long it was.
const MaxField = 256

// maxReason bounds the reason field, which may quote a destination.
const maxReason = 1024

// BufferLines is how many lines may wait for the writer; past it lines are
// dropped and counted.
const BufferLines = 4096

// warnEvery is the least time between two WARN lines about dropped lines.
const warnEvery = 10 * time.Second

// flushTimeout bounds the flush of the lines left when Run's context ends.
const flushTimeout = 2 * time.Second

// Log is an audit log. Its methods are safe for concurrent use, and do
// nothing on a nil *Log.
type Log struct {
	path    string // "-": stdout, never reopened
	node    string
	metrics *metrics.Metrics
	log     *slog.Logger

	ch chan Entry

	mu  sync.Mutex // the file and its buffer: the writer, and reopen
	f   *os.File   // nil for stdout
	w   *bufio.Writer
	enc *json.Encoder

	dropped  atomic.Int64 // since the last WARN
	lastWarn atomic.Int64 // unix nanoseconds of the last WARN about drops
	lastErr  atomic.Int64 // of the last ERROR about a failed write
}

// New opens path for appending (creating it, mode 0640), or uses stdout if
// path is "-". node names this node in every line. m, if not nil, counts
// dropped lines (reverse_http_audit_dropped_total); log gets a WARN when
// lines are dropped and an ERROR when the file cannot be written. Lines
// are written only while Run runs.
func New(path, node string, m *metrics.Metrics, log *slog.Logger) (*Log, error) {
	l := &Log{path: path, node: node, metrics: m, log: log, ch: make(chan Entry, BufferLines)}
	var out io.Writer = os.Stdout
	if path != "-" {
		f, err := openFile(path)
		if err != nil {
			return nil, err
		}
		l.f, out = f, f
	}
	l.setWriter(out)
	return l, nil
}

func openFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
}

func (l *Log) setWriter(out io.Writer) {
	l.w = bufio.NewWriterSize(out, 64<<10)
	l.enc = json.NewEncoder(l.w)
	l.enc.SetEscapeHTML(false)
}

// Record queues e for the writer. It never blocks: when BufferLines lines
// are waiting already, e is dropped and counted.
func (l *Log) Record(e Entry) {
	if l == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	select {
	case l.ch <- e:
	default:
		l.drop(1)
	}
}

func (l *Log) drop(n int64) {
	l.metrics.AuditDropped(n)
	l.dropped.Add(n)
	l.warnDropped(false)
}

// warnDropped logs the lines dropped since the last WARN, at most once per
// warnEvery unless force.
func (l *Log) warnDropped(force bool) {
	if l.dropped.Load() == 0 {
		return
	}
	now, last := time.Now().UnixNano(), l.lastWarn.Load()
	if !force && now-last < int64(warnEvery) || !l.lastWarn.CompareAndSwap(last, now) {
		return
	}
	if n := l.dropped.Swap(0); n > 0 {
		l.log.Warn("audit log buffer full: lines dropped (the audit file is written too slowly)",
			"dropped", n, "buffer", BufferLines, "file", l.path)
	}
}

// Run writes the recorded lines until ctx ends, and reopens the file on
// SIGUSR1. When ctx ends it writes the lines still buffered, for up to 2s
// (those left are dropped and counted), closes the file and returns. Run
// it once, and end its context after every part that records has ended.
func (l *Log) Run(ctx context.Context) error {
	if l == nil {
		return nil
	}
	reopen := make(chan os.Signal, 1)
	if len(reopenSignals) > 0 {
		signal.Notify(reopen, reopenSignals...)
		defer signal.Stop(reopen)
	}
	tick := time.NewTicker(warnEvery)
	defer tick.Stop()
	for {
		select {
		case e := <-l.ch:
			l.write(e)
			l.writeQueued(time.Time{})
		case <-reopen:
			if err := l.Reopen(); err != nil {
				l.log.Error("audit log: cannot reopen the file; still writing to the old one", "file", l.path, "error", err)
			} else {
				l.log.Info("audit log reopened", "file", l.path)
			}
		case <-tick.C:
			l.warnDropped(false)
		case <-ctx.Done():
			l.writeQueued(time.Now().Add(flushTimeout))
			if n := len(l.ch); n > 0 {
				l.drop(int64(n)) // counted, not drained: Record may still run
			}
			l.warnDropped(true)
			return l.close()
		}
	}
}

// writeQueued writes the lines waiting now, then flushes. A non-zero
// deadline stops it early.
func (l *Log) writeQueued(deadline time.Time) {
	for i := 0; ; i++ {
		if !deadline.IsZero() && i%64 == 0 && time.Now().After(deadline) {
			break
		}
		select {
		case e := <-l.ch:
			l.write(e)
			continue
		default:
		}
		break
	}
	l.mu.Lock()
	err := l.w.Flush()
	l.mu.Unlock()
	l.writeFailed(err)
}

func (l *Log) write(e Entry) {
	l.mu.Lock()
	err := l.enc.Encode(line{
		Time:        e.Time.UTC().Format(TimeFormat),
		Node:        l.node,
		Agent:       Clip(e.Agent, MaxField),
		Client:      Clip(e.Client, MaxField),
		Identity:    Clip(e.Identity, MaxField),
		Method:      Clip(e.Method, MaxField),
		Destination: Clip(e.Destination, MaxField),
		Dialed:      Clip(e.Dialed, MaxField),
		Status:      e.Status,
		Outcome:     e.Outcome,
		Reason:      Clip(e.Reason, maxReason),
		BytesUp:     e.BytesUp,
		BytesDown:   e.BytesDown,
		DurationMS:  e.Duration.Milliseconds(),
	})
	l.mu.Unlock()
	l.writeFailed(err)
}

// writeFailed logs a write error, at most once per warnEvery. bufio keeps
// the error, so one disk full does not log a line per record.
func (l *Log) writeFailed(err error) {
	if err == nil {
		return
	}
	now, last := time.Now().UnixNano(), l.lastErr.Load()
	if now-last >= int64(warnEvery) && l.lastErr.CompareAndSwap(last, now) {
		l.log.Error("audit log: write failed", "file", l.path, "error", err)
	}
}

// Reopen flushes the buffered lines to the file and reopens path, so that
// the lines after it go to a new file if the old one was moved. Run calls
// it on SIGUSR1. With stdout it only flushes. If path cannot be opened the
// old file stays in use.
func (l *Log) Reopen() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	flushErr := l.w.Flush()
	if l.f == nil {
		return flushErr
	}
	f, err := openFile(l.path)
	if err != nil {
		return err
	}
	l.f.Close()
	l.f = f
	l.setWriter(f) // a fresh writer: a sticky error of the old file is gone
	return nil
}

func (l *Log) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.w.Flush()
	if l.f != nil {
		if cerr := l.f.Close(); err == nil {
			err = cerr
		}
		l.f = nil
		l.setWriter(io.Discard)
	}
	if err != nil {
		l.log.Error("audit log: closing", "file", l.path, "error", err)
	}
	return nil
}

// Clip bounds s to max bytes, cut at a character boundary, and says how
// long it was: "abc... (70000 bytes)".
func Clip(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s... (%d bytes)", s[:cut], len(s))
}
