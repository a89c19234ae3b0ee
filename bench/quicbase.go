package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// The raw QUIC baseline: one quic-go connection between two helper
// processes, this binary re-executed as `rh-bench quic-server` and
// `rh-bench quic-client`, so that the CPU time of each end can be read
// like that of the proxy and the agent. TLS and QUIC are set up as on the
// agent connection: TLS 1.3, the proxy certificate from `reverse-http
// certs` verified against its CA, the proxy's quic.Config on the server
// and the agent's on the client. The client is the agent's side, so data
// the client sends travels as a tunnel's download does (agent to proxy).
//
// Each stream begins with a 9-byte request from the client:
//
//	+-------------+--------------------+
//	| op (1 byte) | n (uint64, BE)     |
//	+-------------+--------------------+
//
// op 'r': the client sends n bytes and its FIN; the server reads them to
// the end and answers the count it read (uint64, BE).
// op 's': the server sends n bytes and its FIN.
//
// The server prints "addr HOST:PORT" on stdout. The client prints "ready"
// once connected, then reads commands on stdin, one a line:
//
//	send N K   K streams at once, each sending N/K bytes to the server
//	recv N K   K streams at once, each receiving N/K bytes from the server
//
// and answers each with "ok NANOSECONDS" or "err MESSAGE".

const quicBenchALPN = "rh-bench"

// Like internal/proxy and internal/agent with their CLI defaults.
func serverQUICConfig() *quic.Config {
	return &quic.Config{
		MaxIdleTimeout:        15 * time.Second,
		HandshakeIdleTimeout:  10 * time.Second,
		MaxIncomingStreams:    100,
		MaxIncomingUniStreams: -1,
	}
}

// agentKeepAlive and agentIdleTimeout are the load generator's (and the raw
// QUIC client's) agent settings; -agent-keepalive and -agent-idle-timeout.
var (
	agentKeepAlive   = 2 * time.Second
	agentIdleTimeout = 6 * time.Second
)

func clientQUICConfig() *quic.Config {
	return &quic.Config{
		KeepAlivePeriod:       agentKeepAlive,
		MaxIdleTimeout:        agentIdleTimeout,
		HandshakeIdleTimeout:  10 * time.Second,
		MaxIncomingStreams:    100_000,
		MaxIncomingUniStreams: -1,
	}
}

// clientTLS verifies the proxy certificate against the CA in certs.
func clientTLS(certs, alpn string) (*tls.Config, error) {
	pem, err := os.ReadFile(filepath.Join(certs, "ca.pem"))
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no certificate", filepath.Join(certs, "ca.pem"))
	}
	return &tls.Config{
		RootCAs:    roots,
		ServerName: "127.0.0.1",
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{alpn},
	}, nil
}

func quicServerMain(args []string) error {
	fs := flag.NewFlagSet("quic-server", flag.ContinueOnError)
	certs := fs.String("certs", "", "directory of `reverse-http certs`")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(*certs, "proxy.pem"), filepath.Join(*certs, "proxy-key.pem"))
	if err != nil {
		return err
	}
	tlsConf := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{quicBenchALPN},
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	tr := &quic.Transport{Conn: udp}
	ln, err := tr.Listen(tlsConf, serverQUICConfig())
	if err != nil {
		return err
	}
	fmt.Printf("addr %s\n", ln.Addr())
	go exitWithStdin()
	ctx := context.Background()
	for {
		conn, err := ln.Accept(ctx)
		if err != nil {
			return err
		}
		go func() {
			for {
				s, err := conn.AcceptStream(ctx)
				if err != nil {
					return
				}
				go serveQUICStream(s)
			}
		}()
	}
}

func serveQUICStream(s *quic.Stream) {
	var hdr [9]byte
	if _, err := io.ReadFull(s, hdr[:]); err != nil {
		s.CancelRead(1)
		s.CancelWrite(1)
		return
	}
	n := int64(binary.BigEndian.Uint64(hdr[1:]))
	buf := make([]byte, chunk)
	switch hdr[0] {
	case 'r':
		got, err := discard(s, buf)
		if err != nil {
			s.CancelWrite(1)
			return
		}
		binary.BigEndian.PutUint64(hdr[:8], uint64(got))
		s.Write(hdr[:8])
	case 's':
		if _, err := writeZeros(s, n, buf); err != nil {
			s.CancelRead(1)
			return
		}
	case 'e':
		echo(s, buf)
	}
	s.Close()
}

func quicClientMain(args []string) error {
	fs := flag.NewFlagSet("quic-client", flag.ContinueOnError)
	server := fs.String("server", "", "the quic-server's address")
	certs := fs.String("certs", "", "directory of `reverse-http certs`")
	if err := fs.Parse(args); err != nil {
		return err
	}
	tlsConf, err := clientTLS(*certs, quicBenchALPN)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	conn, err := quic.DialAddr(ctx, *server, tlsConf, clientQUICConfig())
	cancel()
	if err != nil {
		return err
	}
	defer conn.CloseWithError(0, "")
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var (
			op   string
			n    int64
			k    int
			took time.Duration
		)
		_, err := fmt.Sscan(sc.Text(), &op, &n, &k)
		if err == nil && op == "ping" {
			var lat []time.Duration
			if lat, err = quicPing(conn, int(n)); err == nil {
				fmt.Printf("ok%s\n", formatDurations(lat))
				continue
			}
		}
		if err == nil {
			took, err = quicTransfer(conn, op, n, k)
		}
		if err != nil {
			fmt.Printf("err %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
			continue
		}
		fmt.Printf("ok %d\n", took.Nanoseconds())
	}
	return sc.Err()
}

