package cli

import (
	"bytes"
	"reflect"
	"slices"

	"github.com/alecthomas/kong"

	"github.com/reverse-http/reverse-http/internal/reload"
	"github.com/reverse-http/reverse-http/internal/tlsconf"
)

// What a reload (SIGHUP) applies besides the TLS files, by role. Every
// other flag whose new value differs is logged as needing a restart and
// keeps its old value.
var (
	clientSideReloadable = []string{"log.level", "http-proxy.host-whitelist", "auth.jwt.public-key", "auth.jwt.audience", "auth.jwt.agents-claim"}
	agentReloadable      = []string{"log.level", "agent-client.host-whitelist"}
)

// reloadTLS is a TLS configuration whose files a reload re-reads; prefix
// is its flags' ("agent-server").
type reloadTLS struct {
	prefix string
	files  *tlsconf.Reloadable // nil: not configured, nothing to re-read
}

// reloader is the part of a reload every role shares: parse the command
// line again from the same sources, find the settings that need a
// restart, check the TLS files and the log level.
type reloader struct {
	e          *Env
	reloadable []string
	tls        []reloadTLS
}

// begin parses the configuration again and checks the TLS files. It
// returns the new CLI and an update whose Restart and Changed name what
// it found, and whose Apply applies the TLS material and the log level;
// the role's settings are the caller's to check and add.
func (r *reloader) begin() (*CLI, *reload.Update, error) {
	next, kctx, err := r.e.reparse()
	if err != nil {
		return nil, nil, err
	}
	u := &reload.Update{Restart: restartOnly(r.e.parsed, kctx, r.reloadable)}
	if next.Log.level() != r.e.Level.Level() {
		u.Changed = append(u.Changed, "--log.level")
	}
	var applies []func()
	for _, t := range r.tls {
		if t.files == nil {
			continue
		}
		changed, apply, err := t.files.Check()
		if err != nil {
			return nil, nil, flagError(t.prefix, err)
		}
		for _, s := range changed {
			u.Changed = append(u.Changed, "--"+t.prefix+"."+s)
		}
		applies = append(applies, apply)
	}
	level := next.Log.level()
	u.Apply = func() {
		for _, apply := range applies {
			apply()
		}
		r.e.Level.Set(level)
	}
	return next, u, nil
}

// restartOnly returns the flags (as "--name") whose values differ between
// the running parse and the next one, other than those in reloadable.
func restartOnly(running, next *kong.Context, reloadable []string) []string {
	values := map[string]reflect.Value{}
	for _, f := range next.Flags() {
		values[f.Name] = f.Target
	}
	var restart []string
	for _, f := range running.Flags() {
		if slices.Contains(reloadable, f.Name) {
			continue
		}
		if v, ok := values[f.Name]; ok && !sameValue(f.Target, v) {
			restart = append(restart, "--"+f.Name)
		}
	}
	return restart
}

// sameValue compares two flag values; empty lists are the same whether
// nil or not.
func sameValue(a, b reflect.Value) bool {
	if a.Kind() == reflect.Slice && b.Kind() == reflect.Slice && a.Len() == 0 && b.Len() == 0 {
		return true
	}
	return reflect.DeepEqual(a.Interface(), b.Interface())
}

// clientSideReload is the reload of proxy and lb: the TLS files and log
// level, the allowlist, and the JWT public key (read again even if its
// path did not change) and audience. --auth.type needs a restart.
// settings picks the role's command out of a new parse.
func clientSideReload(e *Env, tls []reloadTLS, cs clientSide, running AuthVerifier, whitelist []string,
	settings func(*CLI) (validate func() error, a AuthVerifier, whitelist []string),
) reload.Load {
	r := &reloader{e: e, reloadable: clientSideReloadable, tls: tls}
	cur, curKey := running, cs.publicKey
	return func() (*reload.Update, error) {
		next, u, err := r.begin()
		if err != nil {
			return nil, err
		}
		validate, a, list := settings(next)
		if err := validate(); err != nil {
			return nil, err
		}
		if u.Allow, err = parseAllow("http-proxy.host-whitelist", list); err != nil {
			return nil, err
		}
		if err := a.checkFlags(); err != nil {
			return nil, err
		}
		a.Type = running.Type // restart to apply
		a = a.keepJWKS(running)
		// The auth files are re-read; their paths need a restart.
		a.Clients.File, a.JWT.Revoked = running.Clients.File, running.JWT.Revoked
		filesChanged, applyFiles, err := cs.files.check()
		if err != nil {
			return nil, err
		}
		u.Changed = append(u.Changed, filesChanged...)
		var key []byte
		if u.Auth, key, err = a.authenticator(cs.files, cs.jwks); err != nil {
			return nil, err
		}
		if !slices.Equal(list, whitelist) {
			u.Changed = append(u.Changed, "--http-proxy.host-whitelist")
		}
		if a.JWT.PublicKey != cur.JWT.PublicKey || !bytes.Equal(key, curKey) {
			u.Changed = append(u.Changed, "--auth.jwt.public-key")
		}
		if a.JWT.Audience != cur.JWT.Audience {
			u.Changed = append(u.Changed, "--auth.jwt.audience")
		}
		if a.JWT.AgentsClaim != cur.JWT.AgentsClaim {
			u.Changed = append(u.Changed, "--auth.jwt.agents-claim")
		}
		u.Then(func() { applyFiles(); cur, curKey, whitelist = a, key, list })
		return u, nil
	}
}
