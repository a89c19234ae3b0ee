package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// auditLine is one line of --audit.file.
type auditLine struct {
	Time        string `json:"time"`
	Node        string `json:"node"`
	Agent       string `json:"agent"`
	Client      string `json:"client"`
	Identity    string `json:"identity"`
	Method      string `json:"method"`
	Destination string `json:"destination"`
	Dialed      string `json:"dialed"`
	Status      int    `json:"status"`
	Outcome     string `json:"outcome"`
	Reason      string `json:"reason"`
	BytesUp     int64  `json:"bytes_up"`
	BytesDown   int64  `json:"bytes_down"`
	DurationMS  *int64 `json:"duration_ms"`
}

// readAudit parses the whole lines of an audit file; every one must be
// JSON with every field.
func readAudit(t testing.TB, path string) []auditLine {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data = data[:bytes.LastIndexByte(data, '\n')+1]
	var out []auditLine
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var l auditLine
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&l); err != nil {
			t.Fatalf("%s: line %q: %v", path, sc.Text(), err)
		}
		if _, err := time.Parse(time.RFC3339Nano, l.Time); err != nil || len(l.Time) != len("2006-01-02T15:04:05.000Z") {
			t.Errorf("%s: time %q is not RFC 3339 UTC with ms", path, l.Time)
		}
		if l.DurationMS == nil {
			t.Errorf("%s: line %q has no duration_ms", path, sc.Text())
		}
		out = append(out, l)
	}
	return out
}

// waitAudit waits until path has a line that match accepts, and returns it.
func waitAudit(t testing.TB, path, what string, match func(auditLine) bool) auditLine {
	t.Helper()
	var found auditLine
	err := waitFor(startTimeout, func() error {
		for _, l := range readAudit(t, path) {
			if match(l) {
				found = l
				return nil
			}
		}
		return fmt.Errorf("%s: no line for %s", path, what)
	})
	if err != nil {
		data, _ := os.ReadFile(path)
		t.Fatalf("%v; file:\n%s", err, data)
	}
	return found
}

