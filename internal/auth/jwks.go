package auth

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// Defaults of JWKSConfig.
const (
	DefaultJWKSRefresh     = 5 * time.Minute
	DefaultJWKSMinInterval = 10 * time.Second
	DefaultJWKSTimeout     = 5 * time.Second
)

// JWKSConfig configures a JWKS.
type JWKSConfig struct {
	// URL is where the identity provider publishes its JSON Web Key Set
	// (RFC 7517 section 5; OpenID Connect's jwks_uri). It must be https,
	// or http to a loopback host (localhost, 127.0.0.0/8, ::1): keys
	// fetched over plain HTTP could be replaced by anyone on the path, who
	// could then sign any token.
	URL string
	// Refresh is how long fetched keys are used before they are fetched
	// again; zero means DefaultJWKSRefresh (5m).
	Refresh time.Duration
	// MinInterval is the least time between two fetches: a token naming
	// a kid not in the set asks for a fetch at once, but at most one per
	// MinInterval, so that tokens with made-up kids cannot make the proxy
	// hammer the provider. After a failed fetch the next is MinInterval
	// later, doubling up to Refresh. Zero means DefaultJWKSMinInterval
	// (10s).
	MinInterval time.Duration
	// Timeout bounds one fetch: connection, TLS, redirects and body. Zero
	// means DefaultJWKSTimeout (5s).
	Timeout time.Duration
	// Client, if not nil, makes the requests (tests); nil means a client
	// with the system's roots and the proxy from the environment, which
	// follows at most 3 redirects and none from https to http.
	Client *http.Client
}

// JWKS is the key set of an identity provider, fetched from its URL and
// kept fresh by Run; Key looks keys up by kid. It is a KeyResolver.
//
// Fetches happen only in Run's goroutine: the first at once, then every
// Refresh, and sooner (rate-limited by MinInterval) when Key is asked for
// a kid the set does not have, which is how a rotation's new key is found.
// A fetch that fails (unreachable provider, bad status, a document that
// is not a JWKS or has no usable key, larger than 1 MiB) keeps the keys
// fetched before: tokens of known keys still verify, those of keys never
// seen do not. A successful fetch replaces the whole set, so a key the
// provider removed no longer verifies.
type JWKS struct {
	cfg    JWKSConfig
	url    string // cfg.URL without credentials, for logs
	log    *slog.Logger
	client *http.Client
	wake   chan struct{} // cap 1: Key asks Run for a fetch

	mu       sync.Mutex
	keys     map[string]jwksKey // the last fetched set; nil before the first
	fetched  time.Time          // when keys were fetched
	attempt  time.Time          // when the last fetch started; zero: none yet
	fetching bool               // a fetch is under way
	done     chan struct{}      // closed when the fetch under way, or the next, ends
	stopped  bool               // Run has returned: no fetch will come
	failures int                // fetches failed in a row
}

// NewJWKS checks cfg and returns a JWKS that has no keys until Run has
// fetched them. log gets the fetches' outcomes.
func NewJWKS(cfg JWKSConfig, log *slog.Logger) (*JWKS, error) {
	u, err := checkJWKSURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultJWKSRefresh
	}
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = DefaultJWKSMinInterval
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultJWKSTimeout
	}
	client := cfg.Client
	if client == nil {
		client = &http.Client{
			Transport: http.DefaultTransport.(*http.Transport).Clone(),
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				if len(via) > 3 {
					return errors.New("more than 3 redirects")
				}
				if via[0].URL.Scheme == "https" && req.URL.Scheme != "https" {
					return fmt.Errorf("redirect from https to %s", req.URL.Redacted())
				}
				return nil
			},
		}
	}
	return &JWKS{
		cfg: cfg, url: u.Redacted(), log: log, client: client,
		wake: make(chan struct{}, 1), done: make(chan struct{}),
	}, nil
}

// checkJWKSURL parses a JWKS URL: https, or http to a loopback host.
func checkJWKSURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, fmt.Errorf("%q has no host, want https://HOST/PATH", raw)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !loopbackHost(u.Hostname()) {
			return nil, fmt.Errorf("http to %s: anyone on the path could replace the keys and sign any token; use https (plain http is only for a loopback host)", u.Hostname())
		}
	default:
		return nil, fmt.Errorf("scheme %q, want https", u.Scheme)
	}
	return u, nil
}

func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// URL is the key set's URL, without credentials, for logs.
func (s *JWKS) URL() string { return s.url }

