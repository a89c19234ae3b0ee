package tlsconf

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// localPKI is the output of WriteLocalPKI plus the CA to issue more.
type localPKI struct {
	dir string
	ca  *CA
}

func (p localPKI) path(name string) string { return filepath.Join(p.dir, name) }

func newLocalPKI(t *testing.T) localPKI {
	t.Helper()
	dir := t.TempDir()
	if _, err := WriteLocalPKI(dir, []string{"localhost", "127.0.0.1"}, false); err != nil {
		t.Fatal(err)
	}
	p := localPKI{dir: dir, ca: loadCA(t, filepath.Join(dir, LocalCACert), filepath.Join(dir, LocalCAKey))}
	return p
}

func loadCA(t *testing.T, certPath, keyPath string) *CA {
	t.Helper()
	certPEM, keyPEM := readFile(t, certPath), readFile(t, keyPath)
	certs, err := parseCertPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	key, err := parseKeyPEM(keyPEM, "")
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: certs[0], Key: key, CertPEM: certPEM, KeyPEM: keyPEM}
}

// serverFiles are the proxy files of p; mTLS adds the client CA.
func (p localPKI) serverFiles(mTLS bool) ServerFiles {
	f := ServerFiles{Cert: p.path(LocalProxyCert), Key: p.path(LocalProxyKey)}
	if mTLS {
		f.ClientCA = p.path(LocalCACert)
	}
	return f
}

