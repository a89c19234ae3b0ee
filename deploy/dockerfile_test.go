package deploy

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// TestDockerfile parses the Dockerfile with BuildKit's parser and its
// build-time lint rules (those of `docker build --check` that run while
// parsing), then checks what this project wants of the image. No image is
// built: there is no Docker engine in CI.
func TestDockerfile(t *testing.T) {
	f, err := os.Open(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	for _, w := range res.Warnings {
		t.Errorf("parser warning: line %d: %s", w.Location.Start.Line, w.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, loc []parser.Range) {
		line := 0
		if len(loc) > 0 {
			line = loc[0].Start.Line
		}
		t.Errorf("lint %s: line %d: %s", rule, line, msg)
	}})
	stages, _, err := instructions.Parse(res.AST, lint)
	if err != nil {
		t.Fatalf("instructions: %v", err)
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a build stage and a small runtime stage", len(stages))
	}

	var build strings.Builder
	for _, c := range stages[0].Commands {
		if r, ok := c.(*instructions.RunCommand); ok {
			build.WriteString(strings.Join(r.CmdLine, " "))
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "internal/cli.Version=${VERSION}", "internal/cli.Commit=${COMMIT}", "./cmd/reverse-http"} {
		if !strings.Contains(build.String(), want) {
			t.Errorf("build stage: no %q in its RUN lines", want)
		}
	}

	final := stages[len(stages)-1]
	if !strings.HasPrefix(final.BaseName, "gcr.io/distroless/static") && final.BaseName != "scratch" {
		t.Errorf("runtime base %s: want distroless/static or scratch", final.BaseName)
	}
	var user string
	var exposed []string
	var entry []string
	entryShell := false
	for _, c := range final.Commands {
		switch c := c.(type) {
		case *instructions.UserCommand:
			user = c.User
		case *instructions.ExposeCommand:
			exposed = append(exposed, c.Ports...)
		case *instructions.EntrypointCommand:
			entry, entryShell = c.CmdLine, c.PrependShell
		}
	}
	if user == "" || user == "root" || strings.HasPrefix(user, "0:") || user == "0" {
		t.Errorf("USER %q: want a non-root user", user)
	}
	if entryShell || !slices.Equal(entry, []string{"/usr/local/bin/reverse-http"}) {
		t.Errorf("ENTRYPOINT %q, want [/usr/local/bin/reverse-http]", entry)
	}
	// The default ports, from the binary's own defaults.
	for _, want := range []string{
		defaultPort(t, "proxy", "http-proxy.listen-address") + "/tcp",
		defaultPort(t, "proxy", "agent-server.listen-address") + "/udp",
		defaultPort(t, "lb", "http-proxy.listen-address") + "/tcp",
	} {
		if !slices.Contains(exposed, want) {
			t.Errorf("EXPOSE %q: missing the default port %s", exposed, want)
		}
	}
}
