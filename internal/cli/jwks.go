package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/run"
)

// Tokens from an identity provider: --auth.jwt.jwks-url, --auth.jwt.issuer
// and the advanced --auth.jwt.jwks-refresh on proxy and lb.
//
// The key set is made once at start and its fetches run alongside the
// role (clientSide.run). A reload keeps it, and these three flags with
// it: changing them needs a restart (the reload says so). The keys
// themselves rotate without one: that is what the JWKS is for.

// jwks makes the key set of --auth.jwt.jwks-url, or nil without it.
func (a AuthVerifier) jwks(e *Env) (*auth.JWKS, error) {
	j := a.JWT
	if j.JWKSURL == "" {
		if j.Issuer != "" && a.Type == "jwt" {
			return nil, errors.New("--auth.jwt.issuer needs --auth.jwt.jwks-url: it is the iss of the identity provider's tokens; the proxy's own tokens (auth jwt token) carry none")
		}
		return nil, nil
	}
	if a.Type != "jwt" {
		return nil, fmt.Errorf("--auth.jwt.jwks-url needs --auth.type=jwt, not %s", a.Type)
	}
	if j.Issuer == "" {
		return nil, errors.New("--auth.jwt.issuer: required with --auth.jwt.jwks-url: the identity provider's issuer (its tokens' iss), so that tokens it issued for other purposes or another realm do not pass")
	}
	if j.JWKSRefresh < auth.DefaultJWKSMinInterval {
		return nil, fmt.Errorf("--auth.jwt.jwks-refresh: must be at least %s, got %s", auth.DefaultJWKSMinInterval, j.JWKSRefresh)
	}
	keys, err := auth.NewJWKS(auth.JWKSConfig{URL: j.JWKSURL, Refresh: j.JWKSRefresh}, e.Log.With("component", "jwks"))
	if err != nil {
		return nil, fmt.Errorf("--auth.jwt.jwks-url: %w", err)
	}
	return keys, nil
}

// keepJWKS returns a, from a reload, with running's JWKS settings, which
// need a restart.
func (a AuthVerifier) keepJWKS(running AuthVerifier) AuthVerifier {
	a.JWT.JWKSURL, a.JWT.Issuer, a.JWT.JWKSRefresh = running.JWT.JWKSURL, running.JWT.Issuer, running.JWT.JWKSRefresh
	return a
}

// logJWKS says, at start, which keys verify tokens when there is a JWKS.
func (cs clientSide) logJWKS(e *Env, a AuthVerifier) {
	if cs.jwks == nil {
		return
	}
	local := a.JWT.PublicKey
	if cs.publicKey == nil {
		local = "none" // no such file
	}
	e.Log.Info("verifying tokens with the identity provider's keys (JWKS), and the public key if its file exists",
		"jwks_url", cs.jwks.URL(), "issuer", a.JWT.Issuer, "audience", a.JWT.Audience, "public_key", local,
		"refresh", a.JWT.JWKSRefresh.String())
}

// run runs role and, alongside it, the JWKS's fetches, until both end.
func (cs clientSide) run(ctx context.Context, role func(context.Context) error) error {
	if cs.jwks == nil {
		return role(ctx)
	}
	return run.All(ctx, role, cs.jwks.Run)
}
