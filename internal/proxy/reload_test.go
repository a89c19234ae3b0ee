package proxy_test

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/proxy"
	"github.com/reverse-http/reverse-http/internal/tlsconf"
	"github.com/reverse-http/reverse-http/internal/wire"
)

func agentToken(t *testing.T, key crypto.Signer, id string) string {
	t.Helper()
	s, err := auth.Sign(key, auth.TokenOptions{AgentID: id, Role: auth.RoleAgent, Duration: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// authAnswer authenticates with cred by hand and returns the proxy's
// answer: nil for accepted, else its error.
func authAnswer(t *testing.T, addr, cred string) error {
	t.Helper()
	conn, err := quic.DialAddr(context.Background(), addr,
		&tls.Config{InsecureSkipVerify: true, NextProtos: []string{wire.ALPN}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	s, err := conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := wire.WriteMessage(s, cred); err != nil {
		t.Fatal(err)
	}
	_, err = wire.ReadMessage(s)
	return err
}

// SetAuth with a new JWT key: agents that authenticate from then on need
// a token of the new key; an agent connected with the old one stays.
func TestSetAuthRotatesAgentKey(t *testing.T) {
	oldPub, oldKey := keys(t)
	newPub, newKey := keys(t)
	srv := startProxy(t, auth.JWT(auth.NewVerifier(oldPub, "")))
	connected := dialAgent(t, srv.Addr().String(), agentToken(t, oldKey, "old"))

	srv.SetAuth(auth.JWT(auth.NewVerifier(newPub, "")))
	var appErr *quic.ApplicationError
	if err := authAnswer(t, srv.Addr().String(), agentToken(t, oldKey, "again")); !errors.As(err, &appErr) || appErr.ErrorCode != wire.CodeAuthFailed {
		t.Fatalf("token of the old key after the swap: %v, want application error %#x", err, wire.CodeAuthFailed)
	}
	dialAgent(t, srv.Addr().String(), agentToken(t, newKey, "new"))
	if !srv.Connected("old") || !srv.Connected("new") {
		t.Fatalf("connected: old %v, new %v; want both", srv.Connected("old"), srv.Connected("new"))
	}
	if err := context.Cause(connected.Context()); err != nil {
		t.Fatalf("agent of the old key disconnected: %v", err)
	}
}

// The agent server keeps its ALPN and TLS 1.3 on a configuration whose
// certificates can be reloaded (answered through GetConfigForClient), and
// serves the reloaded certificate.
func TestAgentServerReloadableTLS(t *testing.T) {
	dir := t.TempDir()
	if _, err := tlsconf.WriteLocalPKI(dir, []string{"localhost", "127.0.0.1"}, false); err != nil {
		t.Fatal(err)
	}
	files := tlsconf.ServerFiles{Cert: filepath.Join(dir, tlsconf.LocalProxyCert), Key: filepath.Join(dir, tlsconf.LocalProxyKey)}
	r, err := tlsconf.NewServer(files, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := proxy.New(proxy.Config{ListenAddr: "127.0.0.1:0", TLS: r.Config(), Auth: auth.NoAuth()}, testLogger(t))
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() { cancel(); <-done }()

	serial := func() string {
		conn := dialAgent(t, srv.Addr().String(), "4711")
		defer conn.CloseWithError(0, "")
		st := conn.ConnectionState().TLS
		if st.NegotiatedProtocol != wire.ALPN || st.Version != tls.VersionTLS13 {
			t.Fatalf("ALPN %q, version %x", st.NegotiatedProtocol, st.Version)
		}
		return st.PeerCertificates[0].SerialNumber.String()
	}
	before := serial()
	ca, err := tlsconf.NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue("proxy-2", []string{"localhost"}, false)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, files.Key, keyPEM)
	writeFile(t, files.Cert, certPEM)
	if _, err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	if after := serial(); after == before {
		t.Fatalf("serial %s after the reload, want a new one", after)
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
