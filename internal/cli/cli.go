// Package cli is the command line of reverse-http: flags and config files
// compatible with grepplabs/reverse-http, validation, and the glue that runs
// one role. Nothing below it imports it.
package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/alecthomas/kong"
	kongyaml "github.com/alecthomas/kong-yaml"
	"github.com/reverse-http/reverse-http/internal/metrics"
)

// Build information, set by the linker (-X).
var (
	Version = "dev"
	Commit  = "none"
	Date    = "unknown"
)

// CLI is the whole command line.
type CLI struct {
	Log         LogConfig   `embed:"" prefix:"log."`
	Config      string      `placeholder:"FILE" help:"Read settings from this JSON or YAML file too (after /etc/reverse-http/config.{json,yaml} and ~/.reverse-http.{json,yaml}); flags and environment variables override files."`
	VersionJSON versionFlag `name:"version-json" short:"V" env:"-" help:"Print version information as JSON and exit."`

	Agent   AgentCmd   `cmd:"" name:"agent" help:"Start an agent."`
	Proxy   ProxyCmd   `cmd:"" name:"proxy" help:"Start a proxy server."`
	LB      LBCmd      `cmd:"" name:"lb" help:"Start a load balancer: the client front end of an HA cluster of proxies."`
	Auth    AuthCmd    `cmd:"" name:"auth" help:"Key and token tools."`
	Certs   CertsCmd   `cmd:"" name:"certs" help:"Write a local CA and certificates for the proxy and agents (for trying things out)."`
	Version VersionCmd `cmd:"" name:"version" help:"Print the version."`
}

// LogConfig is the reference's --log.* flags. Besides REVERSE_HTTP_LOG_*,
// they keep the reference's variables LOG_FORMAT and LOG_LEVEL, which lose
// when both are set.
type LogConfig struct {
	Format string `env:"REVERSE_HTTP_LOG_FORMAT,LOG_FORMAT" enum:"json,text" default:"text" help:"Log format. One of: [json, text]."`
	Level  string `env:"REVERSE_HTTP_LOG_LEVEL,LOG_LEVEL" enum:"trace,debug,info,warn,error" default:"info" help:"Log level. One of: [trace, debug, info, warn, error]."`
}

// LevelTrace is below slog.LevelDebug, as in the reference.
const LevelTrace = slog.Level(-8)

func (c LogConfig) logger(w io.Writer) *slog.Logger {
	level := slog.LevelInfo
	switch c.Level {
	case "trace":
		level = LevelTrace
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	opts := &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.LevelKey {
				if l, ok := a.Value.Any().(slog.Level); ok && l == LevelTrace {
					a.Value = slog.StringValue("TRACE")
				}
			}
			return a
		},
	}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// versionFlag prints the build as JSON, like the reference's -V.
type versionFlag bool

func (versionFlag) BeforeReset(app *kong.Kong) error {
	b, _ := json.Marshal(map[string]string{"version": Version, "commit": Commit, "date": Date})
	fmt.Fprintln(app.Stdout, string(b))
	app.Exit(0)
	return nil
}

// VersionCmd prints the version.
type VersionCmd struct{}

func (VersionCmd) Run(e *Env) error {
	fmt.Fprintf(e.Stdout, "reverse-http %s (commit %s, built %s)\n", Version, Commit, Date)
	return nil
}

// Env is what every command's Run gets: the signal context, the logger and
// standard streams.
type Env struct {
	Ctx    context.Context
	Log    *slog.Logger
	Args   []string // the command line, without the program name
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

// Main parses args (without the program name) and runs the command. It
// returns the process exit status.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	var cli CLI
	exit := -1
	opts := []kong.Option{
		kong.Name("reverse-http"),
		kong.Description("Reverse HTTP proxy over QUIC: agents dial out to the proxy; clients use the proxy as an HTTP proxy."),
		kong.Configuration(kong.JSON, "/etc/reverse-http/config.json", homePath(".reverse-http.json")),
		kong.Configuration(kongyaml.Loader, "/etc/reverse-http/config.yaml", homePath(".reverse-http.yaml")),
		kong.Writers(stdout, stderr),
		kong.Exit(func(code int) {
			if exit < 0 {
				exit = code
			}
			panic(exitPanic{})
		}),
	}
	if path, source, err := explicitConfig(args); err != nil {
		fmt.Fprintf(stderr, "reverse-http: error: %s: %v\n", source, err)
		return 2
	} else if path != "" {
		loader := kongyaml.Loader
		if strings.EqualFold(filepath.Ext(path), ".json") {
			loader = kong.JSON
		}
		opts = append(opts, kong.Configuration(loader, path))
	}
	// After the configuration files: the environment overrides them.
	opts = append(opts, envOptions()...)
	code, done := func() (code int, done bool) {
		defer func() {
			if r := recover(); r != nil {
				if _, ok := r.(exitPanic); !ok {
					panic(r)
				}
				code, done = exit, true
			}
		}()
		parser, err := kong.New(&cli, opts...)
		if err != nil {
			fmt.Fprintf(stderr, "reverse-http: error: %s\n", oneLine(err))
			return 2, true
		}
		kctx, err := parser.Parse(args)
		if e, ok := asEnvError(err); ok {
			fmt.Fprintf(stderr, "reverse-http: error: %s\n", oneLine(e))
			return 2, true
		}
		if err != nil {
			fmt.Fprintf(stderr, "reverse-http: error: %s (see --help)\n", oneLine(err))
			return 2, true
		}
		metrics.Version, metrics.Commit = Version, Commit
		log := cli.Log.logger(stderr)
		env := &Env{Ctx: ctx, Log: log, Args: args, Stdin: stdin, Stdout: stdout, Stderr: stderr}
		if err := kctx.Run(env); err != nil {
			fmt.Fprintf(stderr, "reverse-http: error: %s\n", oneLine(err))
			return 1, true
		}
		return 0, true
	}()
	if done {
		return code
	}
	return 0
}

type exitPanic struct{}

// oneLine folds a multi-line error message (YAML decoders write several)
// into one line, so that every start-up error is one grep-able line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", " ; ")), " ")
}

// homePath is name in the user's home directory ($HOME on Unix). kong's own
// "~" expansion reads the passwd entry instead, which ignores $HOME.
func homePath(name string) string {
	home, err := os.UserHomeDir()
	if err != nil {
		return "~/" + name
	}
	return filepath.Join(home, name)
}

// explicitConfig finds --config FILE or --config=FILE in args, or else
// $REVERSE_HTTP_CONFIG, and checks that the file is readable, since kong
// silently skips missing files. source is where the path came from, for
// errors; path is "" when there is none.
func explicitConfig(args []string) (path, source string, err error) {
	path, err = configArg(args)
	if path != "" || err != nil {
		return path, "--config", err
	}
	source = EnvName("config")
	if path = os.Getenv(source); path == "" {
		return "", source, nil
	}
	path, err = readablePath(path)
	return path, source, err
}

// configArg finds --config FILE or --config=FILE in args.
func configArg(args []string) (string, error) {
	for i, a := range args {
		if a == "--" {
			break
		}
		var path string
		switch {
		case a == "--config" && i+1 < len(args):
			path = args[i+1]
		case strings.HasPrefix(a, "--config="):
			path = strings.TrimPrefix(a, "--config=")
		default:
			continue
		}
		return readablePath(path)
	}
	return "", nil
}

// readablePath expands a leading "~/" and checks that path can be opened.
func readablePath(path string) (string, error) {
	if rest, ok := strings.CutPrefix(path, "~/"); ok {
		path = homePath(rest)
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	f.Close()
	return path, nil
}
