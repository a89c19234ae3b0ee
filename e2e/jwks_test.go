package e2e

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// idp is an identity provider as far as the proxy sees one: a JWKS on
// loopback, whose keys the test swaps, and the keys to sign its tokens.
type idp struct {
	srv    *httptest.Server
	issuer string

	mu      sync.Mutex
	doc     []byte
	fetches int
}

func startIDP(t *testing.T) *idp {
	t.Helper()
	p := &idp{}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/realms/rh/protocol/openid-connect/certs" {
			http.NotFound(w, r)
			return
		}
		p.mu.Lock()
		doc := p.doc
		p.fetches++
		p.mu.Unlock()
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Write(doc)
	}))
	t.Cleanup(p.srv.Close)
	p.issuer = p.srv.URL + "/realms/rh"
	return p
}

func (p *idp) jwksURL() string { return p.srv.URL + "/realms/rh/protocol/openid-connect/certs" }

// publish makes keys (by kid) the JWKS.
func (p *idp) publish(t *testing.T, keys map[string]crypto.Signer) {
	t.Helper()
	b64 := base64.RawURLEncoding.EncodeToString
	var list []any
	for kid, k := range keys {
		switch pub := k.Public().(type) {
		case *ecdsa.PublicKey:
			b, err := pub.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			list = append(list, map[string]any{"kid": kid, "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "x": b64(b[1:33]), "y": b64(b[33:])})
		case *rsa.PublicKey:
			list = append(list, map[string]any{"kid": kid, "kty": "RSA", "alg": "RS256", "use": "sig", "n": b64(pub.N.Bytes()), "e": b64(big.NewInt(int64(pub.E)).Bytes())})
		}
	}
	// An encryption key, as Keycloak publishes next to its signing keys:
	// skipped.
	list = append(list, map[string]any{"kid": "enc", "kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"})
	doc, err := json.Marshal(map[string]any{"keys": list})
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.doc = doc
	p.mu.Unlock()
}

func (p *idp) fetchCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fetches
}

// idpToken is a token as the provider issues it: kid in the header, iss,
// aud "rh", agent_id and role from the provider's claim mappers.
func idpToken(t *testing.T, key crypto.Signer, kid, iss, agentID, role string) string {
	t.Helper()
	alg := jwt.SigningMethodES256.Alg()
	if _, ok := key.(*rsa.PrivateKey); ok {
		alg = jwt.SigningMethodRS256.Alg()
	}
	now := time.Now()
	claims := jwt.MapClaims{
		"agent_id": agentID, "role": role, "aud": []string{"rh", "account"},
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(), "sub": "f3b2c1d0", "azp": "reverse-http",
	}
	if iss != "" {
		claims["iss"] = iss
	}
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(alg), claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// localKeys writes the proxy's own key pair into dir, as `auth key` does.
func localKeys(t *testing.T, dir string) (priv, pub string) {
	t.Helper()
	priv, pub = filepath.Join(dir, "priv.pem"), filepath.Join(dir, "pub.pem")
	runTool(t, "auth", "key", "private", "-o", priv)
	runTool(t, "auth", "key", "public", "-i", priv, "-o", pub)
	return priv, pub
}

func newECKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestJWKS runs a proxy that verifies tokens with a local identity
// provider's JWKS as well as its own public key: an agent and clients
// (curl and Go) with provider tokens get in, tokens of unknown keys,
// other issuers or forged algorithms get 407; the provider rotates its
// keys and the new key's tokens get in without a restart while the old
// key's are refused; the provider goes away and the cached key still
// works while a key never seen is refused.
func TestJWKS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	localPriv, localPub := localKeys(t, dir)

	provider := startIDP(t)
	k1 := newECKey(t)
	k2, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	k3 := newECKey(t)
	provider.publish(t, map[string]crypto.Signer{"k1": k1})

	web := startHTTPOrigin(t, false)
	p := startProxy(t, "--auth.type=jwt", "--auth.jwt.public-key="+localPub, "--auth.jwt.audience=rh",
		"--auth.jwt.jwks-url="+provider.jwksURL(), "--auth.jwt.issuer="+provider.issuer)
	p.waitLog(t, startTimeout, 1, "JWKS keys loaded", "url", provider.jwksURL(), "kids", "[k1]")

	// The agent's token comes from the provider too.
	agentFile := filepath.Join(dir, "agent.jwt")
	if err := os.WriteFile(agentFile, []byte(idpToken(t, k1, "k1", provider.issuer, "4711", "agent")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	startAgentArgs(t, p, "4711", append(agentArgs(p), "--auth.type=jwt", "--auth.jwt.token=file:"+agentFile)...)

	localFile := filepath.Join(dir, "local.jwt")
	runTool(t, "auth", "jwt", "token", "--agent-id", "4711", "--role", "client", "--audience", "rh", "-i", localPriv, "-o", localFile)
	local, err := os.ReadFile(localFile)
	if err != nil {
		t.Fatal(err)
	}

	accepts := func(t *testing.T, what, tok string) {
		t.Helper()
		out, err := curl(t, "--proxytunnel", "--proxy", "http://"+p.httpAddr, "--proxy-user", "4711:"+tok, web.url("/hello"))
		if err != nil || out != "hello\n" {
			t.Errorf("curl CONNECT with %s: %q %v", what, out, err)
		}
		out, err = curl(t, "--proxy", "http://"+p.httpAddr, "--proxy-user", "4711:"+tok, web.url("/hello"))
		if err != nil || out != "hello\n" {
			t.Errorf("curl absolute-form with %s: %q %v", what, out, err)
		}
		c := proxyClient(p.httpAddr, "4711", tok)
		defer c.CloseIdleConnections()
		resp, err := c.Get(web.url("/hello"))
		if err != nil {
			t.Errorf("Go client with %s: %v", what, err)
			return
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("Go client with %s: %s", what, resp.Status)
		}
	}
	refuses := func(t *testing.T, what, tok, reason string) {
		t.Helper()
		out, _ := curl(t, "--proxy", "http://"+p.httpAddr, "--proxy-user", "4711:"+tok, "-o", "/dev/null", "-w", "%{http_code}", web.url("/hello"))
		if out != "407" {
			t.Errorf("curl with %s: status %q, want 407", what, out)
		}
		resp, body, err := rawRequest(p.httpAddr, "CONNECT", []byte(connectHeader(web.addr, basicAuth("4711", tok))))
		if err != nil {
			t.Fatal(err)
		}
		checkRefusal(t, resp, body, 407)
		if !strings.Contains(string(body), reason) {
			t.Errorf("%s: 407 body %q, want %q", what, body, reason)
		}
		c := proxyClient(p.httpAddr, "4711", tok)
		defer c.CloseIdleConnections()
		if resp, err := c.Get(web.url("/hello")); err != nil || resp.StatusCode != 407 {
			t.Errorf("Go client with %s: %v %v, want 407", what, resp, err)
		} else {
			resp.Body.Close()
		}
	}

	k1Client := idpToken(t, k1, "k1", provider.issuer, "4711", "client")
	t.Run("accepted", func(t *testing.T) {
		accepts(t, "a provider client token", k1Client)
		accepts(t, "a local client token (no kid, no iss)", strings.TrimSpace(string(local)))
	})
	t.Run("refused", func(t *testing.T) {
		hs := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"agent_id": "4711", "role": "client", "aud": "rh", "iss": provider.issuer, "exp": time.Now().Add(time.Hour).Unix()})
		hs.Header["kid"] = "k1"
		hsTok, err := hs.SignedString([]byte("k1"))
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct{ what, tok, reason string }{
			{"an unknown key's token", idpToken(t, k3, "stranger", provider.issuer, "4711", "client"), `unknown key ID "stranger", and the public key does not verify it either`},
			{"k1's kid, another key", idpToken(t, k3, "k1", provider.issuer, "4711", "client"), "verification error"},
			{"no iss", idpToken(t, k1, "k1", "", "4711", "client"), "token issuer"},
			{"another issuer", idpToken(t, k1, "k1", provider.srv.URL+"/realms/other", "4711", "client"), "token issuer"},
			{"no kid", idpToken(t, k1, "", provider.issuer, "4711", "client"), "verification error"},
			{"HS256 with kid k1", hsTok, "signing method HS256 is invalid"},
			{"the agent's token", idpToken(t, k1, "k1", provider.issuer, "4711", "agent"), "role agent"},
			{"another agent's token", idpToken(t, k1, "k1", provider.issuer, "4712", "client"), "agent_id mismatch"},
		} {
			refuses(t, tc.what, tc.tok, tc.reason)
		}
	})

	t.Run("rotation", func(t *testing.T) {
		// The provider replaces k1 by k2. A token of k2 makes the proxy
		// fetch the keys at once, or, within 10s of its last fetch, 10s
		// after it: accepted without a restart, k1's refused.
		before := provider.fetchCount()
		provider.publish(t, map[string]crypto.Signer{"k2": k2})
		k2Client := idpToken(t, k2, "k2", provider.issuer, "4711", "client")
		start := time.Now()
		err := waitFor(25*time.Second, func() error {
			_, err := curl(t, "--fail", "--proxy", "http://"+p.httpAddr, "--proxy-user", "4711:"+k2Client, "-o", "/dev/null", web.url("/hello"))
			return err
		})
		if err != nil {
			t.Fatalf("k2's token after the rotation: %v", err)
		}
		t.Logf("k2's token accepted %s after the rotation, after %d fetches", time.Since(start).Round(time.Millisecond), provider.fetchCount()-before)
		if n := provider.fetchCount() - before; n > 3 {
			t.Errorf("%d fetches for one rotation, want at most 3 (one per 10s)", n)
		}
		accepts(t, "k2's client token", k2Client)
		refuses(t, "k1's token after the rotation", k1Client, `unknown key ID "k1"`)

		// An agent with a token of the new key connects.
		file := filepath.Join(dir, "agent-4712.jwt")
		if err := os.WriteFile(file, []byte(idpToken(t, k2, "k2", provider.issuer, "4712", "agent")), 0o600); err != nil {
			t.Fatal(err)
		}
		startAgentArgs(t, p, "4712", append(agentArgs(p), "--auth.type=jwt", "--auth.jwt.token=file:"+file)...)
		if n := p.count("http proxy listening"); n != 1 {
			t.Errorf("the proxy started %d times", n)
		}

		t.Run("provider unreachable", func(t *testing.T) {
			provider.srv.Close()
			accepts(t, "the cached k2's token", k2Client)
			neverSeen := idpToken(t, k3, "k3", provider.issuer, "4711", "client")
			refuses(t, "a never-seen kid while the provider is down", neverSeen, `unknown key ID "k3"`)
			// The unknown kid asked for a fetch (within 10s), which fails.
			p.waitLog(t, 25*time.Second, 1, "JWKS fetch failed, keeping the cached keys", "url", provider.jwksURL(), "kids", "[k2]")
			accepts(t, "the cached k2's token after the failed fetch", k2Client)
			refuses(t, "a never-seen kid after the failed fetch", neverSeen, `unknown key ID "k3"`)
		})
	})
	mustGetHelloAuth(t, p, "4711", strings.TrimSpace(string(local)), web)
}

// TestJWKSGroupsClaim: with --auth.jwt.agents-claim=groups, a provider's
// client token says which agents it may use in a groups-style list of
// patterns (no agent_id at all), and its destinations claim limits where
// it may go: the proxy lets it reach agent 4711 and its allowed origin,
// and refuses another agent (407) and another destination (403).
func TestJWKSGroupsClaim(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	localPriv, localPub := localKeys(t, dir)
	provider := startIDP(t)
	k1 := newECKey(t)
	provider.publish(t, map[string]crypto.Signer{"k1": k1})

	web := startHTTPOrigin(t, false)
	other := startHTTPOrigin(t, false)
	p := startProxy(t, "--auth.type=jwt", "--auth.jwt.public-key="+localPub, "--auth.jwt.agents-claim=groups",
		"--auth.jwt.jwks-url="+provider.jwksURL(), "--auth.jwt.issuer="+provider.issuer)
	p.waitLog(t, startTimeout, 1, "JWKS keys loaded", "url", provider.jwksURL(), "kids", "[k1]")
	agentFile := filepath.Join(dir, "agent.jwt")
	runTool(t, "auth", "jwt", "token", "--agent-id", "4711", "--role", "agent", "-i", localPriv, "-o", agentFile)
	startAgentArgs(t, p, "4711", append(agentArgs(p), "--auth.type=jwt", "--auth.jwt.token=file:"+agentFile)...)

	now := time.Now()
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{
		"groups": []string{"47*", "edge-*"}, "destinations": []string{web.addr}, "role": "client",
		"iss": provider.issuer, "sub": "alice", "exp": now.Add(time.Hour).Unix(),
	})
	tok.Header["kid"] = "k1"
	client, err := tok.SignedString(k1)
	if err != nil {
		t.Fatal(err)
	}
	status := func(agent, url string) string {
		out, _ := curl(t, "--proxy", "http://"+p.httpAddr, "--proxy-user", agent+":"+client, "-o", "/dev/null", "-w", "%{http_code}", url)
		return out
	}
	if got := status("4711", web.url("/hello")); got != "200" {
		t.Errorf("agent 4711 (groups 47*), allowed destination: %s, want 200", got)
	}
	if got := status("9999", web.url("/hello")); got != "407" {
		t.Errorf("agent 9999 (not in groups): %s, want 407", got)
	}
	if got := status("4711", other.url("/hello")); got != "403" {
		t.Errorf("agent 4711, destination outside the token's: %s, want 403", got)
	}
}
