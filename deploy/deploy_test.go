// Package deploy holds the packaging artifacts (Dockerfile at the repository
// root, compose files, systemd units, Kubernetes manifests, Grafana and
// Prometheus files) and the tests that check them without Docker,
// systemd or a cluster: each artifact is parsed by the tool's own parser
// where one is a Go module (compose-go, BuildKit, k8s.io/api) or run through
// the tool itself where it is installed (systemd-analyze, promtool), and
// every reverse-http flag they pass is checked against the built binary's
// --help. It is a module of its own so that the program's go.mod does not
// carry Kubernetes and Docker libraries; `make test-deploy` runs it.
package deploy

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
)

// repoRoot is the repository root: this package's parent directory.
var repoRoot = func() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}()

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binary builds ./cmd/reverse-http once per test run, as `make build` does.
func binary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "rh-deploy-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "reverse-http")
		cmd := exec.Command("go", "build", "-trimpath", "-o", binPath, "./cmd/reverse-http")
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// Flag is one long flag of a command, from its --help.
type Flag struct {
	Name    string
	Default string // as --help shows it, quotes removed; "" without one
}

var (
	helpMu    sync.Mutex
	helpCache = map[string]map[string]Flag{}
	// "      --agent-server.listen-address=":4242"" or "  -h, --help".
	helpLine = regexp.MustCompile(`^\s+(?:-\w, )?--([a-z0-9][a-z0-9.-]*)(?:=(\S+))?`)
)

// flags returns the long flags of `reverse-http COMMAND --help`, where
// command is a role (proxy, agent, lb) or a tool (certs, ...).
func flags(t *testing.T, command string) map[string]Flag {
	t.Helper()
	helpMu.Lock()
	defer helpMu.Unlock()
	if f, ok := helpCache[command]; ok {
		return f
	}
	args := append(strings.Fields(command), "--help")
	out, err := exec.Command(binary(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("reverse-http %s --help: %v\n%s", command, err, out)
	}
	f := map[string]Flag{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := helpLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		def := m[2]
		if len(def) >= 2 && def[0] == '"' && def[len(def)-1] == '"' {
			def = def[1 : len(def)-1]
		} else if strings.ToUpper(def) == def { // a placeholder: FILE, ADDR, PATTERNS,...
			def = ""
		}
		f[m[1]] = Flag{Name: m[1], Default: def}
	}
	if len(f) < 5 {
		t.Fatalf("reverse-http %s --help: found only %d flags in:\n%s", command, len(f), out)
	}
	helpCache[command] = f
	return f
}

// commands are the reverse-http commands that the artifacts run.
var commands = map[string]bool{"proxy": true, "agent": true, "lb": true, "certs": true, "version": true}

// aliases are flags kept for compatibility, which the artifacts do not
// use, with the flag to use instead.
var aliases = map[string]string{"metrics.listen-address": "admin.listen-address"}

// checkArgs checks a reverse-http command line (without the program name):
// its first word is a known command and every --flag is one of its flags,
// not an alias.
// where says where the command line is, for the error.
func checkArgs(t *testing.T, where string, args []string) {
	t.Helper()
	if len(args) == 0 || !commands[args[0]] {
		t.Errorf("%s: command line %q does not start with a reverse-http command", where, args)
		return
	}
	known := flags(t, args[0])
	for _, a := range args[1:] {
		if !strings.HasPrefix(a, "--") {
			continue // a flag's value given as the next word, as in --dir /certs
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if _, ok := known[name]; !ok {
			t.Errorf("%s: reverse-http %s has no flag --%s (see reverse-http %s --help)", where, args[0], name, args[0])
		}
		if alias, ok := aliases[name]; ok {
			t.Errorf("%s: --%s is kept for old command lines: use --%s", where, name, alias)
		}
	}
}

// defaultPort is the port of a listen-address flag's default (":4242").
func defaultPort(t *testing.T, command, flag string) string {
	t.Helper()
	f, ok := flags(t, command)[flag]
	if !ok || !strings.Contains(f.Default, ":") {
		t.Fatalf("reverse-http %s --%s: no default address in --help", command, flag)
	}
	return f.Default[strings.LastIndex(f.Default, ":")+1:]
}

// glob lists the files matching pattern (relative to repoRoot), sorted,
// and fails when there are none: a test that checks nothing must not pass.
func glob(t *testing.T, pattern string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot, pattern))
	if err != nil || len(files) == 0 {
		t.Fatalf("no files match %s (err %v)", pattern, err)
	}
	sort.Strings(files)
	return files
}

func rel(path string) string {
	if r, err := filepath.Rel(repoRoot, path); err == nil {
		return r
	}
	return path
}

// needTool returns the path of a command-line tool, or skips the test when
// it is not installed here. Under CI (CI=true, set by .ci/run, which
// installs the tools) a missing tool fails instead.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not installed; .ci/run installs it", name)
		}
		t.Skipf("%s is not installed (.ci/run installs it)", name)
	}
	return p
}

func TestFlagsFromHelp(t *testing.T) {
	// The parser of --help must find what the other tests rely on.
	for _, tc := range []struct{ command, flag, def string }{
		{"proxy", "agent-server.listen-address", ":4242"},
		{"proxy", "http-proxy.listen-address", ":3128"},
		{"proxy", "admin.listen-address", ""},
		{"lb", "admin.listen-address", ""},
		{"agent", "admin.listen-address", ""},
		{"lb", "http-proxy.listen-address", ":3129"},
		{"agent", "agent-client.block-local", ""},
		{"certs", "dir", ""},
	} {
		f, ok := flags(t, tc.command)[tc.flag]
		if !ok || f.Default != tc.def {
			t.Errorf("reverse-http %s --%s: got %+v (found %v), want default %q", tc.command, tc.flag, f, ok, tc.def)
		}
	}
	if _, ok := flags(t, "proxy")["no-such-flag"]; ok {
		t.Error("found a flag that does not exist")
	}
}
