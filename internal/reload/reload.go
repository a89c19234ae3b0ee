// Package reload applies a new configuration to a running role when the
// process gets SIGHUP: the role's Run watches for the signal, asks its
// Load function (the command line parsed again) for an Update, and swaps
// the parts that can change while it runs. Nothing is restarted and no
// connection is dropped.
//
// An Update is checked in full before anything applies: a new
// configuration with one bad setting is refused as a whole, and the old
// one stays in force.
package reload

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/reverse-http/reverse-http/internal/allow"
	"github.com/reverse-http/reverse-http/internal/auth"
)

// Update is a new configuration, checked and ready: nothing has changed
// until the role applies it.
type Update struct {
	// Changed names the settings (flags, like "--log.level") that the
	// update changes; empty: nothing changed.
	Changed []string
	// Restart names the settings that differ from those in force but
	// take effect only after a restart; they keep their old values.
	Restart []string
	// Allow is the destination allowlist (nil or empty allows all).
	Allow *allow.List
	// Auth checks agents and clients; nil where a role has none (agent).
	Auth auth.Authenticator
	// Apply, if not nil, applies what the caller holds rather than the
	// role: TLS material, the log level. It is called after the role
	// swapped its parts, and must not fail.
	Apply func()
}

// Then makes u's Apply also call f, after what it did already.
func (u *Update) Then(f func()) {
	prev := u.Apply
	u.Apply = func() {
		if prev != nil {
			prev()
		}
		f()
	}
}

// Load parses the configuration again and checks it. An error names the
// setting at fault; nothing of it applies.
type Load func() (*Update, error)

// Watch calls Once on every SIGHUP until ctx ends, then stops listening
// for the signal and returns nil. apply swaps the role's parts.
func Watch(ctx context.Context, log *slog.Logger, load Load, apply func(*Update)) error {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	defer signal.Stop(ch)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
			Once(log, load, apply)
		}
	}
}

// Once loads an update and applies it, or refuses it, and logs which:
//
//   - refused: one ERROR line, `configuration reload refused, keeping the
//     previous configuration`, with the error (naming the setting);
//   - a WARN line `setting --X changed on reload: restart to apply` for
//     each setting in Restart;
//   - one INFO line `configuration reloaded` with `changed` (the settings'
//     names, comma-separated; never their values), or `configuration
//     reloaded: nothing changed`.
//
// Every line has `took`, the time from the start of the reload to the end
// of applying it. Once reports whether the update applied.
func Once(log *slog.Logger, load Load, apply func(*Update)) bool {
	start := time.Now()
	u, err := load()
	if err != nil {
		log.Error("configuration reload refused, keeping the previous configuration",
			"error", err.Error(), "took", took(start))
		return false
	}
	for _, s := range u.Restart {
		log.Warn("setting "+s+" changed on reload: restart to apply", "setting", s)
	}
	apply(u)
	if u.Apply != nil {
		u.Apply()
	}
	if len(u.Changed) == 0 {
		log.Info("configuration reloaded: nothing changed", "took", took(start))
	} else {
		log.Info("configuration reloaded", "changed", strings.Join(u.Changed, ","), "took", took(start))
	}
	return true
}

func took(start time.Time) string {
	return time.Since(start).Round(time.Microsecond).String()
}