// agentOptions trusts p's CA and, with cert, presents the agent certificate.
func (p localPKI) agentOptions(cert bool) ClientOptions {
	o := ClientOptions{Files: ClientFiles{RootCA: p.path(LocalCACert)}}
	if cert {
		o.Files.Cert, o.Files.Key = p.path(LocalAgentCert), p.path(LocalAgentKey)
	}
	return o
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// replaceFile swaps path's content atomically, as a careful operator (or
// cert-manager) would; non-atomic writes are covered by the broken-file test.
func replaceFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := writeFileAtomic(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func serialOf(t *testing.T, certPEM []byte) *big.Int {
	t.Helper()
	certs, err := parseCertPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0].SerialNumber
}

func mustServer(t *testing.T, f ServerFiles, refresh time.Duration, logger *slog.Logger) *tls.Config {
	t.Helper()
	cfg, err := Server(f, refresh, logger)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func mustClient(t *testing.T, o ClientOptions) *tls.Config {
	t.Helper()
	cfg, err := Client(o, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// result is the outcome of one handshake.
type result struct {
	client, server tls.ConnectionState
	err            error // client side: handshake or first read
	serverErr      error
}

// handshake connects cli to srv over loopback TCP. The server writes "ok"
// after its handshake and the client reads it, so a client certificate the
// server refuses after the client's TLS 1.3 handshake finished still fails
// on the client side.
func handshake(t *testing.T, srv, cli *tls.Config) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	var r result
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			r.serverErr = err
			return
		}
		defer c.Close()
		s := tls.Server(c, srv)
		if r.serverErr = s.HandshakeContext(ctx); r.serverErr != nil {
			return
		}
		r.server = s.ConnectionState()
		_, r.serverErr = s.Write([]byte("ok"))
	}()

	cli = cli.Clone()
	if cli.ServerName == "" {
		cli.ServerName = "localhost"
	}
	d := tls.Dialer{Config: cli}
	c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err == nil {
		tc := c.(*tls.Conn)
		r.client = tc.ConnectionState()
		_ = tc.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.ReadFull(tc, make([]byte, 2))
		tc.Close()
	}
	r.err = err
	<-done
	return r
}

func peerSerial(cs tls.ConnectionState) *big.Int {
	if len(cs.PeerCertificates) == 0 {
		return nil
	}
	return cs.PeerCertificates[0].SerialNumber
}

// eventually polls cond until it holds or a deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// syncBuffer collects log output written from handshake goroutines.
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

func TestServerAuth(t *testing.T) {
	p := newLocalPKI(t)
	srv := mustServer(t, p.serverFiles(false), 0, nil)
	if srv.MinVersion != tls.VersionTLS12 || srv.ClientAuth != tls.NoClientCert || srv.GetConfigForClient != nil {
		t.Fatalf("server config: MinVersion %x ClientAuth %v GetConfigForClient set %v", srv.MinVersion, srv.ClientAuth, srv.GetConfigForClient != nil)
	}
	r := handshake(t, srv, mustClient(t, p.agentOptions(false)))
	if r.err != nil || r.serverErr != nil {
		t.Fatalf("handshake: client %v, server %v", r.err, r.serverErr)
	}
	if got, want := peerSerial(r.client), serialOf(t, readFile(t, p.path(LocalProxyCert))); got.Cmp(want) != 0 {
		t.Fatalf("served serial %x, want %x", got, want)
	}
}

func TestWrongRootCA(t *testing.T) {
	p, other := newLocalPKI(t), newLocalPKI(t)
	r := handshake(t, mustServer(t, p.serverFiles(false), 0, nil), mustClient(t, other.agentOptions(false)))
	var unknown x509.UnknownAuthorityError
	if !errors.As(r.err, &unknown) {
		t.Fatalf("client error = %v, want x509.UnknownAuthorityError", r.err)
	}
}

func TestUseSystemPoolKeepsRootCA(t *testing.T) {
	p := newLocalPKI(t)
	o := p.agentOptions(false)
	o.UseSystemPool = true
	r := handshake(t, mustServer(t, p.serverFiles(false), 0, nil), mustClient(t, o))
	if r.err != nil {
		t.Fatal(r.err)
	}
}

func TestInsecureSkipVerify(t *testing.T) {
	p, other := newLocalPKI(t), newLocalPKI(t)
	o := other.agentOptions(false)
	o.InsecureSkipVerify = true
	if r := handshake(t, mustServer(t, p.serverFiles(false), 0, nil), mustClient(t, o)); r.err != nil {
		t.Fatal(r.err)
	}
}

func TestMutualTLS(t *testing.T) {
	p, other := newLocalPKI(t), newLocalPKI(t)
	for _, refresh := range []time.Duration{0, time.Hour} {
		srv := mustServer(t, p.serverFiles(true), refresh, nil)
		if srv.ClientAuth != tls.RequireAndVerifyClientCert || srv.ClientCAs == nil {
			t.Fatalf("ClientAuth = %v", srv.ClientAuth)
		}

		r := handshake(t, srv, mustClient(t, p.agentOptions(true)))
		if r.err != nil || r.serverErr != nil {
			t.Fatalf("refresh %v: with agent cert: client %v, server %v", refresh, r.err, r.serverErr)
		}
		if cn := r.server.PeerCertificates[0].Subject.CommonName; cn != "agent" {
			t.Fatalf("client CN %q", cn)
		}

		r = handshake(t, srv, mustClient(t, p.agentOptions(false)))
		if r.err == nil || r.serverErr == nil {
			t.Fatalf("refresh %v: without client cert: client %v, server %v; want both to fail", refresh, r.err, r.serverErr)
		}

		o := p.agentOptions(false)
		o.Files.Cert, o.Files.Key = other.path(LocalAgentCert), other.path(LocalAgentKey)
		r = handshake(t, srv, mustClient(t, o))
		var unknown x509.UnknownAuthorityError
		if !errors.As(r.serverErr, &unknown) {
			t.Fatalf("refresh %v: client cert of another CA: server error %v, want x509.UnknownAuthorityError", refresh, r.serverErr)
		}
	}
}

// The refresh path answers with a clone of the returned Config, so fields
// the caller sets on it (ALPN here) must survive.
func TestRefreshKeepsCallerFields(t *testing.T) {
	p := newLocalPKI(t)
	srv := mustServer(t, p.serverFiles(true), time.Millisecond, nil)
	srv.NextProtos = []string{"reverse-http"}
	srv.MinVersion = tls.VersionTLS13
	cli := mustClient(t, p.agentOptions(true))
	cli.NextProtos = []string{"reverse-http"}
	r := handshake(t, srv, cli)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.client.NegotiatedProtocol != "reverse-http" || r.client.Version != tls.VersionTLS13 {
		t.Fatalf("ALPN %q version %x", r.client.NegotiatedProtocol, r.client.Version)
	}
	cli.MaxVersion = tls.VersionTLS12
	if r := handshake(t, srv, cli); r.serverErr == nil {
		t.Fatal("TLS 1.2 client accepted by a server set to TLS 1.3")
	}
}

func TestClientCRL(t *testing.T) {
	p := newLocalPKI(t)
	agent := serialOf(t, readFile(t, p.path(LocalAgentCert)))
	crl, err := p.ca.RevocationList([]*big.Int{agent})
	if err != nil {
		t.Fatal(err)
	}
	crlPath := filepath.Join(p.dir, "crl.pem")
	replaceFile(t, crlPath, crl)

	// A second client certificate from the same CA, not revoked.
	cert2, key2, err := p.ca.Issue("agent-2", nil, true)
	if err != nil {
		t.Fatal(err)
	}
	replaceFile(t, filepath.Join(p.dir, "agent2.pem"), cert2)
	replaceFile(t, filepath.Join(p.dir, "agent2-key.pem"), key2)

	f := p.serverFiles(true)
	f.ClientCRL = crlPath
	srv := mustServer(t, f, 0, nil)

	r := handshake(t, srv, mustClient(t, p.agentOptions(true)))
	if r.err == nil || r.serverErr == nil || !strings.Contains(r.serverErr.Error(), "revoked") {
		t.Fatalf("revoked agent: client %v, server %v; want a revocation error", r.err, r.serverErr)
	}

	o := p.agentOptions(false)
	o.Files.Cert, o.Files.Key = filepath.Join(p.dir, "agent2.pem"), filepath.Join(p.dir, "agent2-key.pem")
	r = handshake(t, srv, mustClient(t, o))
	if r.err != nil || r.serverErr != nil {
		t.Fatalf("agent-2: client %v, server %v", r.err, r.serverErr)
	}
}

// A client whose certificate is revoked after it got a session ticket must
// not get back in by resuming.
func TestClientCRLOnResumption(t *testing.T) {
	p := newLocalPKI(t)
	crlPath := filepath.Join(p.dir, "crl.pem")
	empty, err := p.ca.RevocationList(nil)
	if err != nil {
		t.Fatal(err)
	}
	replaceFile(t, crlPath, empty)
	f := p.serverFiles(true)
	f.ClientCRL = crlPath
	srv := mustServer(t, f, time.Millisecond, nil)
	cli := mustClient(t, p.agentOptions(true))
	cli.ClientSessionCache = tls.NewLRUClientSessionCache(4)

	if r := handshake(t, srv, cli); r.err != nil {
		t.Fatal(r.err)
	}
	r := handshake(t, srv, cli)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !r.client.DidResume {
		t.Fatal("second handshake did not resume; ticket keys lost in GetConfigForClient?")
	}

	revoked, err := p.ca.RevocationList([]*big.Int{serialOf(t, readFile(t, p.path(LocalAgentCert)))})
	if err != nil {
		t.Fatal(err)
	}
	replaceFile(t, crlPath, revoked)
	eventually(t, "revocation to apply", func() bool {
		r := handshake(t, srv, cli)
		return r.serverErr != nil && strings.Contains(r.serverErr.Error(), "revoked")
	})
}

func TestRefreshServerCert(t *testing.T) {
	p := newLocalPKI(t)
	srv := mustServer(t, p.serverFiles(false), time.Millisecond, nil)
	cli := mustClient(t, p.agentOptions(false))
	old := peerSerial(handshake(t, srv, cli).client)

	certPEM, keyPEM, err := p.ca.Issue("proxy-2", []string{"localhost"}, false)
	if err != nil {
		t.Fatal(err)
	}
	want := serialOf(t, certPEM)
	replaceFile(t, p.path(LocalProxyKey), keyPEM)
	replaceFile(t, p.path(LocalProxyCert), certPEM)

	eventually(t, "the new certificate", func() bool {
		r := handshake(t, srv, cli)
		if r.err != nil {
			t.Fatal(r.err) // old or new, a handshake must always succeed
		}
		got := peerSerial(r.client)
		if got.Cmp(want) != 0 && got.Cmp(old) != 0 {
			t.Fatalf("served serial %x, neither old %x nor new %x", got, old, want)
		}
		return got.Cmp(want) == 0
	})
}

func TestRefreshZeroNeverRereads(t *testing.T) {
	p := newLocalPKI(t)
	srv := mustServer(t, p.serverFiles(false), 0, nil)
	replaceFile(t, p.path(LocalProxyCert), []byte("garbage"))
	if r := handshake(t, srv, mustClient(t, p.agentOptions(false))); r.err != nil {
		t.Fatal(r.err)
	}
}

func TestRefreshBrokenFileKeepsOldCert(t *testing.T) {
	p := newLocalPKI(t)
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	srv := mustServer(t, p.serverFiles(false), time.Millisecond, logger)
	cli := mustClient(t, p.agentOptions(false))
	old := peerSerial(handshake(t, srv, cli).client)

	certPath := p.path(LocalProxyCert)
	if err := os.WriteFile(certPath, []byte("-----BEGIN CERTIFICATE-----\ntruncated"), 0o644); err != nil {
		t.Fatal(err)
	}
	wantLog := "file=" + certPath
	eventually(t, "a reload failure in the log", func() bool {
		r := handshake(t, srv, cli)
		if r.err != nil {
			t.Fatalf("handshake during a broken reload: %v", r.err)
		}
		if got := peerSerial(r.client); got.Cmp(old) != 0 {
			t.Fatalf("served serial %x, want the old %x", got, old)
		}
		return strings.Contains(logs.String(), wantLog)
	})
	if l := logs.String(); !strings.Contains(l, "level=WARN") || !strings.Contains(l, "error=") {
		t.Fatalf("log: %s", l)
	}

	// Once the file is good again it is picked up.
	certPEM, keyPEM, err := p.ca.Issue("proxy-2", []string{"localhost"}, false)
	if err != nil {
		t.Fatal(err)
	}
	replaceFile(t, p.path(LocalProxyKey), keyPEM)
	replaceFile(t, certPath, certPEM)
	want := serialOf(t, certPEM)
	eventually(t, "recovery", func() bool { return peerSerial(handshake(t, srv, cli).client).Cmp(want) == 0 })
}

func TestRefreshClientCert(t *testing.T) {
	p := newLocalPKI(t)
	srv := mustServer(t, p.serverFiles(true), 0, nil)
	o := p.agentOptions(true)
	o.Refresh = time.Millisecond
	cli := mustClient(t, o)
	if r := handshake(t, srv, cli); r.err != nil {
		t.Fatal(r.err)
	}

	certPEM, keyPEM, err := p.ca.Issue("agent-2", nil, true)
	if err != nil {
		t.Fatal(err)
	}
	replaceFile(t, p.path(LocalAgentKey), keyPEM)
	replaceFile(t, p.path(LocalAgentCert), certPEM)
	want := serialOf(t, certPEM)
	eventually(t, "the new client certificate", func() bool {
		r := handshake(t, srv, cli)
		return r.serverErr == nil && peerSerial(r.server).Cmp(want) == 0
	})
}

func TestStartupErrors(t *testing.T) {
	p := newLocalPKI(t)
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.pem")
	garbage := filepath.Join(dir, "garbage.pem")
	replaceFile(t, garbage, []byte("not a PEM file\n"))
	encKey := filepath.Join(dir, "enc-key.pem")
	replaceFile(t, encKey, legacyEncryptedKey(t, readFile(t, p.path(LocalProxyKey)), "right"))
	otherCA, err := NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	foreignCRLPEM, err := otherCA.RevocationList(nil)
	if err != nil {
		t.Fatal(err)
	}
	foreignCRL := filepath.Join(dir, "foreign-crl.pem")
	replaceFile(t, foreignCRL, foreignCRLPEM)

	cert, key, ca := p.path(LocalProxyCert), p.path(LocalProxyKey), p.path(LocalCACert)
	tests := []struct {
		name    string
		server  *ServerFiles
		client  *ClientFiles
		setting setting // FileError.Setting; empty: a plain error
		path    string
		want    []string // substrings of the message
		is      error
	}{
		{name: "missing cert", server: &ServerFiles{Cert: missing, Key: key},
			setting: settingCert, path: missing, is: fs.ErrNotExist,
			want: []string{`tls.file.cert "` + missing + `": open ` + missing + `: no such file or directory`}},
		{name: "missing key", server: &ServerFiles{Cert: cert, Key: missing},
			setting: settingKey, path: missing, is: fs.ErrNotExist},
		{name: "no cert or key", server: &ServerFiles{},
			want: []string{"tls.file.cert and tls.file.key are required"}},
		{name: "cert without key", server: &ServerFiles{Cert: cert},
			want: []string{"tls.file.cert is set but tls.file.key is not"}},
		{name: "key without cert", server: &ServerFiles{Key: key},
			want: []string{"tls.file.key is set but tls.file.cert is not"}},
		{name: "garbage cert", server: &ServerFiles{Cert: garbage, Key: key},
			setting: settingCert, path: garbage, want: []string{"no CERTIFICATE PEM block"}},
		{name: "garbage key", server: &ServerFiles{Cert: cert, Key: garbage},
			setting: settingKey, path: garbage, want: []string{"no PRIVATE KEY PEM block"}},
		{name: "key not matching cert", server: &ServerFiles{Cert: cert, Key: p.path(LocalAgentKey)},
			setting: settingKey, path: p.path(LocalAgentKey), want: []string{"does not match", cert}},
		{name: "wrong key password", server: &ServerFiles{Cert: cert, Key: encKey, KeyPassword: "wrong"},
			setting: settingKey, path: encKey, is: x509.IncorrectPasswordError, want: []string{string(settingKeyPassword)}},
		{name: "encrypted key without password", server: &ServerFiles{Cert: cert, Key: encKey},
			setting: settingKey, path: encKey, want: []string{"encrypted", string(settingKeyPassword) + " is not set"}},
		{name: "missing client CA", server: &ServerFiles{Cert: cert, Key: key, ClientCA: missing},
			setting: settingClientCA, path: missing, is: fs.ErrNotExist},
		{name: "garbage client CA", server: &ServerFiles{Cert: cert, Key: key, ClientCA: garbage},
			setting: settingClientCA, path: garbage},
		{name: "CRL without client CA", server: &ServerFiles{Cert: cert, Key: key, ClientCRL: foreignCRL},
			want: []string{"tls.file.client-crl requires tls.file.client-ca"}},
		{name: "missing CRL", server: &ServerFiles{Cert: cert, Key: key, ClientCA: ca, ClientCRL: missing},
			setting: settingClientCRL, path: missing, is: fs.ErrNotExist},
		{name: "garbage CRL", server: &ServerFiles{Cert: cert, Key: key, ClientCA: ca, ClientCRL: garbage},
			setting: settingClientCRL, path: garbage, want: []string{"no X509 CRL PEM block"}},
		{name: "CRL of another CA", server: &ServerFiles{Cert: cert, Key: key, ClientCA: ca, ClientCRL: foreignCRL},
			setting: settingClientCRL, path: foreignCRL, want: []string{"not signed", ca}},

		{name: "client missing root CA", client: &ClientFiles{RootCA: missing},
			setting: settingRootCA, path: missing, is: fs.ErrNotExist},
		{name: "client garbage root CA", client: &ClientFiles{RootCA: garbage},
			setting: settingRootCA, path: garbage},
		{name: "client cert without key", client: &ClientFiles{Cert: cert},
			want: []string{"tls.file.cert is set but tls.file.key is not"}},
		{name: "client key without cert", client: &ClientFiles{Key: key},
			want: []string{"tls.file.key is set but tls.file.cert is not"}},
		{name: "client missing cert", client: &ClientFiles{Cert: missing, Key: key},
			setting: settingCert, path: missing, is: fs.ErrNotExist},
		{name: "client wrong key password", client: &ClientFiles{Cert: cert, Key: encKey, KeyPassword: "wrong"},
			setting: settingKey, path: encKey, is: x509.IncorrectPasswordError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			if tt.server != nil {
				_, err = Server(*tt.server, time.Minute, nil)
			} else {
				_, err = Client(ClientOptions{Files: *tt.client}, nil)
			}
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			if tt.setting != "" {
				var fe *FileError
				if !errors.As(err, &fe) || fe.Setting != string(tt.setting) || fe.Path != tt.path {
					t.Fatalf("error %q (%T) is not a FileError for %s %q", msg, err, tt.setting, tt.path)
				}
				if prefix := string(tt.setting) + ` "` + tt.path + `": `; !strings.HasPrefix(msg, prefix) {
					t.Fatalf("error %q does not start with %q", msg, prefix)
				}
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %q is not %v", msg, tt.is)
			}
		})
	}
}