// TestAuditLog runs proxy and agent with --audit.file and checks the lines
// of an ok CONNECT, an absolute-form GET and refusals on both sides, then
// rotates the files as logrotate does (rename, SIGUSR1).
func TestAuditLog(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	proxyFile, agentFile := filepath.Join(dir, "proxy-audit.log"), filepath.Join(dir, "agent-audit.log")
	web := startHTTPOrigin(t, false)
	echoSrv := startEcho(t)
	p := startProxy(t, "--audit.file="+proxyFile, "--audit.node=proxy-1")
	a := startAgent(t, p, "4711", "--audit.file="+agentFile, "--audit.node=agent-1",
		"--agent-client.host-whitelist=127.0.0.1")
	auth := basicAuth("4711", "noauth")

	// An ok CONNECT.
	tn := mustConnect(t, p.httpAddr, echoSrv.addr, auth)
	echoOnce(t, tn, "audited")
	tn.Close()
	l := waitAudit(t, proxyFile, "the CONNECT", func(l auditLine) bool {
		return l.Method == "CONNECT" && l.Destination == echoSrv.addr
	})
	if l.Node != "proxy-1" || l.Agent != "4711" || l.Status != 200 || l.Outcome != "ok" ||
		l.BytesUp != 7 || l.BytesDown != 7 || l.Dialed != "" || l.Client == "" {
		t.Errorf("proxy CONNECT line: %+v", l)
	}
	l = waitAudit(t, agentFile, "the CONNECT", func(l auditLine) bool { return l.Destination == echoSrv.addr })
	if l.Node != "agent-1" || l.Agent != "4711" || l.Method != "CONNECT" || l.Status != 200 || l.Outcome != "ok" ||
		l.Dialed != echoSrv.addr || l.BytesUp != 7 || l.BytesDown != 7 {
		t.Errorf("agent CONNECT line: %+v", l)
	}

	// An absolute-form GET: the origin's status, outcome ok.
	resp, err := proxyClient(p.httpAddr, "4711", "noauth").Get(web.url("/nothing-here"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET: %s %q", resp.Status, body)
	}
	l = waitAudit(t, proxyFile, "the GET", func(l auditLine) bool { return l.Method == "GET" })
	if l.Destination != web.addr || l.Status != 404 || l.Outcome != "ok" || l.Agent != "4711" || l.BytesDown != int64(len(body)) {
		t.Errorf("proxy GET line: %+v", l)
	}

	// Denied by the agent's allowlist: 403 on both sides.
	denied := "127.0.0.2:" + strconv.Itoa(web.port)
	tn, err = dialConnect(p.httpAddr, denied, auth, nil)
	if err != nil {
		t.Fatal(err)
	}
	tn.Close()
	if tn.resp.StatusCode != http.StatusForbidden {
		t.Fatalf("CONNECT %s: %s, want 403", denied, tn.resp.Status)
	}
	l = waitAudit(t, proxyFile, "the 403", func(l auditLine) bool { return l.Destination == denied })
	if l.Status != 403 || l.Outcome != "denied" || l.Method != "CONNECT" || l.Agent != "4711" || l.Reason == "" {
		t.Errorf("proxy 403 line: %+v", l)
	}
	l = waitAudit(t, agentFile, "the 403", func(l auditLine) bool { return l.Destination == denied })
	if l.Status != 403 || l.Outcome != "denied" || l.Dialed != "" || l.Reason == "" {
		t.Errorf("agent 403 line: %+v", l)
	}

	// No credentials: 407.
	tn, err = dialConnect(p.httpAddr, echoSrv.addr, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	tn.Close()
	l = waitAudit(t, proxyFile, "the 407", func(l auditLine) bool { return l.Status == 407 })
	if l.Outcome != "unauthorized" || l.Agent != "" || l.Method != "CONNECT" || l.Destination != echoSrv.addr {
		t.Errorf("proxy 407 line: %+v", l)
	}

	// Refused by net/http itself: no method, no agent.
	if resp, _, err := rawRequest(p.httpAddr, "GET", []byte("GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")); err != nil {
		t.Fatal(err)
	} else if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("malformed request: %s", resp.Status)
	}
	l = waitAudit(t, proxyFile, "the 400", func(l auditLine) bool { return l.Status == 400 })
	if l.Outcome != "bad_request" || l.Method != "" || l.Agent != "" || l.Reason == "" || l.Client == "" {
		t.Errorf("proxy 400 line: %+v", l)
	}

	// logrotate: move the files away, SIGUSR1, and the next lines go to
	// new files at the original paths.
	before := map[string]int{}
	for _, f := range []struct {
		path string
		proc *process
	}{{proxyFile, p.process}, {agentFile, a}} {
		if err := os.Rename(f.path, f.path+".1"); err != nil {
			t.Fatal(err)
		}
		before[f.path] = len(readAudit(t, f.path+".1"))
		if err := f.proc.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		f.proc.waitLog(t, startTimeout, 1, "audit log reopened")
		if _, err := os.Stat(f.path); err != nil {
			t.Fatalf("no new file after SIGUSR1: %v", err)
		}
	}
	tn = mustConnect(t, p.httpAddr, echoSrv.addr, auth)
	echoOnce(t, tn, "rotated")
	tn.Close()
	for _, path := range []string{proxyFile, agentFile} {
		waitAudit(t, path, "the CONNECT after rotation", func(l auditLine) bool {
			return l.Destination == echoSrv.addr && l.BytesUp == 7 && l.Outcome == "ok"
		})
		if n := len(readAudit(t, path+".1")); n != before[path] {
			t.Errorf("%s.1: %d lines after the rotation, want %d", path, n, before[path])
		}
	}

	// The agent's tunnel that carried the GET stays open as a keep-alive
	// connection; it ends when the proxy stops, and the agent's stop
	// writes its line before the agent exits.
	p.stop(t)
	a.stop(t)
	l = waitAudit(t, agentFile, "the GET's tunnel", func(l auditLine) bool { return l.Destination == web.addr })
	if l.Dialed != web.addr || l.Status != 200 || l.BytesDown < int64(len(body)) {
		t.Errorf("agent line of the GET's tunnel: %+v", l)
	}
}
