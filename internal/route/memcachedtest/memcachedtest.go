// Package memcachedtest runs a real memcached for tests.
package memcachedtest

import (
	"net"
	"os"
	"os/exec"
	"testing"
	"time"
)

// Start runs a real memcached on a free loopback port for the
// test. Without memcached the test is skipped, except in CI, where it fails.
func Start(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("memcached")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("memcached is not installed (apt-get install memcached)")
		}
		t.Skip("memcached is not installed")
	}
	for attempt := 0; attempt < 5; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		_, port, _ := net.SplitHostPort(addr)
		ln.Close()
		cmd := exec.Command(bin, "-l", "127.0.0.1", "-p", port, "-U", "0", "-m", "16", "-u", "root")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case <-exited:
				deadline = time.Time{} // port taken meanwhile: try another
				continue
			default:
			}
			if c, err := net.Dial("tcp", addr); err == nil {
				c.Close()
				t.Cleanup(func() { cmd.Process.Kill(); <-exited })
				return addr
			}
			time.Sleep(10 * time.Millisecond)
		}
		cmd.Process.Kill()
		<-exited
	}
	t.Fatal("memcached did not start")
	return ""
}