// legacyEncryptedKey re-encodes a PKCS#8 EC key as an OpenSSL legacy
// encrypted "EC PRIVATE KEY" (Proc-Type: 4,ENCRYPTED).
func legacyEncryptedKey(t *testing.T, keyPEM []byte, password string) []byte {
	t.Helper()
	key, err := parseKeyPEM(keyPEM, "")
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(key.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	//nolint:staticcheck // SA1019: the legacy format is what is under test
	block, err := x509.EncryptPEMBlock(rand.Reader, "EC PRIVATE KEY", sec1, []byte(password), x509.PEMCipherAES256)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(block)
}

func TestEncryptedKey(t *testing.T) {
	p := newLocalPKI(t)
	keyPEM := readFile(t, p.path(LocalProxyKey))
	for name, enc := range map[string][]byte{
		"legacy": legacyEncryptedKey(t, keyPEM, "s3cret"),
		"pkcs8":  pkcs8EncryptedKey(t, keyPEM, "s3cret"),
	} {
		t.Run(name, func(t *testing.T) {
			encPath := filepath.Join(p.dir, name+"-key.pem")
			replaceFile(t, encPath, enc)

			f := p.serverFiles(true)
			f.Key, f.KeyPassword = encPath, "s3cret"
			srv := mustServer(t, f, 0, nil)

			o := p.agentOptions(false)
			o.Files.Cert, o.Files.Key, o.Files.KeyPassword = p.path(LocalProxyCert), encPath, "s3cret"
			// The proxy certificate is a server certificate; a client
			// certificate needs ExtKeyUsageClientAuth, so only check the
			// client config loads, and use the agent for the handshake.
			if _, err := Client(o, nil); err != nil {
				t.Fatal(err)
			}
			if r := handshake(t, srv, mustClient(t, p.agentOptions(true))); r.err != nil || r.serverErr != nil {
				t.Fatalf("client %v, server %v", r.err, r.serverErr)
			}
			f.KeyPassword = "wrong"
			if _, err := Server(f, 0, nil); !errors.Is(err, x509.IncorrectPasswordError) {
				t.Fatalf("wrong password: %v", err)
			}
		})
	}
}

// A password given for a key that is not encrypted is ignored, as in the
// reference.
func TestPasswordForPlainKey(t *testing.T) {
	p := newLocalPKI(t)
	f := p.serverFiles(false)
	f.KeyPassword = "unused"
	if _, err := Server(f, 0, nil); err != nil {
		t.Fatal(err)
	}
}

func TestSelfSigned(t *testing.T) {
	cert, fp, err := SelfSigned([]string{"localhost", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(fp) != 95 || strings.ToUpper(fp) != fp || strings.Count(fp, ":") != 31 {
		t.Fatalf("fingerprint %q is not colon-separated upper-case SHA-256 hex", fp)
	}
	leaf := cert.Leaf
	if leaf == nil || len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "localhost" || len(leaf.IPAddresses) != 1 {
		t.Fatalf("SANs: %v %v", leaf.DNSNames, leaf.IPAddresses)
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d < 364*24*time.Hour || d > 367*24*time.Hour {
		t.Fatalf("validity %v", d)
	}

	srv := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	// Verification against the system pool fails...
	if r := handshake(t, srv, mustClient(t, ClientOptions{})); r.err == nil {
		t.Fatal("self-signed certificate verified against the system pool")
	}
	// ...so clients skip it and pin the fingerprint.
	r := handshake(t, srv, mustClient(t, ClientOptions{InsecureSkipVerify: true}))
	if r.err != nil {
		t.Fatal(r.err)
	}
	if got := Fingerprint(r.client.PeerCertificates[0].Raw); got != fp {
		t.Fatalf("peer fingerprint %s, want %s", got, fp)
	}
}

func TestFingerprintFormat(t *testing.T) {
	// SHA-256 of the empty input.
	const want = "E3:B0:C4:42:98:FC:1C:14:9A:FB:F4:C8:99:6F:B9:24:27:AE:41:E4:64:9B:93:4C:A4:95:99:1B:78:52:B8:55"
	if got := Fingerprint(nil); got != want {
		t.Fatalf("Fingerprint(nil) = %s", got)
	}
}

func TestWriteLocalPKI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	hosts := []string{"localhost", "127.0.0.1"}
	written, err := WriteLocalPKI(dir, hosts, false)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{LocalCAKey, LocalCACert, LocalProxyKey, LocalProxyCert, LocalAgentKey, LocalAgentCert}
	if len(written) != len(names) {
		t.Fatalf("written %v", written)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode: %v %v", st.Mode(), err)
	}
	snapshot := map[string][]byte{}
	for i, n := range names {
		if written[i] != filepath.Join(dir, n) {
			t.Fatalf("written[%d] = %s, want %s", i, written[i], n)
		}
		st, err := os.Stat(written[i])
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o644)
		if strings.HasSuffix(n, "-key.pem") {
			want = 0o600
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", n, st.Mode().Perm(), want)
		}
		snapshot[n] = readFile(t, written[i])
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != len(names) {
		t.Fatalf("dir has %d entries (temporary files left?)", len(entries))
	}

	proxy, _ := parseCertPEM(snapshot[LocalProxyCert])
	if err := proxy[0].VerifyHostname("localhost"); err != nil {
		t.Fatal(err)
	}
	if err := proxy[0].VerifyHostname("127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	agent, _ := parseCertPEM(snapshot[LocalAgentCert])
	if agent[0].Subject.CommonName != "agent" || agent[0].ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Fatalf("agent cert: %v %v", agent[0].Subject, agent[0].ExtKeyUsage)
	}
	ca, _ := parseCertPEM(snapshot[LocalCACert])
	if !ca[0].IsCA || ca[0].KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Fatalf("CA cert: IsCA %v KeyUsage %v", ca[0].IsCA, ca[0].KeyUsage)
	}
	if d := ca[0].NotAfter.Sub(ca[0].NotBefore); d < 10*365*24*time.Hour {
		t.Fatalf("CA validity %v", d)
	}
	if proxy[0].SerialNumber.BitLen() < 64 {
		t.Fatalf("serial %x is not random", proxy[0].SerialNumber)
	}

	// Idempotent.
	written, err = WriteLocalPKI(dir, hosts, false)
	if err != nil || len(written) != 0 {
		t.Fatalf("second run wrote %v, %v", written, err)
	}
	for _, n := range names {
		if !bytes.Equal(readFile(t, filepath.Join(dir, n)), snapshot[n]) {
			t.Fatalf("%s changed on an idempotent run", n)
		}
	}

	// force rewrites everything.
	written, err = WriteLocalPKI(dir, hosts, true)
	if err != nil || len(written) != len(names) {
		t.Fatalf("force wrote %v, %v", written, err)
	}
	if bytes.Equal(readFile(t, filepath.Join(dir, LocalCACert)), snapshot[LocalCACert]) {
		t.Fatal("force kept the CA")
	}

	// Inconsistent or incomplete sets are replaced.
	for name, spoil := range map[string]func(){
		"foreign CA": func() {
			other, err := NewCA("other")
			if err != nil {
				t.Fatal(err)
			}
			replaceFile(t, filepath.Join(dir, LocalCACert), other.CertPEM)
		},
		"missing agent key": func() {
			if err := os.Remove(filepath.Join(dir, LocalAgentKey)); err != nil {
				t.Fatal(err)
			}
		},
		"garbage proxy cert": func() { replaceFile(t, filepath.Join(dir, LocalProxyCert), []byte("x")) },
	} {
		spoil()
		written, err := WriteLocalPKI(dir, hosts, false)
		if err != nil || len(written) != len(names) {
			t.Fatalf("%s: wrote %v, %v", name, written, err)
		}
		if w, _ := WriteLocalPKI(dir, hosts, false); len(w) != 0 {
			t.Fatalf("%s: not idempotent after repair", name)
		}
	}
}

func TestRevocationList(t *testing.T) {
	ca, err := NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	serials := []*big.Int{big.NewInt(7), big.NewInt(42)}
	crlPEM, err := ca.RevocationList(serials)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(crlPEM)
	if block == nil || block.Type != "X509 CRL" {
		t.Fatalf("CRL PEM: %q", crlPEM)
	}
	crls, err := parseCRLPEM(crlPEM)
	if err != nil {
		t.Fatal(err)
	}
	if err := crls[0].CheckSignatureFrom(ca.Cert); err != nil {
		t.Fatal(err)
	}
	if n := len(crls[0].RevokedCertificateEntries); n != 2 {
		t.Fatalf("%d entries", n)
	}
}
