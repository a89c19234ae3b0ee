package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// h2Run measures what a new tunnel costs on the proxy's TLS port
// (--http-proxy.tls.enable) over HTTP/2, as a new stream of one kept TLS
// connection, against HTTP/1.1 with a fresh TLS connection per tunnel (what
// an HTTPS-proxy client without HTTP/2 does). Each sample is CONNECT + GET
// /small + close, alternating between the two like the latency phase.
func h2Run(ctx context.Context, b *bench, r *runRecorder) error {
	tlsConf, err := b.proxyClientTLS()
	if err != nil {
		return err
	}
	h1 := func(ctx context.Context, httpAddr string) (*httpConn, error) {
		return dialTLSTunnel(ctx, httpAddr, tlsConf, b.origin.http)
	}
	p, err := b.startPairWith(ctx, h1, "--http-proxy.tls.enable",
		"--http-proxy.tls.file.cert="+filepath.Join(b.certs, "proxy.pem"),
		"--http-proxy.tls.file.key="+filepath.Join(b.certs, "proxy-key.pem"))
	if err != nil {
		return err
	}
	defer p.stop()
	h2 := newH2Dialer(p.httpAddr, tlsConf)
	defer h2.close()
	stream := func(ctx context.Context) (*httpConn, error) { return h2.tunnel(ctx, b.origin.http) }
	fresh := func(ctx context.Context) (*httpConn, error) { return h1(ctx, p.httpAddr) }
	cost := p.startCost()
	lat, err := newConnLatency(ctx, b.cfg.LatencyN, stream, fresh)
	if err != nil {
		return fmt.Errorf("new tunnels over TLS: %w", err)
	}
	cost.record(r, "h2.pair", "h2 stream + fresh TLS connection (one of each)", len(lat[0])+warmups)
	r.latency("h2.new", "TLS proxy, new HTTP/2 stream: CONNECT + GET /small + close", lat[0])
	r.latency("h2.fresh", "TLS proxy, fresh TLS connection, HTTP/1.1: same", lat[1])
	if n := h2.dials; n != 1 {
		return fmt.Errorf("the HTTP/2 client made %d TLS connections, want 1", n)
	}
	return nil
}

// proxyClientTLS trusts the CA of `reverse-http certs`.
func (b *bench) proxyClientTLS() (*tls.Config, error) {
	pem, err := os.ReadFile(filepath.Join(b.certs, "ca.pem"))
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no certificate in %s", filepath.Join(b.certs, "ca.pem"))
	}
	return &tls.Config{RootCAs: roots, ServerName: "localhost"}, nil
}

// dialTLSTunnel opens a CONNECT tunnel over a new TLS connection to the
// proxy, speaking HTTP/1.1 (ALPN http/1.1).
func dialTLSTunnel(ctx context.Context, proxyAddr string, conf *tls.Config, target string) (*httpConn, error) {
	conf = conf.Clone()
	conf.NextProtos = []string{"http/1.1"}
	d := tls.Dialer{Config: conf}
	raw, err := d.DialContext(ctx, "tcp", proxyAddr)
	if err != nil {
		return nil, err
	}
	c := newHTTPConn(ctx, raw)
	auth := base64.StdEncoding.EncodeToString([]byte(agentID + ":noauth"))
	if _, err := io.WriteString(c, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\nProxy-Authorization: Basic "+auth+"\r\n\r\n"); err != nil {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: %w", target, err)
	}
	resp, err := http.ReadResponse(c.br, connectReq)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: %w", target, err)
	}
	if resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: %s", target, resp.Status)
	}
	return c, nil
}

// h2Dialer opens tunnels as streams of one HTTP/2 connection to the proxy,
// with Go's client.
type h2Dialer struct {
	proxy string
	tr    *http.Transport
	dials int // one goroutine dials at a time: samples are sequential
}

func newH2Dialer(proxy string, conf *tls.Config) *h2Dialer {
	d := &h2Dialer{proxy: proxy}
	var protos http.Protocols
	protos.SetHTTP2(true)
	d.tr = &http.Transport{
		Protocols: &protos,
		HTTP2:     &http.HTTP2Config{StrictMaxConcurrentRequests: true},
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			d.dials++
			c := conf.Clone()
			c.NextProtos = []string{"h2"}
			td := tls.Dialer{Config: c}
			return td.DialContext(ctx, network, addr)
		},
	}
	return d
}

func (d *h2Dialer) close() { d.tr.CloseIdleConnections() }

// tunnel opens a CONNECT stream to target; closing the returned httpConn
// ends the stream (END_STREAM, then RST_STREAM(CANCEL) if the proxy has
// not ended it).
func (d *h2Dialer) tunnel(ctx context.Context, target string) (*httpConn, error) {
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(ctx, http.MethodConnect, "https://"+d.proxy, pr)
	if err != nil {
		return nil, err
	}
	req.Host = target
	req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(agentID+":noauth")))
	resp, err := d.tr.RoundTrip(req)
	if err != nil {
		pw.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		pw.Close()
		return nil, fmt.Errorf("CONNECT %s over %s: %s: %s", target, resp.Proto, resp.Status, strings.TrimSpace(string(body)))
	}
	return newHTTPConn(ctx, &streamConn{body: resp.Body, pw: pw}), nil
}

// streamConn is an HTTP/2 CONNECT stream as a net.Conn: reads from the
// response body, writes to the request body.
type streamConn struct {
	body io.ReadCloser
	pw   *io.PipeWriter
}

func (s *streamConn) Read(p []byte) (int, error)  { return s.body.Read(p) }
func (s *streamConn) Write(p []byte) (int, error) { return s.pw.Write(p) }
func (s *streamConn) Close() error {
	s.pw.Close()
	return s.body.Close()
}
func (s *streamConn) LocalAddr() net.Addr                { return &net.TCPAddr{} }
func (s *streamConn) RemoteAddr() net.Addr               { return &net.TCPAddr{} }
func (s *streamConn) SetDeadline(t time.Time) error      { return nil }
func (s *streamConn) SetReadDeadline(t time.Time) error  { return nil }
func (s *streamConn) SetWriteDeadline(t time.Time) error { return nil }
