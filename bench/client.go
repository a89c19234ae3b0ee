package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// httpConn is a client's connection to the origin, direct or through a
// CONNECT tunnel, speaking HTTP/1.1 by hand so that both paths cost the
// client the same.
type httpConn struct {
	net.Conn
	br   *bufio.Reader // reads ahead; read through it
	stop func() bool   // stops the watch on ctx
}

// newHTTPConn wraps c; when ctx ends, c's reads and writes fail at once.
func newHTTPConn(ctx context.Context, c net.Conn) *httpConn {
	if deadline, ok := ctx.Deadline(); ok {
		c.SetDeadline(deadline)
	}
	return &httpConn{
		Conn: c,
		br:   bufio.NewReader(c),
		stop: context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) }),
	}
}

func (h *httpConn) Read(p []byte) (int, error) { return h.br.Read(p) }

func (h *httpConn) Close() error {
	h.stop()
	return h.Conn.Close()
}

// dialDirect connects to addr.
func dialDirect(ctx context.Context, addr string) (*httpConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return newHTTPConn(ctx, c), nil
}

// connectReq makes http.ReadResponse read a CONNECT answer: a 200 has no body.
var connectReq = &http.Request{Method: http.MethodConnect}

// dialTunnel opens a CONNECT tunnel to target through the proxy at
// proxyAddr and the agent agentID (noauth: any password).
func dialTunnel(ctx context.Context, proxyAddr, agentID, target string) (*httpConn, error) {
	c, err := dialDirect(ctx, proxyAddr)
	if err != nil {
		return nil, err
	}
	auth := base64.StdEncoding.EncodeToString([]byte(agentID + ":noauth"))
	_, err = io.WriteString(c, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\nProxy-Authorization: Basic "+auth+"\r\n\r\n")
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: %w", target, err)
	}
	resp, err := http.ReadResponse(c.br, connectReq)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: %w", target, err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: %s: %s", target, resp.Status, strings.TrimSpace(string(body)))
	}
	return c, nil
}

// get sends GET path and reads the whole answer into buf, which should be
// large (a body read with a buffer at least as large as the bufio.Reader's
// bypasses it). It returns the body's length.
func (h *httpConn) get(path string, buf []byte) (int64, error) {
	if _, err := io.WriteString(h, "GET "+path+" HTTP/1.1\r\nHost: origin\r\n\r\n"); err != nil {
		return 0, fmt.Errorf("GET %s: %w", path, err)
	}
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", path, err)
	}
	n, err := discard(resp.Body, buf)
	resp.Body.Close()
	if err != nil {
		return n, fmt.Errorf("GET %s: body after %d bytes: %w", path, n, err)
	}
	if resp.StatusCode != http.StatusOK {
		return n, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return n, nil
}

// download GETs n bytes.
func (h *httpConn) download(n int64) error {
	got, err := h.get("/bytes?n="+strconv.FormatInt(n, 10), make([]byte, chunk))
	if err == nil && got != n {
		err = fmt.Errorf("download: got %d bytes, want %d", got, n)
	}
	return err
}

// upload POSTs n bytes to /sink and checks that the origin got them all.
func (h *httpConn) upload(n int64) error {
	hdr := "POST /sink HTTP/1.1\r\nHost: origin\r\nContent-Length: " + strconv.FormatInt(n, 10) + "\r\n\r\n"
	if _, err := io.WriteString(h, hdr); err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	if _, err := writeZeros(h.Conn, n, make([]byte, chunk)); err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64))
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	if resp.StatusCode != http.StatusOK || string(body) != strconv.FormatInt(n, 10) {
		return fmt.Errorf("upload: %s %q, want the origin to count %d bytes", resp.Status, body, n)
	}
	return nil
}

// small GETs /small.
func (h *httpConn) small(buf []byte) error {
	n, err := h.get("/small", buf)
	if err == nil && n != 6 {
		err = fmt.Errorf("GET /small: %d bytes, want 6", n)
	}
	return err
}

// warmups is how many untimed samples precede each latency measurement.
const warmups = 20

// newConnLatency times n sequential connections opened with each of
// dials, each doing one GET /small and closing. With several dials their
// samples alternate, so that each sees the machine in the same state and
// their ratio is not skewed by what the box did meanwhile; lat[i] holds
// dials[i]'s.
func newConnLatency(ctx context.Context, n int, dials ...func(context.Context) (*httpConn, error)) (lat [][]time.Duration, err error) {
	buf := make([]byte, 4*KiB)
	lat = make([][]time.Duration, len(dials))
	for i := range warmups + n {
		for j, dial := range dials {
			start := time.Now()
			c, err := dial(ctx)
			if err != nil {
				return nil, err
			}
			err = c.small(buf)
			c.Close()
			if err != nil {
				return nil, err
			}
			if i >= warmups {
				lat[j] = append(lat[j], time.Since(start))
			}
		}
	}
	return lat, nil
}

// keptConnLatency times n sequential GET /small on each of conns,
// alternating like newConnLatency; lat[i] holds conns[i]'s.
func keptConnLatency(n int, conns ...*httpConn) (lat [][]time.Duration, err error) {
	buf := make([]byte, 4*KiB)
	lat = make([][]time.Duration, len(conns))
	for i := range warmups + n {
		for j, c := range conns {
			start := time.Now()
			if err := c.small(buf); err != nil {
				return nil, err
			}
			if i >= warmups {
				lat[j] = append(lat[j], time.Since(start))
			}
		}
	}
	return lat, nil
}

// pingPong measures n round trips of 16 bytes written to rw and echoed
// back by its peer.
func pingPong(rw io.ReadWriter, n int) ([]time.Duration, error) {
	msg := []byte("0123456789abcdef")
	buf := make([]byte, len(msg))
	lat := make([]time.Duration, 0, n)
	for i := range warmups + n {
		start := time.Now()
		if _, err := rw.Write(msg); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(rw, buf); err != nil {
			return nil, err
		}
		if i >= warmups {
			lat = append(lat, time.Since(start))
		}
	}
	return lat, nil
}

// parallelDownload opens k connections with dial, then downloads total/k
// bytes on each at the same time, and returns how long the downloads took.
func parallelDownload(ctx context.Context, k int, total int64, dial func(context.Context) (*httpConn, error)) (time.Duration, error) {
	conns := make([]*httpConn, k)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range conns {
		c, err := dial(ctx)
		if err != nil {
			return 0, err
		}
		conns[i] = c
	}
	start := time.Now()
	errs := make([]error, k)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() { errs[i] = c.download(total / int64(k)) })
	}
	wg.Wait()
	return time.Since(start), errors.Join(errs...)
}

// parallel calls fn(0..n-1) with at most limit calls at a time, and stops
// starting new ones when ctx ends. It returns how many calls failed or
// were not made, and the first error.
func parallel(ctx context.Context, n, limit int, fn func(i int) error) (failed int, first error) {
	var (
		next    atomic.Int64
		nfailed atomic.Int64
		once    sync.Once
		wg      sync.WaitGroup
	)
	for range min(limit, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				err := ctx.Err()
				if err == nil {
					err = fn(i)
				}
				if err != nil {
					nfailed.Add(1)
					once.Do(func() { first = err })
				}
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil && first != nil {
		first = fmt.Errorf("%w (%v)", context.Cause(ctx), first)
	}
	return int(nfailed.Load()), first
}
