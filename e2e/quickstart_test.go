//go:build unix

package e2e

import (
	"errors"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// quickstart is scripts/run-local.sh (what `make run` runs) started in its
// own process group, in a temporary directory, on ports of its own.
type quickstart struct {
	cmd                              *exec.Cmd
	out                              *logBuffer
	done                             chan struct{}
	err                              error // cmd.Wait's, set before done is closed
	httpPort, metricsPort, agentPort int
}

func startQuickstart(t *testing.T, httpPort int) *quickstart {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	q := &quickstart{out: &logBuffer{}, done: make(chan struct{}),
		httpPort: httpPort, metricsPort: freePort(t, "tcp"), agentPort: freePort(t, "udp")}
	q.cmd = exec.Command("bash", filepath.Join(root, "scripts", "run-local.sh"), binPath)
	q.cmd.Dir = t.TempDir()
	q.cmd.Env = append(childEnv(),
		"RH_HTTP_PORT="+strconv.Itoa(q.httpPort),
		"RH_AGENT_PORT="+strconv.Itoa(q.agentPort),
		"RH_METRICS_PORT="+strconv.Itoa(q.metricsPort),
		"RH_START_TIMEOUT=30")
	q.cmd.Stdout, q.cmd.Stderr = q.out, q.out
	q.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := q.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		q.err = q.cmd.Wait()
		close(q.done)
	}()
	t.Cleanup(func() {
		// The script's group: the script, proxy, agent and tee; all ours.
		pgid := q.cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-q.done:
		case <-time.After(stopTimeout):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-q.done
		}
		if t.Failed() {
			t.Logf("run-local.sh output:\n%s", q.out.String())
		}
	})
	return q
}

// wait waits for the script to exit and returns its exit status.
func (q *quickstart) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-q.done:
	case <-time.After(timeout):
		t.Fatalf("run-local.sh still running after %s:\n%s", timeout, q.out.String())
	}
	var ee *exec.ExitError
	if errors.As(q.err, &ee) {
		return ee.ExitCode()
	}
	if q.err != nil {
		t.Fatal(q.err)
	}
	return 0
}

// TestQuickstart runs `make run`'s script and the README's curl line, then
// stops it as Ctrl-C does.
func TestQuickstart(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed")
	}
	q := startQuickstart(t, freePort(t, "tcp"))
	banner := "Ctrl-C stops both."
	err := waitFor(60*time.Second, func() error {
		if strings.Contains(q.out.String(), banner) {
			return nil
		}
		select {
		case <-q.done:
			return errors.New("exited")
		default:
		}
		return errors.New("no banner yet")
	})
	if err != nil {
		t.Fatalf("banner: %v\n%s", err, q.out.String())
	}
	// The README's line, on this test's ports.
	proxy := "http://4711:noauth@localhost:" + strconv.Itoa(q.httpPort)
	readme := "curl -x " + proxy + " http://localhost:" + strconv.Itoa(q.metricsPort) + "/metrics"
	if !strings.Contains(q.out.String(), readme) {
		t.Errorf("banner does not show %q", readme)
	}
	out, err := curl(t, "-x", proxy, "http://localhost:"+strconv.Itoa(q.metricsPort)+"/metrics")
	if err != nil || !strings.Contains(out, "reverse_http_agents_connected 1") {
		t.Errorf("%s: %v\n%.300s", readme, err, out)
	}
	// Anything outside the quickstart agent's allowlist is refused.
	code, err := curl(t, "-o", "/dev/null", "-w", "%{http_code}", "-x", proxy, "http://localhost:"+strconv.Itoa(q.httpPort)+"/")
	if err != nil || code != "403" {
		t.Errorf("through the agent to its host's loopback: %q %v, want 403", code, err)
	}
	// Ctrl-C: the terminal signals the whole foreground group.
	if err := syscall.Kill(-q.cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if code := q.wait(t, stopTimeout+5*time.Second); code != 0 {
		t.Errorf("after Ctrl-C: exit %d, want 0\n%s", code, q.out.String())
	}
	if !strings.Contains(q.out.String(), "stopped proxy and agent") {
		t.Errorf("no goodbye:\n%s", q.out.String())
	}
}

// TestQuickstartPortTaken: with the HTTP port taken, `make run` says the
// proxy failed and exits non-zero, without printing the banner.
func TestQuickstartPortTaken(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	q := startQuickstart(t, ln.Addr().(*net.TCPAddr).Port)
	code := q.wait(t, 60*time.Second)
	out := q.out.String()
	if code == 0 {
		t.Fatalf("exit 0 with port %d taken:\n%s", q.httpPort, out)
	}
	if !strings.Contains(out, "reverse-http proxy exited with status 1") || !strings.Contains(out, "address already in use") {
		t.Errorf("output does not say the proxy failed to listen:\n%s", out)
	}
	if strings.Contains(out, "Ctrl-C stops both.") {
		t.Errorf("banner printed although the proxy failed:\n%s", out)
	}
}
