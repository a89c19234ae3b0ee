package proxy_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/metrics"
	"github.com/reverse-http/reverse-http/internal/proxy"
	"github.com/reverse-http/reverse-http/internal/tlsconf"
	"github.com/reverse-http/reverse-http/internal/wire"
)

// mtlsPKI is a CA, a proxy certificate it issued and a pool that trusts it.
type mtlsPKI struct {
	ca    *tlsconf.CA
	pool  *x509.CertPool
	proxy tls.Certificate
}

func newMTLSPKI(t *testing.T) *mtlsPKI {
	t.Helper()
	ca, err := tlsconf.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	certPEM, keyPEM, err := ca.Issue("proxy", []string{"localhost", "127.0.0.1"}, false)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &mtlsPKI{ca: ca, pool: pool, proxy: kp}
}

// mustPair makes a key pair of what a tlsconf.CA issued.
func mustPair(certPEM, keyPEM []byte, err error) tls.Certificate {
	if err != nil {
		panic(err)
	}
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		panic(err)
	}
	return kp
}

// startBoundProxy runs a noauth proxy that requires client certificates of
// p's CA and binds agent IDs to them by mode.
func startBoundProxy(t *testing.T, p *mtlsPKI, mode string) (*proxy.Server, *metrics.Metrics, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	m := metrics.New()
	srv := proxy.New(proxy.Config{
		ListenAddr: "127.0.0.1:0",
		TLS: &tls.Config{
			Certificates: []tls.Certificate{p.proxy},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    p.pool,
		},
		Auth:            auth.NoAuth(),
		Metrics:         m,
		AgentIDFromCert: mode,
	}, slog.New(slog.NewTextHandler(logs, nil)))
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("proxy Run: %v", err)
		}
		if t.Failed() {
			t.Logf("proxy log:\n%s", logs.String())
		}
	})
	return srv, m, logs
}

// authWithCert connects to srv with cert, authenticates as id and returns
// the proxy's refusal, or nil if it answered "authenticated".
func authWithCert(t *testing.T, srv *proxy.Server, p *mtlsPKI, cert tls.Certificate, id string) *quic.ApplicationError {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := quic.DialAddr(ctx, srv.Addr().String(), &tls.Config{
		RootCAs: p.pool, ServerName: "localhost", Certificates: []tls.Certificate{cert}, NextProtos: []string{wire.ALPN},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := wire.WriteMessage(s, id); err != nil {
		t.Fatal(err)
	}
	msg, err := wire.ReadMessage(s)
	var appErr *quic.ApplicationError
	switch {
	case err == nil && msg == wire.AuthOK:
		return nil
	case errors.As(err, &appErr) && appErr.Remote:
		return appErr
	default:
		t.Fatalf("auth answer %q, %v", msg, err)
		return nil
	}
}

func TestAgentIDFromCert(t *testing.T) {
	p := newMTLSPKI(t)
	agentA1 := mustPair(p.ca.IssueAgent("a1"))                                  // CN a1, URI urn:reverse-http:agent:a1
	slashed := mustPair(p.ca.IssueAgent("site/7 ü"))                            // percent-encoded URI SAN
	dnsOnly := mustPair(p.ca.Issue("other-cn", []string{"edge.example"}, true)) // CN other-cn, DNS edge.example
	cnOnly := mustPair(p.ca.Issue("a1", nil, true))                             // CN a1, no SAN

	tests := []struct {
		mode, name string
		cert       tls.Certificate
		id         string
		refused    []string // parts of the reason; nil: accepted
	}{
		{"cn", "matching CN", agentA1, "a1", nil},
		{"cn", "CN without SAN", cnOnly, "a1", nil},
		{"cn", "other ID", agentA1, "a2", []string{`the proxy requires the agent ID to match the client certificate's CN: certificate CN is "a1", agent ID is "a2"`}},
		{"cn", "DNS SAN is not the CN", dnsOnly, "edge.example", []string{`certificate CN is "other-cn"`}},
		{"san", "matching URI SAN", agentA1, "a1", nil},
		{"san", "matching percent-encoded URI SAN", slashed, "site/7 ü", nil},
		{"san", "matching DNS SAN", dnsOnly, "edge.example", nil},
		{"san", "other ID", agentA1, "a2", []string{`agent ID is "a2"`, `URI:"urn:reverse-http:agent:a1"`}},
		{"san", "encoded form is not the ID", slashed, "site%2F7", []string{`agent ID is "site%2F7"`}},
		{"san", "CN is not a SAN", cnOnly, "a1", []string{`agent ID is "a1"`, "certificate SANs are none"}},
		{"san", "DNS SAN of another ID", dnsOnly, "other-cn", []string{`DNS:"edge.example"`}},
	}
	for _, mode := range []string{"cn", "san"} {
		t.Run(mode, func(t *testing.T) {
			srv, m, logs := startBoundProxy(t, p, mode)
			failed := 0
			for _, tc := range tests {
				if tc.mode != mode {
					continue
				}
				refusal := authWithCert(t, srv, p, tc.cert, tc.id)
				if tc.refused == nil {
					if refusal != nil {
						t.Errorf("%s: refused: %v", tc.name, refusal)
					}
					continue
				}
				failed++
				if refusal == nil {
					t.Errorf("%s: agent %q accepted", tc.name, tc.id)
					continue
				}
				if refusal.ErrorCode != wire.CodeAuthFailed {
					t.Errorf("%s: code %#x, want %#x", tc.name, refusal.ErrorCode, wire.CodeAuthFailed)
				}
				for _, want := range tc.refused {
					if !strings.Contains(refusal.ErrorMessage, want) {
						t.Errorf("%s: reason %q does not contain %q", tc.name, refusal.ErrorMessage, want)
					}
				}
				if srv.Connected(tc.id) {
					t.Errorf("%s: refused agent %q registered", tc.name, tc.id)
				}
			}
			waitFor(t, "auth_failed count", func() bool {
				var c dto.Metric
				m.AgentConnections.WithLabelValues("auth_failed").Write(&c)
				return c.GetCounter().GetValue() == float64(failed)
			})
			if n := strings.Count(logs.String(), "agent refused: its ID does not match its client certificate"); n != failed {
				t.Errorf("logged %d refusals, want %d:\n%s", n, failed, logs)
			}
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, "agent refused") && !(strings.Contains(l, "agent=") && strings.Contains(l, "remote=127.0.0.1:") && strings.Contains(l, "reason=")) {
					t.Errorf("refusal log line lacks agent, remote or reason: %s", l)
				}
			}
		})
	}
}

// TestAgentIDFromCertOffByDefault: without AgentIDFromCert any verified
// certificate may authenticate as any ID.
func TestAgentIDFromCertOffByDefault(t *testing.T) {
	p := newMTLSPKI(t)
	srv, _, _ := startBoundProxy(t, p, "")
	if refusal := authWithCert(t, srv, p, mustPair(p.ca.IssueAgent("a1")), "a2"); refusal != nil {
		t.Fatalf("refused without binding: %v", refusal)
	}
}
