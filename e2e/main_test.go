// Package e2e runs the built reverse-http binary as a user would: real
// proxy and agent processes, real curl, in-process origins on 127.0.0.1:0.
//
// TestMain builds the binary once and writes certificates with
// `reverse-http certs`. Set E2E_RACE_BINARY=1 to build the binary with
// -race as well, so that data races in the product fail its processes.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

var (
	// binPath is the reverse-http binary TestMain built.
	binPath string
	// certDir holds ca.pem, proxy.pem, proxy-key.pem, agent.pem and
	// agent-key.pem, written by `reverse-http certs`.
	certDir string
	// homeDir is the HOME of child processes, so that a developer's
	// ~/.reverse-http.yaml cannot change what the tests run.
	homeDir string
	// fileLimit is RLIMIT_NOFILE of this process and its children.
	fileLimit uint64
)

func TestMain(m *testing.M) {
	if name := os.Getenv(helperEnv); name != "" {
		os.Exit(runHelper(name))
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	fileLimit = raiseFileLimit(65536)
	dir, err := os.MkdirTemp("", "reverse-http-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := setup(dir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: setup:", err)
		return 1
	}
	return m.Run()
}

func setup(dir string) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("the go command is needed to build the binary: %w", err)
	}
	binPath = filepath.Join(dir, "reverse-http")
	args := []string{"build", "-o", binPath}
	if os.Getenv("E2E_RACE_BINARY") == "1" {
		args = append(args, "-race")
	}
	build := exec.Command(goCmd, append(args, "./cmd/reverse-http")...)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	homeDir = filepath.Join(dir, "home")
	if err := os.Mkdir(homeDir, 0o755); err != nil {
		return err
	}
	certDir = filepath.Join(dir, "certs")
	certs := exec.Command(binPath, "certs", "--dir", certDir)
	certs.Env = childEnv()
	if out, err := certs.CombinedOutput(); err != nil {
		return fmt.Errorf("reverse-http certs: %w\n%s", err, out)
	}
	return nil
}

// repoRoot is the module root: the parent of this package's directory,
// where `go test` runs the test binary.
func repoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	root := filepath.Dir(wd)
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return "", fmt.Errorf("repository root not found above %s: %w", wd, err)
	}
	if !strings.Contains(string(mod), "module github.com/reverse-http/reverse-http") {
		return "", fmt.Errorf("%s/go.mod is not the reverse-http module", root)
	}
	return root, nil
}

// raiseFileLimit raises RLIMIT_NOFILE to want, or to the hard limit when
// this process may not go above it, and returns the new limit. Children
// inherit it: calling Setrlimit also stops os/exec from restoring the
// original soft limit in children.
func raiseFileLimit(want uint64) uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	if lim.Cur >= want {
		return lim.Cur
	}
	if lim.Max < want {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}); err == nil {
			return want
		}
		want = lim.Max // not allowed above the hard limit
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: lim.Max}); err != nil {
		return lim.Cur
	}
	return want
}

// childEnv is the environment of every child process: this one's, with
// HOME pointing at an empty directory, and no LOG_*, REVERSE_HTTP_* or
// *_PROXY variables that would change what the processes or curl do.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(name) {
		case "HOME", "LOG_FORMAT", "LOG_LEVEL", helperEnv,
			"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY":
			continue
		}
		if strings.HasPrefix(strings.ToUpper(name), "REVERSE_HTTP_") {
			continue
		}
		env = append(env, kv)
	}
	// The default --shutdown-timeout (30s) waits for tunnels a test left
	// open; tests about the drain give their own with the flag.
	return append(env, "HOME="+homeDir, "REVERSE_HTTP_SHUTDOWN_TIMEOUT=5s")
}
