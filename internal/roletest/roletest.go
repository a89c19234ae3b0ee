// Package roletest helps the tests of the roles (proxy, lb, agent) prove
// that Run returns with no goroutine left behind.
package roletest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"
)

// Wait bounds every step of these helpers.
const Wait = 15 * time.Second

// Goroutines records how many goroutines run now; the function it returns
// fails t unless that many or fewer run again within Wait, and then logs
// the stacks of all of them.
func Goroutines(t testing.TB) (check func()) {
	t.Helper()
	before := runtime.NumGoroutine()
	return func() {
		t.Helper()
		deadline := time.Now().Add(Wait)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				var b bytes.Buffer
				pprof.Lookup("goroutine").WriteTo(&b, 1)
				t.Fatalf("%d goroutines %s after every Run returned, %d before:\n%s", runtime.NumGoroutine(), Wait, before, b.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// Run runs fn in a goroutine until stop is called; stop cancels its
// context and returns fn's error, failing t if fn does not return within
// Wait.
func Run(t testing.TB, name string, fn func(context.Context) error) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	stopped := false
	var err error
	stop = func() error {
		t.Helper()
		if stopped {
			return err
		}
		stopped = true
		cancel()
		select {
		case err = <-done:
			return err
		case <-time.After(Wait):
			t.Fatalf("%s: Run did not return within %s of its context's end", name, Wait)
			return nil
		}
	}
	t.Cleanup(func() { stop() })
	return stop
}

// Echo serves TCP on a loopback port, echoing each connection, until the
// test ends; every goroutine it starts ends when its connection does.
func Echo(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// Connect opens a CONNECT tunnel to target through the proxy at proxyAddr
// as agentID (noauth) and checks that it echoes; the tunnel stays open
// until the test ends.
func Connect(t testing.TB, proxyAddr, agentID, target string) net.Conn {
	t.Helper()
	c, err := TryConnect(proxyAddr, agentID, target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TryConnect is Connect that reports a refusal instead of failing.
func TryConnect(proxyAddr, agentID, target string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", proxyAddr, Wait)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(Wait))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n",
		target, target, base64.StdEncoding.EncodeToString([]byte(agentID+":noauth")))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s through %s: %s", target, proxyAddr, resp.Status)
	}
	io.WriteString(c, "ping")
	got := make([]byte, 4)
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "ping" {
		c.Close()
		return nil, fmt.Errorf("echo through the tunnel: %q %v", got, err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}
