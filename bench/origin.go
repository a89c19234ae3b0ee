package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The origin runs in a helper process (`rh-bench origin`), so that its
// sockets do not count against this process's file limit (10,000 tunnels
// need 10,000 sockets on each side) and its CPU is not ours. It serves:
//
//	GET  /bytes?n=N   N bytes (Content-Length: N)
//	POST /sink        reads and discards the body, answers its length
//	GET  /small       "hello\n"
//
// over HTTP/1.1 with keep-alive, and a TCP echo server on another port.
// It prints "http ADDR" and "echo ADDR" on stdout and runs until its stdin
// closes.

// origin is where the running origin helper listens.
type origin struct {
	http string // host:port of the HTTP origin
	echo string // host:port of the TCP echo server
	pid  int
}

// chunk is what /bytes sends and uploads send: zeros, 256 KiB at a time.
const chunk = 256 * KiB

func originMain(args []string) error {
	fs := flag.NewFlagSet("origin", flag.ContinueOnError)
	if err := fs.Parse(args); err != nil {
		return err
	}
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	echoLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: originHandler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(httpLn) }()
	go func() { errc <- serveEcho(echoLn) }()
	fmt.Printf("http %s\necho %s\n", httpLn.Addr(), echoLn.Addr())
	go exitWithStdin()
	return <-errc
}

func originHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "want /bytes?n=N", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		w.Header().Set("Content-Type", "application/octet-stream")
		writeZeros(w, n, make([]byte, chunk))
	})
	mux.HandleFunc("POST /sink", func(w http.ResponseWriter, r *http.Request) {
		n, err := discard(r.Body, make([]byte, chunk))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		io.WriteString(w, strconv.FormatInt(n, 10))
	})
	mux.HandleFunc("GET /small", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "6")
		io.WriteString(w, "hello\n")
	})
	return mux
}

// writeZeros writes n bytes of buf's zeros to w.
func writeZeros(w io.Writer, n int64, buf []byte) (int64, error) {
	var done int64
	for done < n {
		p := buf[:min(int64(len(buf)), n-done)]
		m, err := w.Write(p)
		done += int64(m)
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// discard reads r to its end into buf and returns how many bytes it read.
// (io.Copy to io.Discard would read 8 KiB at a time.)
func discard(r io.Reader, buf []byte) (int64, error) {
	var n int64
	for {
		m, err := r.Read(buf)
		n += int64(m)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

func serveEcho(ln net.Listener) error {
	return serveConns(ln, func(c net.Conn) { echo(c, make([]byte, 8*KiB)) })
}

// serveConns runs handle on every connection ln accepts, each in a
// goroutine of its own, and closes it after.
func serveConns(ln net.Listener, handle func(net.Conn)) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			handle(c)
		}()
	}
}

// startOrigin starts the origin helper and reads its addresses.
func (b *bench) startOrigin(ctx context.Context) error {
	p, err := b.procs.start("origin", true, nil, b.self, "origin")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for range 2 {
		line, err := p.readLine(ctx)
		if err != nil {
			return fmt.Errorf("origin: %w", err)
		}
		kind, addr, _ := strings.Cut(line, " ")
		switch kind {
		case "http":
			b.origin.http = addr
		case "echo":
			b.origin.echo = addr
		}
	}
	if b.origin.http == "" || b.origin.echo == "" {
		return errors.New("origin: did not print its addresses")
	}
	b.origin.pid = p.pid
	return nil
}

// echo writes back what it reads from rw until rw ends or fails. A plain
// loop: io.Copy(c, c) on a TCP connection would splice through a pipe, two
// more file descriptors per connection.
func echo(rw io.ReadWriter, buf []byte) {
	for {
		n, err := rw.Read(buf)
		if n > 0 {
			if _, err := rw.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
