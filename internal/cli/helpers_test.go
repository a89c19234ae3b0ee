package cli_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/cli"
	"github.com/reverse-http/reverse-http/internal/tlsconf"
)

// waitTimeout bounds every wait for a running command: a log line to appear,
// or the exit after its context is cancelled. Generous for -race on a busy CI
// machine; a passing test never waits this long.
const waitTimeout = 20 * time.Second

// isolate gives the test an empty $HOME, no $LOG_LEVEL/$LOG_FORMAT or
// $REVERSE_HTTP_* variables, and an empty working directory (commands
// default to files in it). It returns the working directory.
//
// An empty $HOME does not keep the config files of the user running the tests
// out: kong.ExpandPath finds "~" with user.Current() (the passwd entry), not
// $HOME. So isolate skips the test when such a file, or one in
// /etc/reverse-http, exists; it would change the outcome.
func isolate(t testing.TB) string {
	t.Helper()
	for _, p := range ambientConfigFiles() {
		if _, err := os.Stat(p); err == nil {
			t.Skipf("%s exists and cli.Main would read it; move it away to run this test", p)
		}
	}
	t.Setenv("HOME", t.TempDir())
	unsetenv(t, "LOG_LEVEL")
	unsetenv(t, "LOG_FORMAT")
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, cli.EnvPrefix) {
			unsetenv(t, name)
		}
	}
	dir := t.TempDir()
	t.Chdir(dir)
	return dir
}

// ambientConfigFiles are the default config files that cli.Main reads and a
// test cannot redirect.
func ambientConfigFiles() []string {
	files := []string{"/etc/reverse-http/config.json", "/etc/reverse-http/config.yaml"}
	if u, err := user.Current(); err == nil {
		files = append(files,
			filepath.Join(u.HomeDir, ".reverse-http.json"),
			filepath.Join(u.HomeDir, ".reverse-http.yaml"))
	}
	return files
}

// unsetenv removes key for the rest of the test; t.Setenv restores it after.
// An empty variable is not the same as none: kong parses "" as the value.
func unsetenv(t testing.TB, key string) {
	t.Helper()
	t.Setenv(key, "")
	if err := os.Unsetenv(key); err != nil {
		t.Fatal(err)
	}
}

// syncBuffer collects what a running command writes, safely for its
// goroutines, and lets the test wait for a line without sleeping.
type syncBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	written chan struct{} // closed and replaced on every Write
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{written: make(chan struct{})} }

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	close(b.written)
	b.written = make(chan struct{})
	return b.buf.Write(p)
}

// snapshot returns what was written so far and a channel closed by the next
// write.
func (b *syncBuffer) snapshot() (string, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String(), b.written
}

func (b *syncBuffer) String() string {
	s, _ := b.snapshot()
	return s
}

// running is a long-running command (proxy, agent) started with cli.Main in a
// goroutine.
type running struct {
	t              testing.TB
	args           []string
	cancel         context.CancelFunc
	done           chan struct{}
	code           int // valid once done is closed
	stdout, stderr *syncBuffer
}

// start runs cli.Main(args) in a goroutine with a context that stop (or the
// end of the test) cancels.
func start(t testing.TB, args ...string) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{
		t: t, args: args, cancel: cancel, done: make(chan struct{}),
		stdout: newSyncBuffer(), stderr: newSyncBuffer(),
	}
	go func() {
		defer close(r.done)
		r.code = cli.Main(ctx, args, strings.NewReader(""), r.stdout, r.stderr)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(waitTimeout):
			t.Errorf("%q still running %v after the test ended", args, waitTimeout)
		}
	})
	return r
}

// waitFor waits until stderr holds s and returns the line that holds it. The
// test fails if the command exits first or nothing comes within waitTimeout.
func (r *running) waitFor(s string) string {
	r.t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		text, next := r.stderr.snapshot()
		if line, ok := lineWith(text, s); ok {
			return line
		}
		select {
		case <-next:
		case <-r.done:
			if line, ok := lineWith(r.stderr.String(), s); ok {
				return line
			}
			r.t.Fatalf("%q exited with %d before logging %q; stderr:\n%s", r.args, r.code, s, r.stderr)
		case <-deadline.C:
			r.t.Fatalf("%q did not log %q within %v; stderr:\n%s", r.args, s, waitTimeout, r.stderr)
		}
	}
}

// stop cancels the command's context and returns its exit status.
func (r *running) stop() int {
	r.t.Helper()
	r.cancel()
	select {
	case <-r.done:
		return r.code
	case <-time.After(waitTimeout):
		r.t.Fatalf("%q did not return within %v after its context was cancelled; stderr:\n%s", r.args, waitTimeout, r.stderr)
		return -1
	}
}

// exit waits for the command to end by itself and returns its exit status.
func (r *running) exit() int {
	r.t.Helper()
	select {
	case <-r.done:
		return r.code
	case <-time.After(waitTimeout):
		r.t.Fatalf("%q still running after %v; stderr:\n%s", r.args, waitTimeout, r.stderr)
		return -1
	}
}

