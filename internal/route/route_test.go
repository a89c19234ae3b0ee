package route

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// startMemcached runs a real memcached on a free loopback port for the
// test. Without memcached the test is skipped, except in CI, where it fails.
func startMemcached(t *testing.T) string {
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

func TestMemcachedLeases(t *testing.T) {
	m := NewMemcached(startMemcached(t), time.Second)
	const a, b = "10.0.0.1:3128", "10.0.0.2:3128"

	if _, err := m.Lookup("4711"); err != ErrNotFound {
		t.Fatalf("Lookup before Claim: %v, want ErrNotFound", err)
	}
	if err := m.Claim("4711", a, time.Minute); err != nil {
		t.Fatal(err)
	}
	if got, err := m.Lookup("4711"); err != nil || got != a {
		t.Fatalf("Lookup = %q, %v; want %q", got, err, a)
	}
	// Renew by the owner succeeds; by another proxy it reports not owned
	// and changes nothing.
	if owned, err := m.Renew("4711", a, time.Minute); !owned || err != nil {
		t.Fatalf("owner Renew = %v, %v", owned, err)
	}
	if owned, err := m.Renew("4711", b, time.Minute); owned || err != nil {
		t.Fatalf("other Renew = %v, %v; want false, nil", owned, err)
	}
	// Release by a non-owner leaves the route alone.
	if err := m.Release("4711", b); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.Lookup("4711"); got != a {
		t.Fatalf("route after foreign Release = %q, want %q", got, a)
	}
	// The agent moves: Claim overwrites, and the old owner's Release and
	// Renew must not touch the new route.
	if err := m.Claim("4711", b, time.Minute); err != nil {
		t.Fatal(err)
	}
	if owned, _ := m.Renew("4711", a, time.Minute); owned {
		t.Fatal("stale owner still owns the route after the agent moved")
	}
	m.Release("4711", a)
	if got, _ := m.Lookup("4711"); got != b {
		t.Fatalf("route after stale Release = %q, want %q", got, b)
	}
	// Release by the owner removes it.
	if err := m.Release("4711", b); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Lookup("4711"); err != ErrNotFound {
		t.Fatalf("Lookup after Release: %v, want ErrNotFound", err)
	}
	// Renew recreates a route the store lost (memcached restarted).
	if owned, err := m.Renew("4711", a, time.Minute); !owned || err != nil {
		t.Fatalf("Renew of a lost route = %v, %v", owned, err)
	}
	if got, _ := m.Lookup("4711"); got != a {
		t.Fatalf("recreated route = %q", got)
	}
}

func TestMemcachedLeaseExpires(t *testing.T) {
	m := NewMemcached(startMemcached(t), time.Second)
	if err := m.Claim("dead-proxy-agent", "10.0.0.9:3128", time.Second); err != nil {
		t.Fatal(err)
	}
	// memcached counts whole seconds: the route is gone within 2s.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := m.Lookup("dead-proxy-agent")
		if err == ErrNotFound {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("route of a 1s lease still there after 5s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestMemcachedOddIDs(t *testing.T) {
	m := NewMemcached(startMemcached(t), time.Second)
	for i, id := range []string{"büro 7", strings.Repeat("x", 256), "a\tb", "plain"} {
		addr := fmt.Sprintf("10.0.0.%d:3128", i+1)
		if err := m.Claim(id, addr, time.Minute); err != nil {
			t.Fatalf("Claim(%q): %v", id, err)
		}
		if got, err := m.Lookup(id); err != nil || got != addr {
			t.Fatalf("Lookup(%q) = %q, %v", id, got, err)
		}
	}
	if Key("plain") != "plain" {
		t.Error("a plain ID must be its own key, as the reference writes it")
	}
}

func TestMemcachedDown(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	m := NewMemcached(addr, 200*time.Millisecond)
	if _, err := m.Lookup("4711"); err == nil || err == ErrNotFound {
		t.Fatalf("Lookup with memcached down: %v, want an error", err)
	}
	if _, err := m.Renew("4711", "10.0.0.1:3128", time.Minute); err == nil {
		t.Fatal("Renew with memcached down succeeded")
	}
}

func TestParseAddr(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"10.0.0.1:3128", true},
		{"proxy-1.example:3128", true},
		{"[2001:db8::1]:3128", true},
		{"", false},
		{"10.0.0.1", false},
		{":3128", false},
		{"10.0.0.1:0", false},
		{"10.0.0.1:65536", false},
		{"10.0.0.1:+80", false},
		{"evil host:80", false},
		{"a/b:80", false},
		{"user@host:80", false},
	} {
		_, err := ParseAddr([]byte(tc.in))
		if (err == nil) != tc.ok {
			t.Errorf("ParseAddr(%q) = %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}

func FuzzParseAddr(f *testing.F) {
	for _, s := range []string{"10.0.0.1:3128", "[::1]:80", "host:1", "x", "", ":", "a:b:c", "[::1"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		addr, err := ParseAddr(b)
		if err != nil {
			return
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			t.Fatalf("ParseAddr accepted %q, which does not split: %v", b, err)
		}
	})
}
