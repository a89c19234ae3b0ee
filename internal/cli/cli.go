// Package cli is the command line of reverse-http: flags and config files
// compatible with grepplabs/reverse-http, validation, and the glue that runs
// one role. Nothing below it imports it.
package cli

import (
	"context"
	"encoding/json"
	"errors"
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

// level is the slog level of --log.level.
func (c LogConfig) level() slog.Level {
	switch c.Level {
	case "trace":
		return LevelTrace
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// logger writes to w at level, which a configuration reload may change.
func (c LogConfig) logger(w io.Writer, level *slog.LevelVar) *slog.Logger {
	level.Set(c.level())
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
	// Level is the logger's level, which a reload sets.
	Level *slog.LevelVar
	// parsed is the parse the command runs with; reparse parses Args
	// again from the same sources (config files, environment) into a
	// fresh CLI, for a configuration reload.
	parsed  *kong.Context
	reparse func() (*CLI, *kong.Context, error)
}

// Main parses args (without the program name) and runs the command. It
// returns the process exit status.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	var cli CLI
	exit := -1
	opts, source, err := parserOptions(args, stdout, stderr, func(code int) {
		if exit < 0 {
			exit = code
		}
		panic(exitPanic{})
	})
	if err != nil {
		fmt.Fprintf(stderr, "reverse-http: error: %s: %v\n", source, err)
		return 2
	}
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
		level := new(slog.LevelVar)
		log := cli.Log.logger(stderr, level)
		env := &Env{Ctx: ctx, Log: log, Args: args, Stdin: stdin, Stdout: stdout, Stderr: stderr,
			Level: level, parsed: kctx, reparse: func() (*CLI, *kong.Context, error) { return reparse(args) }}
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

// parserOptions are kong's options for args: the configuration files
// (with --config or $REVERSE_HTTP_CONFIG), then the environment. An error
// is an unreadable --config file; source names where it came from.
func parserOptions(args []string, stdout, stderr io.Writer, exit func(int)) (opts []kong.Option, source string, err error) {
	opts = []kong.Option{
		kong.Name("reverse-http"),
		kong.Description("Reverse HTTP proxy over QUIC: agents dial out to the proxy; clients use the proxy as an HTTP proxy."),
		kong.Configuration(kong.JSON, "/etc/reverse-http/config.json", homePath(".reverse-http.json")),
		kong.Configuration(kongyaml.Loader, "/etc/reverse-http/config.yaml", homePath(".reverse-http.yaml")),
		kong.Writers(stdout, stderr),
		kong.Exit(exit),
	}
	path, source, err := explicitConfig(args)
	if err != nil {
		return nil, source, err
	}
	if path != "" {
		loader := kongyaml.Loader
		if strings.EqualFold(filepath.Ext(path), ".json") {
			loader = kong.JSON
		}
		opts = append(opts, kong.Configuration(loader, path))
	}
	// After the configuration files: the environment overrides them.
	return append(opts, envOptions()...), "", nil
}

// reparse parses args again as Main did, reading the configuration files
// and the environment anew, into a fresh CLI. Errors are one line, naming
// the setting where kong does.
func reparse(args []string) (cli *CLI, kctx *kong.Context, err error) {
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(exitPanic); !ok {
				panic(r)
			}
			cli, kctx, err = nil, nil, errors.New("the new configuration asks to exit (--help or --version-json)")
		}
	}()
	opts, source, err := parserOptions(args, io.Discard, io.Discard, func(int) { panic(exitPanic{}) })
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", source, err)
	}
	cli = new(CLI)
	parser, err := kong.New(cli, opts...)
	if err != nil {
		return nil, nil, errors.New(oneLine(err))
	}
	kctx, err = parser.Parse(args)
	if e, ok := asEnvError(err); ok {
		return nil, nil, errors.New(oneLine(e))
	}
	if err != nil {
		return nil, nil, errors.New(oneLine(err))
	}
	return cli, kctx, nil
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