// Key returns the key named kid (see KeyResolver). For a kid not in the set
// it asks Run for a fetch; when that fetch may start at once (none in the
// last MinInterval; before Run's first) or one is under way, Key waits
// for it, at most Timeout and a second, and looks again. Otherwise, or
// once Run has returned, it answers at once.
func (s *JWKS) Key(kid string) (crypto.PublicKey, []string, error) {
	s.mu.Lock()
	if k, ok := s.keys[kid]; ok {
		s.mu.Unlock()
		return k.key, k.algs, nil
	}
	wait := !s.stopped && (s.fetching || s.attempt.IsZero() || time.Since(s.attempt) >= s.cfg.MinInterval)
	done := s.done
	if !s.stopped {
		select {
		case s.wake <- struct{}{}:
		default: // already asked
		}
	}
	s.mu.Unlock()
	if wait {
		t := time.NewTimer(s.cfg.Timeout + time.Second)
		select {
		case <-done:
		case <-t.C:
		}
		t.Stop()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if k, ok := s.keys[kid]; ok {
		return k.key, k.algs, nil
	}
	if s.keys == nil {
		return nil, nil, fmt.Errorf("%w %s: no keys from the identity provider yet", ErrUnknownKey, quoteKID(kid))
	}
	return nil, nil, fmt.Errorf("%w %s", ErrUnknownKey, quoteKID(kid))
}

// Run fetches the key set at once, then keeps it fresh until ctx ends
// (see JWKS). It returns nil when ctx ends, and only then. It is called
// once.
func (s *JWKS) Run(ctx context.Context) error {
	defer func() {
		s.mu.Lock()
		s.stopped = true
		close(s.done) // nobody waits for a fetch that will not come
		s.done = make(chan struct{})
		s.mu.Unlock()
	}()
	timer := time.NewTimer(0)
	defer timer.Stop()
	next := time.Now()
	for {
		timer.Reset(time.Until(next))
		select {
		case <-ctx.Done():
			return nil
		case <-s.wake:
			s.mu.Lock()
			soon := s.attempt.Add(s.cfg.MinInterval)
			s.mu.Unlock()
			if soon.Before(next) {
				next = soon
			}
			continue
		case <-timer.C:
		}
		ok := s.refresh(ctx)
		if ctx.Err() != nil {
			return nil
		}
		delay := s.cfg.Refresh
		if !ok {
			s.mu.Lock()
			delay = backoff(s.cfg.MinInterval, s.cfg.Refresh, s.failures)
			s.mu.Unlock()
		}
		next = time.Now().Add(delay)
	}
}

// backoff is the delay after failures failed fetches in a row: first
// doubled for each after the first, at most limit.
func backoff(first, limit time.Duration, failures int) time.Duration {
	d := first
	for i := 1; i < failures && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// refresh fetches the key set once and reports whether it got one.
func (s *JWKS) refresh(ctx context.Context) bool {
	start := time.Now()
	s.mu.Lock()
	s.fetching, s.attempt = true, start
	done := s.done
	s.mu.Unlock()

	keys, skipped, err := s.fetch(ctx)

	s.mu.Lock()
	old, failures := s.keys, s.failures
	stopping := err != nil && ctx.Err() != nil // not the provider's fault
	if err == nil {
		s.keys, s.fetched, s.failures = keys, start, 0
	} else if !stopping {
		s.failures++
	}
	s.fetching = false
	close(done)
	s.done = make(chan struct{})
	select {
	case <-s.wake: // asked for by a Key that waited for this fetch
	default:
	}
	s.mu.Unlock()

	switch {
	case stopping:
	case err != nil && failures == 0 && old == nil:
		s.log.Warn("JWKS fetch failed, no keys yet: tokens of the identity provider are refused until it answers",
			"url", s.url, "error", err.Error(), "retry_in", s.cfg.MinInterval.String())
	case err != nil && failures == 0:
		s.log.Warn("JWKS fetch failed, keeping the cached keys",
			"url", s.url, "error", err.Error(), "kids", kidList(old), "fetched", s.fetchedAgo(start), "retry_in", s.cfg.MinInterval.String())
	case err != nil:
		s.log.Debug("JWKS fetch failed again", "url", s.url, "error", err.Error(), "failures", failures+1)
	case failures > 0:
		s.log.Info("JWKS fetched again", "url", s.url, "failures", failures, "kids", kidList(keys), "skipped", strings.Join(skipped, "; "))
	case old == nil || !slices.Equal(kidList(old), kidList(keys)):
		s.log.Info("JWKS keys loaded", "url", s.url, "kids", kidList(keys), "skipped", strings.Join(skipped, "; "))
	default:
		s.log.Debug("JWKS refreshed: no change", "url", s.url, "kids", kidList(keys))
	}
	return err == nil
}

// fetchedAgo says how long ago the cached keys were fetched.
func (s *JWKS) fetchedAgo(now time.Time) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return now.Sub(s.fetched).Round(time.Second).String() + " ago"
}

// fetch gets and parses the key set, within Timeout.
func (s *JWKS) fetch(ctx context.Context) (map[string]jwksKey, []string, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.cfg.URL, nil)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("status %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, nil, fmt.Errorf("read: %w", err)
	}
	return parseJWKS(body)
}

// kidList is the sorted kids of keys, for logs.
func kidList(keys map[string]jwksKey) []string {
	return slices.Sorted(maps.Keys(keys))
}