// quicPing measures n round trips of 16 bytes on a new stream that the
// server echoes.
func quicPing(conn *quic.Conn, n int) ([]time.Duration, error) {
	s, err := conn.OpenStreamSync(conn.Context())
	if err != nil {
		return nil, err
	}
	defer s.CancelRead(0)
	defer s.Close()
	if _, err := s.Write([]byte{'e', 0, 0, 0, 0, 0, 0, 0, 0}); err != nil {
		return nil, err
	}
	return pingPong(s, n)
}

// formatDurations formats lat as " NS NS ...", parseDurations' input.
func formatDurations(lat []time.Duration) string {
	var b strings.Builder
	for _, d := range lat {
		fmt.Fprintf(&b, " %d", d.Nanoseconds())
	}
	return b.String()
}

func parseDurations(s string) ([]time.Duration, error) {
	var lat []time.Duration
	for f := range strings.FieldsSeq(s) {
		ns, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("unexpected answer %q", s)
		}
		lat = append(lat, time.Duration(ns))
	}
	return lat, nil
}

// quicTransfer runs one send or recv command on conn.
func quicTransfer(conn *quic.Conn, op string, n int64, k int) (time.Duration, error) {
	if k < 1 || n < int64(k) || (op != "send" && op != "recv") {
		return 0, fmt.Errorf("bad command %s %d %d", op, n, k)
	}
	ctx := conn.Context()
	streams := make([]*quic.Stream, k)
	for i := range streams {
		s, err := conn.OpenStreamSync(ctx)
		if err != nil {
			return 0, err
		}
		streams[i] = s
	}
	each := n / int64(k)
	start := time.Now()
	errs := make([]error, k)
	var wg sync.WaitGroup
	for i, s := range streams {
		wg.Go(func() { errs[i] = quicStream(s, op, each) })
	}
	wg.Wait()
	return time.Since(start), errors.Join(errs...)
}

func quicStream(s *quic.Stream, op string, n int64) error {
	var hdr [9]byte
	binary.BigEndian.PutUint64(hdr[1:], uint64(n))
	buf := make([]byte, chunk)
	if op == "recv" {
		hdr[0] = 's'
		if _, err := s.Write(hdr[:]); err != nil {
			return err
		}
		s.Close()
		got, err := discard(s, buf)
		if err == nil && got != n {
			err = fmt.Errorf("received %d bytes, want %d", got, n)
		}
		return err
	}
	hdr[0] = 'r'
	if _, err := s.Write(hdr[:]); err != nil {
		return err
	}
	if _, err := writeZeros(s, n, buf); err != nil {
		return err
	}
	s.Close()
	if _, err := io.ReadFull(s, hdr[:8]); err != nil {
		return fmt.Errorf("read the server's count: %w", err)
	}
	if got := int64(binary.BigEndian.Uint64(hdr[:8])); got != n {
		return fmt.Errorf("server received %d bytes, want %d", got, n)
	}
	return nil
}

// quicPair is a running quic-server and a quic-client connected to it.
type quicPair struct {
	server, client *proc
}

func (q *quicPair) pids() []int { return []int{q.server.pid, q.client.pid} }

func (q *quicPair) stop() {
	q.client.stop(5 * time.Second)
	q.server.stop(5 * time.Second)
}

func (b *bench) startQUICPair(ctx context.Context) (*quicPair, error) {
	server, err := b.procs.start("quic-server", true, strings.Fields(b.cfg.Env), b.self, "quic-server", "-certs", b.certs)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	line, err := server.readLine(rctx)
	addr, ok := strings.CutPrefix(line, "addr ")
	if err != nil || !ok {
		server.stop(time.Second)
		return nil, fmt.Errorf("quic-server: %q, %v", line, err)
	}
	client, err := b.procs.start("quic-client", true, strings.Fields(b.cfg.Env), b.self, "quic-client", "-server", addr, "-certs", b.certs)
	if err != nil {
		server.stop(time.Second)
		return nil, err
	}
	q := &quicPair{server: server, client: client}
	if line, err := client.readLine(rctx); err != nil || line != "ready" {
		q.stop()
		return nil, fmt.Errorf("quic-client: %q, %v", line, err)
	}
	return q, nil
}

// do runs one command on the client ("send" or "recv" n bytes over k
// streams) and returns how long the transfer took.
func (q *quicPair) do(ctx context.Context, op string, n int64, k int) (time.Duration, error) {
	if err := q.client.writeLine(fmt.Sprintf("%s %d %d", op, n, k)); err != nil {
		return 0, fmt.Errorf("quic-client: %w", err)
	}
	line, err := q.client.readLine(ctx)
	if err != nil {
		return 0, fmt.Errorf("quic-client: %w", err)
	}
	if msg, ok := strings.CutPrefix(line, "err "); ok {
		return 0, fmt.Errorf("quic-client %s %d %d: %s", op, n, k, msg)
	}
	ns, err := strconv.ParseInt(strings.TrimPrefix(line, "ok "), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("quic-client: unexpected answer %q", line)
	}
	return time.Duration(ns), nil
}

// ping measures n round trips of 16 bytes on a new stream.
func (q *quicPair) ping(ctx context.Context, n int) ([]time.Duration, error) {
	if err := q.client.writeLine(fmt.Sprintf("ping %d 1", n)); err != nil {
		return nil, fmt.Errorf("quic-client: %w", err)
	}
	line, err := q.client.readLine(ctx)
	if err != nil {
		return nil, fmt.Errorf("quic-client: %w", err)
	}
	if msg, ok := strings.CutPrefix(line, "err "); ok {
		return nil, fmt.Errorf("quic-client ping: %s", msg)
	}
	return parseDurations(strings.TrimPrefix(line, "ok"))
}
