package cli

// Environment variables for every flag.
//
// Every flag (but --help and --version-json) can be set with the variable
// REVERSE_HTTP_ + its name upper-cased, "." and "-" as "_":
// --http-proxy.listen-address is REVERSE_HTTP_HTTP_PROXY_LISTEN_ADDRESS.
// kong.DefaultEnvars names them and --help lists them; --log.level and
// --log.format also keep their old names LOG_LEVEL and LOG_FORMAT, which
// lose to the REVERSE_HTTP_ ones when both are set.
//
// Precedence is flag > environment > config file > default. kong alone gives
// flag > config file > environment > default: it applies a variable while
// resetting a flag to its default (Value.Reset), and the configuration
// resolvers then overwrite every flag not on the command line
// (Context.Resolve). envResolver, registered after the configuration files,
// is asked last for each such flag; the last value found wins, so the
// environment overrides the files. It also checks the value first, so that
// a malformed one fails with the variable's name (kong's own error names
// only the flag).

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"

	"github.com/alecthomas/kong"
)

// EnvPrefix starts the name of every flag's environment variable.
const EnvPrefix = "REVERSE_HTTP_"

// EnvName is the environment variable of the flag name (without "--").
func EnvName(flag string) string {
	return EnvPrefix + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(flag))
}

// envOptions name every flag's variable and make the environment override
// config files. They must come after the kong.Configuration options.
func envOptions() []kong.Option {
	return []kong.Option{
		kong.DefaultEnvars(strings.TrimSuffix(EnvPrefix, "_")),
		kong.Resolvers(envResolver{}),
	}
}

// envResolver resolves a flag from the first of its variables that is set
// (kong's rule: set to "" is set, to the empty value).
type envResolver struct{}

func (envResolver) Validate(*kong.Application) error { return nil }

func (envResolver) Resolve(_ *kong.Context, _ *kong.Path, flag *kong.Flag) (any, error) {
	for _, name := range flag.Tag.Envs {
		value, ok := os.LookupEnv(name)
		if !ok {
			continue
		}
		if err := checkEnvValue(flag, value); err != nil {
			return nil, &envError{name: name, flag: flag.Name, err: err}
		}
		return value, nil
	}
	return nil, nil
}

// checkEnvValue parses value the way kong will, into a scratch value, and
// checks it against the flag's enum.
//
// The error may quote the value (time.ParseDuration does). Secrets
// (--auth.jwt.token, --*.key-password) are plain strings without an enum,
// which take any value, so no secret ever reaches an error.
func checkEnvValue(flag *kong.Flag, value string) error {
	target := reflect.New(flag.Target.Type()).Elem()
	switch target.Kind() {
	case reflect.Slice:
		target.Set(reflect.MakeSlice(target.Type(), 0, 0))
	case reflect.Map:
		target.Set(reflect.MakeMap(target.Type()))
	case reflect.Ptr:
		target.Set(reflect.New(target.Type().Elem()))
	}
	scan := kong.ScanFromTokens(kong.Token{Type: kong.FlagValueToken, Value: value})
	if err := flag.Mapper.Decode(&kong.DecodeContext{Value: flag.Value, Scan: scan}, target); err != nil {
		return err
	}
	if flag.Enum == "" {
		return nil
	}
	enum := flag.EnumSlice()
	values := []reflect.Value{target}
	if target.Kind() == reflect.Slice {
		values = values[:0]
		for i := range target.Len() {
			values = append(values, target.Index(i))
		}
	}
	for _, v := range values {
		if s := fmt.Sprint(v); !slices.Contains(enum, s) {
			return fmt.Errorf("must be one of [%s], got %q", strings.Join(enum, ", "), s)
		}
	}
	return nil
}

// envError is a malformed value of a flag's environment variable.
type envError struct {
	name, flag string
	err        error
}

func (e *envError) Error() string {
	return fmt.Sprintf("environment variable %s (--%s): %v", e.name, e.flag, e.err)
}

func (e *envError) Unwrap() error { return e.err }

// asEnvError finds an envError in err, which kong wraps in the flag's
// summary.
func asEnvError(err error) (*envError, bool) {
	var e *envError
	ok := errors.As(err, &e)
	return e, ok
}
