package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reverse-http/reverse-http/internal/wire"
)

// fakeAgent is an agent written in the test on quic-go and internal/wire.
// It authenticates, then accepts every tunnel the proxy opens and never
// answers it: the proxy's dial timeout is all that ends the wait.
type fakeAgent struct {
	conn    *quic.Conn
	mu      sync.Mutex
	streams []*quic.Stream
	ended   int // streams the proxy ended (FIN or reset)
	done    chan struct{}
}

// dialQUIC opens a QUIC connection to p's agent server as an agent would,
// trusting the local CA.
func dialQUIC(t testing.TB, p *proxyProc) *quic.Conn {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(certDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatal("ca.pem: no certificate")
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	conn, err := quic.DialAddr(ctx, p.agentAddr, &tls.Config{
		RootCAs:    roots,
		NextProtos: []string{wire.ALPN},
		MinVersion: tls.VersionTLS13,
	}, &quic.Config{
		KeepAlivePeriod:    time.Second,
		MaxIdleTimeout:     30 * time.Second,
		MaxIncomingStreams: 1000,
	})
	if err != nil {
		t.Fatalf("fake agent: dial %s: %v", p.agentAddr, err)
	}
	return conn
}

// sendAuth writes raw bytes on a new auth stream of conn, closes the
// stream's write side and reads the proxy's answer.
func sendAuth(conn *quic.Conn, raw []byte) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	stream, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return "", err
	}
	stream.SetDeadline(time.Now().Add(startTimeout))
	if _, err := stream.Write(raw); err != nil {
		return "", err
	}
	stream.Close()
	return wire.ReadMessage(stream)
}

// dialFakeAgent connects to p's agent server and authenticates with
// credential. It returns the proxy's answer or the error that ended the
// exchange; the agent is nil then.
func dialFakeAgent(t testing.TB, p *proxyProc, credential string) (*fakeAgent, string, error) {
	t.Helper()
	conn := dialQUIC(t, p)
	var msg bytes.Buffer
	if err := wire.WriteMessage(&msg, credential); err != nil {
		t.Fatal(err)
	}
	answer, err := sendAuth(conn, msg.Bytes())
	if err != nil {
		conn.CloseWithError(0, "")
		return nil, "", err
	}
	a := &fakeAgent{conn: conn, done: make(chan struct{})}
	go a.acceptSilently()
	t.Cleanup(a.close)
	return a, answer, nil
}

// startSilentAgent connects a fake agent as id (noauth) and waits until
// the proxy has registered it.
func startSilentAgent(t testing.TB, p *proxyProc, id string) *fakeAgent {
	t.Helper()
	before := p.count("agent connected", "agent", id)
	a, answer, err := dialFakeAgent(t, p, id)
	if err != nil {
		t.Fatalf("fake agent %s: authenticate: %v", id, err)
	}
	if answer != wire.AuthOK {
		t.Fatalf("fake agent %s: proxy answered %q, want %q", id, answer, wire.AuthOK)
	}
	p.waitLog(t, startTimeout, before+1, "agent connected", "agent", id)
	return a
}

func (a *fakeAgent) acceptSilently() {
	defer close(a.done)
	for {
		s, err := a.conn.AcceptStream(context.Background())
		if err != nil {
			return
		}
		a.mu.Lock()
		a.streams = append(a.streams, s) // held, never answered
		a.mu.Unlock()
		go func() {
			io.Copy(io.Discard, s) // until the proxy gives up on it
			a.mu.Lock()
			a.ended++
			a.mu.Unlock()
		}()
	}
}

// endedStreams is how many of the tunnels the proxy has ended since.
func (a *fakeAgent) endedStreams() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ended
}

// accepted is how many tunnels the proxy opened to this agent.
func (a *fakeAgent) accepted() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.streams)
}

func (a *fakeAgent) close() {
	a.conn.CloseWithError(wire.CodeNoError, "test over")
	<-a.done
}