func lineWith(text, s string) (string, bool) {
	for line := range strings.Lines(text) {
		if strings.Contains(line, s) {
			return strings.TrimSuffix(line, "\n"), true
		}
	}
	return "", false
}

// result is what a command that ends by itself did.
type result struct {
	code           int
	stdout, stderr string
}

// runCmd runs a command that ends by itself (auth, certs, version, a failing
// proxy). Its context ends after limit so that a long-running command that
// should have failed returns too; the test then sees its exit status.
func runCmd(t testing.TB, stdin string, limit time.Duration, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := cli.Main(ctx, args, strings.NewReader(stdin), &stdout, &stderr)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// mustRun runs a quick command and fails the test unless it exits 0.
func mustRun(t testing.TB, args ...string) result {
	t.Helper()
	r := runCmd(t, "", waitTimeout, args...)
	if r.code != 0 {
		t.Fatalf("%q exited with %d; stderr:\n%s", args, r.code, r.stderr)
	}
	return r
}

// loopback are the proxy's listen flags on ports the kernel picks, so tests
// never collide with each other or with a real proxy on :3128/:4242.
var loopback = []string{
	"--agent-server.listen-address=127.0.0.1:0",
	"--http-proxy.listen-address=127.0.0.1:0",
}

func proxyArgs(extra ...string) []string {
	return append(append([]string{"proxy"}, loopback...), extra...)
}

// The log lines that show a role got past validation and is serving.
const (
	proxyReady = "http proxy listening"
	agentReady = "agent starting"
)

// files are certificates, keys and tokens made in memory for one test and
// written to its temporary directory; nothing secret is committed.
type files struct {
	dir string

	caCert, crl             string // CA and a CRL it signed
	proxyCert, proxyKey     string // server certificate for localhost/127.0.0.1
	proxyKeyEnc             string // proxyKey encrypted with keyPassword
	agentCert, agentKey     string // client certificate
	authPrivate, authPublic string // ES256 JWT signing key pair
	agentToken, agentTokenF string // agent-role JWT for agent ID "a1" (aud "aud"), and a file holding it
}

const keyPassword = "s3cret"

func newFiles(t testing.TB) *files {
	t.Helper()
	dir := t.TempDir()
	f := &files{dir: dir}
	write := func(name string, data []byte) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	ca, err := tlsconf.NewCA("cli test CA")
	if err != nil {
		t.Fatal(err)
	}
	f.caCert = write("ca.pem", ca.CertPEM)
	crl, err := ca.RevocationList([]*big.Int{big.NewInt(4711)})
	if err != nil {
		t.Fatal(err)
	}
	f.crl = write("ca.crl", crl)
	cert, key, err := ca.Issue("proxy", []string{"localhost", "127.0.0.1"}, false)
	if err != nil {
		t.Fatal(err)
	}
	f.proxyCert, f.proxyKey = write("proxy.pem", cert), write("proxy-key.pem", key)
	f.proxyKeyEnc = write("proxy-key-enc.pem", encryptKey(t, key, keyPassword))
	cert, key, err = ca.Issue("agent", nil, true)
	if err != nil {
		t.Fatal(err)
	}
	f.agentCert, f.agentKey = write("agent.pem", cert), write("agent-key.pem", key)

	signer, err := auth.GenerateKey("ES256")
	if err != nil {
		t.Fatal(err)
	}
	priv, err := auth.MarshalPrivateKey(signer)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := auth.MarshalPublicKey(signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	f.authPrivate, f.authPublic = write("auth-key-private.pem", priv), write("auth-key-public.pem", pub)
	if f.agentToken, err = auth.Sign(signer, auth.TokenOptions{AgentID: "a1", Role: auth.RoleAgent, Audience: "aud", Duration: time.Hour}); err != nil {
		t.Fatal(err)
	}
	f.agentTokenF = write("agent.jwt", []byte(f.agentToken+"\n"))
	return f
}

// encryptKey turns a PKCS#8 ECDSA key into a legacy encrypted "EC PRIVATE
// KEY" (Proc-Type: 4,ENCRYPTED), what `openssl ec -aes256` writes and what
// --http-proxy.tls.key-password is for.
func encryptKey(t testing.TB, keyPEM []byte, password string) []byte {
	t.Helper()
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		t.Fatal("no PEM block in generated key")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		t.Fatalf("generated key is %T, want *ecdsa.PrivateKey", k)
	}
	der, err := x509.MarshalECPrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := x509.EncryptPEMBlock(rand.Reader, "EC PRIVATE KEY", der, []byte(password), x509.PEMCipherAES256) //nolint:staticcheck // SA1019: the legacy format is the point
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(enc)
}

// writeFile writes data to name in dir and returns the path.
func writeFile(t testing.TB, dir, name, data string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// logAttr returns the value of key in a text or JSON slog line.
func logAttr(t testing.TB, line, key string) string {
	t.Helper()
	if strings.HasPrefix(line, "{") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %v: %s", err, line)
		}
		s, _ := m[key].(string)
		return s
	}
	for field := range strings.FieldsSeq(line) {
		if v, ok := strings.CutPrefix(field, key+"="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}
