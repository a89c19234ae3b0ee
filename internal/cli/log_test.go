package cli_test

import (
	"encoding/json"
	"net"
	"strings"
	"testing"
)

// TestLogEnv: $LOG_LEVEL and $LOG_FORMAT set --log.level and --log.format;
// the flags override them.
func TestLogEnv(t *testing.T) {
	tests := []struct {
		name       string
		env        map[string]string
		args       []string
		json       bool // every stderr line is a JSON object
		info, warn bool // the proxy's INFO "http proxy listening" and WARN self-signed lines appear
	}{
		{name: "defaults", info: true, warn: true},
		{name: "LOG_FORMAT=json", env: map[string]string{"LOG_FORMAT": "json"}, json: true, info: true, warn: true},
		{name: "LOG_LEVEL=warn", env: map[string]string{"LOG_LEVEL": "warn"}, warn: true},
		{name: "LOG_LEVEL=error", env: map[string]string{"LOG_LEVEL": "error"}},
		{name: "--log.format=text over LOG_FORMAT=json", env: map[string]string{"LOG_FORMAT": "json"},
			args: []string{"--log.format=text"}, info: true, warn: true},
		{name: "--log.level=info over LOG_LEVEL=error", env: map[string]string{"LOG_LEVEL": "error"},
			args: []string{"--log.level", "info"}, info: true, warn: true},
		{name: "--log.level=error over LOG_LEVEL=debug", env: map[string]string{"LOG_LEVEL": "debug", "LOG_FORMAT": "json"},
			args: []string{"--log.level=error"}, json: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			isolate(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			args := proxyArgs(tc.args...)
			var stderr string
			if tc.info {
				r := start(t, args...)
				r.waitFor(proxyReady)
				if code := r.stop(); code != 0 {
					t.Fatalf("exit %d; stderr:\n%s", code, r.stderr)
				}
				stderr = r.stderr.String()
			} else {
				// Nothing to wait for at warn or error: the proxy logs its
				// listening line at info. With the context already cancelled,
				// cli.Main sets up (and logs) as usual and then returns; the
				// lines are written before it returns.
				r := start(t, args...)
				r.cancel()
				if code := r.exit(); code != 0 {
					t.Fatalf("exit %d; stderr:\n%s", code, r.stderr)
				}
				stderr = r.stderr.String()
			}
			for line := range strings.Lines(stderr) {
				isJSON := json.Valid([]byte(line))
				if isJSON != tc.json {
					t.Errorf("line is JSON: %v, want %v: %s", isJSON, tc.json, line)
				}
			}
			if got := strings.Contains(stderr, proxyReady); got != tc.info {
				t.Errorf("INFO line logged: %v, want %v; stderr:\n%s", got, tc.info, stderr)
			}
			if got := strings.Contains(stderr, "self-signed"); got != tc.warn {
				t.Errorf("WARN line logged: %v, want %v; stderr:\n%s", got, tc.warn, stderr)
			}
		})
	}
}

// TestLogEnvDebug: LOG_LEVEL=debug with LOG_FORMAT=json shows the HTTP
// server's debug lines (a failed TLS handshake) as JSON.
func TestLogEnvDebug(t *testing.T) {
	isolate(t)
	f := newFiles(t)
	t.Setenv("LOG_LEVEL", "debug")
	t.Setenv("LOG_FORMAT", "json")
	r := start(t, proxyArgs("--http-proxy.tls.enable",
		"--http-proxy.tls.file.cert="+f.proxyCert, "--http-proxy.tls.file.key="+f.proxyKey)...)
	addr := logAttr(t, r.waitFor(proxyReady), "address")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close() // before the handshake
	line := r.waitFor("TLS handshake error")
	if code := r.stop(); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, r.stderr)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatalf("not JSON: %v: %s", err, line)
	}
	if m["level"] != "DEBUG" {
		t.Errorf("level=%v, want DEBUG: %s", m["level"], line)
	}
	for line := range strings.Lines(r.stderr.String()) {
		if !json.Valid([]byte(line)) {
			t.Errorf("not JSON: %s", line)
		}
	}
}

// TestLogLevelTrace: --log.level=trace is accepted, like the reference's, and
// includes debug lines.
func TestLogLevelTrace(t *testing.T) {
	isolate(t)
	f := newFiles(t)
	r := start(t, proxyArgs("--log.level=trace", "--http-proxy.tls.enable",
		"--http-proxy.tls.file.cert="+f.proxyCert, "--http-proxy.tls.file.key="+f.proxyKey)...)
	addr := logAttr(t, r.waitFor(proxyReady), "address")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if line := r.waitFor("TLS handshake error"); !strings.Contains(line, "level=DEBUG") {
		t.Errorf("want a DEBUG line: %s", line)
	}
	if code := r.stop(); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, r.stderr)
	}
}
