package cli

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/alecthomas/kong"
)

// noEnv are the flags without a variable: --help, and -V, which would print
// the version instead of running whatever command it is set for.
var noEnv = []string{"help", "version-json"}

// wantEnvName is the naming rule, written out independently of EnvName and
// of kong.DefaultEnvars: REVERSE_HTTP_ + the name upper-cased, "." and "-"
// as "_".
func wantEnvName(flag string) string {
	var b strings.Builder
	b.WriteString("REVERSE_HTTP_")
	for _, r := range flag {
		switch {
		case r == '.' || r == '-':
			b.WriteByte('_')
		case r >= 'a' && r <= 'z':
			b.WriteRune(r - 'a' + 'A')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// commandFlags walks the model of the real command line and returns, for
// every command (its words, "" for the top), the flags it accepts.
func commandFlags(t *testing.T) map[string][]*kong.Flag {
	t.Helper()
	var c CLI
	parser, err := kong.New(&c, envOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]*kong.Flag{}
	var walk func(n *kong.Node, words []string, inherited []*kong.Flag)
	walk = func(n *kong.Node, words []string, inherited []*kong.Flag) {
		flags := append(slices.Clip(inherited), n.Flags...)
		out[strings.Join(words, " ")] = flags
		for _, child := range n.Children {
			walk(child, append(slices.Clip(words), child.Name), flags)
		}
	}
	walk(parser.Model.Node, nil, nil)
	return out
}

// TestEveryFlagHasEnv: every flag of every command has its REVERSE_HTTP_
// variable, first (so it wins over an older name such as LOG_LEVEL). A new
// flag gets one without anyone thinking of it; this test fails if one does
// not.
func TestEveryFlagHasEnv(t *testing.T) {
	cmds := commandFlags(t)
	if len(cmds) < 10 {
		t.Fatalf("only %d commands in the model: %v", len(cmds), cmds)
	}
	n := 0
	for cmd, flags := range cmds {
		for _, f := range flags {
			if slices.Contains(noEnv, f.Name) {
				if len(f.Envs) != 0 {
					t.Errorf("%q --%s has variables %v, want none", cmd, f.Name, f.Envs)
				}
				continue
			}
			n++
			want := wantEnvName(f.Name)
			if len(f.Envs) == 0 || f.Envs[0] != want {
				t.Errorf("%q --%s: variables %v, want %s first", cmd, f.Name, f.Envs, want)
			}
			if EnvName(f.Name) != want {
				t.Errorf("EnvName(%q) = %s, want %s", f.Name, EnvName(f.Name), want)
			}
		}
	}
	t.Logf("%d commands, %d flags with a variable", len(cmds), n)
	for _, name := range []string{"log.level", "log.format"} {
		for _, f := range cmds["proxy"] {
			if f.Name == name {
				old := strings.ToUpper(strings.ReplaceAll(name, ".", "_"))
				if !slices.Equal(f.Envs, []string{wantEnvName(name), old}) {
					t.Errorf("--%s: variables %v, want [%s %s]", name, f.Envs, wantEnvName(name), old)
				}
			}
		}
	}
}

// TestHelpListsEnv: `--help` of every command, leaves and groups alike,
// renders and lists the variable of each of its flags.
func TestHelpListsEnv(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	t.Setenv("REVERSE_HTTP_CONFIG", "") // empty is none
	for cmd, flags := range commandFlags(t) {
		args := append(strings.Fields(cmd), "--help")
		var stdout, stderr bytes.Buffer
		if code := Main(context.Background(), args, strings.NewReader(""), &stdout, &stderr); code != 0 {
			t.Errorf("%q exited %d; stderr:\n%s", args, code, stderr.String())
			continue
		}
		if !strings.Contains(stdout.String(), "Usage: reverse-http") {
			t.Errorf("%q: no usage:\n%s", args, stdout.String())
		}
		for _, f := range flags {
			if slices.Contains(noEnv, f.Name) {
				continue
			}
			if want := "$" + wantEnvName(f.Name); !strings.Contains(stdout.String(), want) {
				t.Errorf("%q does not list %s for --%s:\n%s", args, want, f.Name, stdout.String())
			}
		}
	}
}
