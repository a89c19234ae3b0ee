package auth

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/crypto/bcrypt"
)

// testHash is a bcrypt hash of "s3cret" at the lowest cost, so the tests
// stay fast under -race.
var testHash = sync.OnceValue(func() string {
	h, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		panic(err)
	}
	return string(h)
})

func clientsYAML(entries ...string) []byte {
	return []byte("clients:\n" + strings.Join(entries, ""))
}

func entry(name, agents, extra string) string {
	return "  - name: " + name + "\n    secret_hash: " + testHash() + "\n    agents: " + agents + "\n" + extra
}

func TestParseClients(t *testing.T) {
	good := clientsYAML(entry("ci", `["4711", "site-*"]`, "    destinations: [\"*.internal:443\"]\n    expires: 2099-01-01T00:00:00Z\n"),
		entry("ops", `["*"]`, ""))
	s, err := ParseClients(good)
	if err != nil {
		t.Fatal(err)
	}
	if s.Len() != 2 {
		t.Fatalf("%d clients, want 2", s.Len())
	}
	if c := s.clients["ci"]; !c.agents.Match("site-7") || c.agents.Match("4712") || c.dests.Empty() || c.expires.Year() != 2099 {
		t.Errorf("ci parsed as %+v", c)
	}
	if s, err := ParseClients(nil); err != nil || s.Len() != 0 {
		t.Errorf("empty file: %v, %d clients; want none and no error", err, s.Len())
	}

	bad := []struct{ name, data, want string }{
		{"not YAML", "clients: [", "YAML"},
		{"unknown field", "clients:\n  - name: a\n    secret: x\n", "field secret not found"},
		{"not a list", "clients: 3\n", "YAML"},
		{"no name", string(clientsYAML(entry(`""`, `["1"]`, ""))), "client 1: name: empty"},
		{"bad name", string(clientsYAML(entry(`"a b"`, `["1"]`, ""))), "name: character"},
		{"reserved name", string(clientsYAML(entry("other", `["1"]`, ""))), "reserved"},
		{"long name", string(clientsYAML(entry(strings.Repeat("a", 65), `["1"]`, ""))), "longer than 64"},
		{"duplicate", string(clientsYAML(entry("a", `["1"]`, ""), entry("a", `["2"]`, ""))), "appears twice"},
		{"no hash", "clients:\n  - name: a\n    agents: [\"1\"]\n", "secret_hash: missing"},
		{"plain secret", "clients:\n  - name: a\n    secret_hash: hunter2\n    agents: [\"1\"]\n", "not a bcrypt hash"},
		{"no agents", string(clientsYAML(entry("a", `[]`, ""))), "agents: no agent patterns"},
		{"bad agent", string(clientsYAML(entry("a", `["a:b"]`, ""))), "contains ':'"},
		{"bad destination", string(clientsYAML(entry("a", `["1"]`, "    destinations: [\"*.x:99999\"]\n"))), "destinations"},
		{"empty destinations", string(clientsYAML(entry("a", `["1"]`, "    destinations: [\" \"]\n"))), "given but empty"},
		{"bad expiry", string(clientsYAML(entry("a", `["1"]`, "    expires: tomorrow\n"))), "expires: want RFC 3339"},
		{"too large", strings.Repeat("#", MaxClientsFileBytes+1), "larger than"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseClients([]byte(tc.data))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// setFailFloor sets FailFloor for one test.
func setFailFloor(t *testing.T, d time.Duration) {
	old := FailFloor
	FailFloor = d
	t.Cleanup(func() { FailFloor = old })
}

func TestClientsAuthenticator(t *testing.T) {
	setFailFloor(t, 20*time.Millisecond)
	path := filepath.Join(t.TempDir(), "clients.yaml")
	writeFile(t, path, clientsYAML(
		entry("ci", `["4711", "site-*"]`, "    destinations: [\"*.internal:443\"]\n"),
		entry("old", `["*"]`, "    expires: 2001-01-01T00:00:00Z\n"),
		entry("ops", `["*"]`, "")))
	f, err := OpenClientsFile(path)
	if err != nil {
		t.Fatal(err)
	}
	k := testKeys().ec
	v := NewVerifier(k.Public(), "")
	clientTok := mustSign(t, k, TokenOptions{AgentID: "4711", Role: RoleClient, Duration: time.Hour})
	for _, mode := range []struct {
		name string
		a    Authenticator
	}{{"noauth", WithClients(NoAuth(), f)}, {"jwt", WithClients(JWT(v), f)}} {
		t.Run(mode.name, func(t *testing.T) {
			a := mode.a
			id, err := a.Client(Credentials{User: "site-9", Password: "ci:s3cret"})
			if err != nil {
				t.Fatal(err)
			}
			if id.String() != "client:ci" || id.Metric != "ci" || !id.HasDestinations() ||
				!id.AllowedDestination("db.internal", 443) || id.AllowedDestination("db.internal", 22) {
				t.Errorf("identity %+v", id)
			}
			if err := id.Check("site-9", "db.internal:443", time.Now()); err != nil {
				t.Errorf("Check: %v", err)
			}
			// A second time comes from the cache.
			if _, err := a.Client(Credentials{User: "4711", Password: "ci:s3cret"}); err != nil {
				t.Fatal(err)
			}
			id, err = a.Client(Credentials{User: "4711", CertName: "ops"})
			if err != nil || id.String() != "cert:ops" {
				t.Errorf("certificate CN ops: %v, %v", id, err)
			}
			refused := []struct {
				name string
				c    Credentials
				want string
			}{
				{"wrong secret", Credentials{User: "4711", Password: "ci:wrong"}, "unknown client or wrong secret"},
				{"unknown client", Credentials{User: "4711", Password: "nobody:s3cret"}, "unknown client or wrong secret"},
				{"agent outside policy", Credentials{User: "4712", Password: "ci:s3cret"}, "client ci may not use agent 4712"},
				{"expired", Credentials{User: "4711", Password: "old:s3cret"}, "client old expired"},
				{"noauth password", Credentials{User: "4711", Password: "noauth"}, "want NAME:SECRET"},
				{"empty user", Credentials{User: "", Password: "ci:s3cret"}, "user: empty"},
				{"unknown CN, no password", Credentials{User: "4711", CertName: "stranger"}, "want NAME:SECRET"},
			}
			for _, tc := range refused {
				_, err := a.Client(tc.c)
				if err == nil || !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
				}
			}
			_, err = a.Client(Credentials{User: "4711", Password: clientTok})
			if mode.name == "jwt" && err != nil {
				t.Errorf("client token with a clients file: %v", err)
			}
			if mode.name == "noauth" && err == nil {
				t.Error("a JWT accepted in noauth mode with a clients file")
			}
		})
	}
}

func TestClientsReloadRevokes(t *testing.T) {
	setFailFloor(t, 0)
	path := filepath.Join(t.TempDir(), "clients.yaml")
	writeFile(t, path, clientsYAML(entry("ci", `["4711"]`, ""), entry("ops", `["*"]`, "")))
	f, err := OpenClientsFile(path)
	if err != nil {
		t.Fatal(err)
	}
	a := WithClients(NoAuth(), f)
	ci, err := a.Client(Credentials{User: "4711", Password: "ci:s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	ops, err := a.Client(Credentials{User: "4711", Password: "ops:s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	apply, err := f.Check()
	if err != nil || apply != nil {
		t.Fatalf("unchanged file: apply %v, %v; want nothing to do", apply != nil, err)
	}
	// A broken file is refused; the clients in force stay.
	writeFile(t, path, []byte("clients: ["))
	if _, err := f.Check(); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("broken file: %v, want an error naming it", err)
	}
	if err := ci.Check("4711", "x:1", time.Now()); err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, clientsYAML(entry("ops", `["4712"]`, "    destinations: [\"a.internal:1\"]\n")))
	apply, err = f.Check()
	if err != nil || apply == nil {
		t.Fatalf("changed file: %v", err)
	}
	apply()
	if err := ci.Check("4711", "x:1", time.Now()); !errors.Is(err, ErrRevoked) || !strings.Contains(err.Error(), "removed") {
		t.Errorf("removed client: %v", err)
	}
	if err := ops.Check("4711", "x:1", time.Now()); !errors.Is(err, ErrRevoked) || !strings.Contains(err.Error(), "no longer use agent 4711") {
		t.Errorf("narrowed agents: %v", err)
	}
	if err := ops.Check("4712", "b.internal:1", time.Now()); !errors.Is(err, ErrRevoked) || !strings.Contains(err.Error(), "no longer reach") {
		t.Errorf("narrowed destinations: %v", err)
	}
	if _, err := a.Client(Credentials{User: "4711", Password: "ci:s3cret"}); err == nil {
		t.Error("removed client accepted")
	}
	exp := &Identity{Kind: KindClient, Name: "x", Expires: time.Now().Add(-time.Second)}
	if err := exp.Check("1", "", time.Now()); !errors.Is(err, ErrRevoked) {
		t.Errorf("expired identity: %v", err)
	}
}

func TestAddRemoveClient(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "clients.yaml")
	if _, err := AddClient(path, ClientSpec{Name: "ci", Agents: []string{"1"}, Cost: bcrypt.MinCost}); err == nil {
		t.Fatal("added to a file in a missing directory")
	}
	path = filepath.Join(t.TempDir(), "clients.yaml")
	secret, err := AddClient(path, ClientSpec{Name: "ci", Agents: []string{"4711,site-*"}, Destinations: []string{"*.internal:443"},
		Expires: time.Now().Add(time.Hour), Cost: bcrypt.MinCost})
	if err != nil {
		t.Fatal(err)
	}
	if len(secret) != 32 || strings.Contains(secret, ":") {
		t.Errorf("secret %q", secret)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("file mode: %v, %v", st.Mode(), err)
	}
	if _, err := AddClient(path, ClientSpec{Name: "ci", Agents: []string{"1"}, Cost: bcrypt.MinCost}); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("second add: %v", err)
	}
	if _, err := AddClient(path, ClientSpec{Name: "ops", Agents: []string{"*"}, Cost: bcrypt.MinCost}); err != nil {
		t.Fatal(err)
	}
	for _, spec := range []ClientSpec{{Name: "bad name", Agents: []string{"1"}}, {Name: "x"}, {Name: "x", Agents: []string{"1"}, Destinations: []string{"::::"}}} {
		if _, err := AddClient(path, spec); err == nil {
			t.Errorf("AddClient(%+v) accepted", spec)
		}
	}
	f, err := OpenClientsFile(path)
	if err != nil {
		t.Fatal(err)
	}
	id, err := WithClients(NoAuth(), f).Client(Credentials{User: "site-3", Password: "ci:" + secret})
	if err != nil || id.Name != "ci" || id.Expires.IsZero() || !id.HasDestinations() {
		t.Fatalf("the new client: %+v, %v", id, err)
	}
	if err := RemoveClient(path, "ci"); err != nil {
		t.Fatal(err)
	}
	if err := RemoveClient(path, "ci"); err == nil {
		t.Error("removed twice")
	}
	f, err = OpenClientsFile(path)
	if err != nil || f.Set().Len() != 1 || f.Set().clients["ops"] == nil {
		t.Fatalf("after remove: %v", err)
	}
}

func TestAgentPatterns(t *testing.T) {
	tests := []struct {
		pattern, id string
		want        bool
	}{
		{"4711", "4711", true},
		{"4711", "47111", false},
		{"*", "anything", true},
		{"site-*", "site-", true},
		{"site-*", "site-7", true},
		{"site-*", "xsite-7", false},
		{"*-eu", "a-eu", true},
		{"a*b*c", "aXbYc", true},
		{"a*b*c", "aXbY", false},
		{"**", "", true},
	}
	for _, tc := range tests {
		if got := matchWildcard(tc.pattern, tc.id); got != tc.want {
			t.Errorf("%q matches %q: %v, want %v", tc.pattern, tc.id, got, tc.want)
		}
	}
	ps, err := ParseAgentPatterns([]string{"4711, site-*", "*-eu"})
	if err != nil || !slices.Equal(ps, AgentPatterns{"4711", "site-*", "*-eu"}) {
		t.Errorf("patterns %q, %v", ps, err)
	}
	if _, err := ParseAgentPatterns([]string{"a:*"}); err == nil || !strings.Contains(err.Error(), "contains ':'") {
		t.Errorf("a pattern with ':': %v", err)
	}
	if _, err := ParseAgentPatterns([]string{" , "}); err == nil {
		t.Error("no patterns accepted")
	}
	if _, err := ParseAgentPatterns([]string{strings.Repeat("a,", 300)}); err == nil {
		t.Error("300 patterns accepted")
	}
}

func TestParseRevoked(t *testing.T) {
	s, err := ParseRevoked([]byte("# revoked\n\n  abc  \nZ-9_x\n"))
	if err != nil || !s.Has("abc") || !s.Has("Z-9_x") || s.Has("") || s.Has("#") || len(s.ids) != 2 {
		t.Fatalf("%v, %+v", err, s)
	}
	for _, bad := range []string{"a b\n", "a\x00\n", strings.Repeat("a", 257), "ü\n", strings.Repeat("\n", MaxRevokedFileBytes+1)} {
		if _, err := ParseRevoked([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	k := testKeys().ec
	path := filepath.Join(t.TempDir(), "revoked")
	writeFile(t, path, nil)
	rf, err := OpenRevokedFile(path)
	if err != nil {
		t.Fatal(err)
	}
	a := JWT(NewVerifierWith(VerifierConfig{Keys: []KeySource{NewStaticKey(k.Public())}, Revoked: rf}))
	tok := mustSign(t, k, TokenOptions{AgentID: "4711", Role: RoleClient, Duration: time.Hour, ID: "t1"})
	id, err := a.Client(Credentials{User: "4711", Password: tok})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, []byte("t1\n"))
	apply, err := rf.Check()
	if err != nil || apply == nil {
		t.Fatal(err)
	}
	apply()
	if err := id.Check("4711", "", time.Now()); !errors.Is(err, ErrRevoked) {
		t.Errorf("open tunnel of a revoked token: %v", err)
	}
	if _, err := a.Client(Credentials{User: "4711", Password: tok}); !errors.Is(err, ErrRevoked) || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("revoked token: %v", err)
	}
}

// TestClientTokenPolicy: agent_id as a list of patterns, another claim
// named by AgentsClaim, and destinations.
func TestClientTokenPolicy(t *testing.T) {
	k := testKeys().ec
	tok := mustSign(t, k, TokenOptions{AgentID: "4711", Agents: []string{"site-*"}, Role: RoleClient,
		Destinations: []string{"*.internal:443"}, Duration: time.Hour})
	a := JWT(NewVerifier(k.Public(), ""))
	id, err := a.Client(Credentials{User: "site-1", Password: tok})
	if err != nil || !id.AllowedDestination("a.internal", 443) || id.AllowedDestination("a.internal", 80) {
		t.Fatalf("%+v, %v", id, err)
	}
	if _, err := a.Client(Credentials{User: "4712", Password: tok}); err == nil || !strings.Contains(err.Error(), "not among the token's agents") {
		t.Errorf("agent outside the list: %v", err)
	}
	// A provider's groups claim.
	groups := signRaw(t, jwt.SigningMethodES256, jwt.MapClaims{"role": "client", "groups": []string{"team-*"}, "exp": time.Now().Add(time.Hour).Unix(), "sub": "alice"}, k)
	g := JWT(NewVerifierWith(VerifierConfig{Keys: []KeySource{NewStaticKey(k.Public())}, AgentsClaim: "groups"}))
	id, err = g.Client(Credentials{User: "team-a", Password: groups})
	if err != nil || id.String() != "jwt:alice" {
		t.Fatalf("groups claim: %v, %v", id, err)
	}
	if _, err := a.Client(Credentials{User: "team-a", Password: groups}); err == nil || !strings.Contains(err.Error(), "no agent_id claim") {
		t.Errorf("no agent_id claim: %v", err)
	}
	if _, err := Sign(k, TokenOptions{AgentID: "1", Role: RoleAgent, Destinations: []string{"a:1"}, Duration: time.Hour}); err == nil {
		t.Error("agent token with destinations")
	}
	if _, err := Sign(k, TokenOptions{AgentID: "1", Agents: []string{"2"}, Role: RoleAgent, Duration: time.Hour}); err == nil {
		t.Error("agent token for two agents")
	}
}

func FuzzParseClients(f *testing.F) {
	f.Add(string(clientsYAML(entry("ci", `["4711", "site-*"]`, "    destinations: [\"*.internal:443\"]\n    expires: 2099-01-01T00:00:00Z\n"))))
	f.Add("clients:\n  - name: a\n    secret_hash: $2a$04$xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n    agents: '*'\n")
	f.Add("clients: {}\n")
	f.Add("&a [*a]")
	f.Fuzz(func(t *testing.T, data string) {
		s, err := ParseClients([]byte(data))
		if err != nil {
			return
		}
		for name, c := range s.clients {
			if CheckClientName(name) != nil || len(c.agents) == 0 || (c.dests != nil && c.dests.Empty()) {
				t.Fatalf("accepted client %q: %+v", name, c)
			}
			if _, err := bcrypt.Cost(c.hash); err != nil {
				t.Fatalf("accepted hash %q", c.hash)
			}
		}
	})
}

func FuzzParseRevoked(f *testing.F) {
	f.Add("# c\nabc\n\n  def \n")
	f.Add("a b\n")
	f.Add("\r\n\xff")
	f.Fuzz(func(t *testing.T, data string) {
		s, err := ParseRevoked([]byte(data))
		if err != nil {
			return
		}
		for id := range s.ids {
			if id == "" || checkJTI([]byte(id)) != nil || id[0] == '#' {
				t.Fatalf("accepted jti %q", id)
			}
		}
	})
}

func FuzzAgentPattern(f *testing.F) {
	f.Add("site-*", "site-1")
	f.Add("*a*a*a*a*", "aaaaaaaaaaaaaaaaaaaab")
	f.Fuzz(func(t *testing.T, pattern, id string) {
		if len(pattern) > 256 || len(id) > 256 {
			return
		}
		got := matchWildcard(pattern, id)
		if !strings.Contains(pattern, "*") && got != (pattern == id) {
			t.Fatalf("%q vs %q: %v", pattern, id, got)
		}
		if pattern == "*" && !got {
			t.Fatalf("* does not match %q", id)
		}
	})
}

// TestFailFloor: an unknown name (no hashing) and a wrong secret (a bcrypt
// check, then the cache) are both refused no sooner than FailFloor, with
// the same reason; the right secret is accepted.
func TestFailFloor(t *testing.T) {
	setFailFloor(t, 150*time.Millisecond)
	path := filepath.Join(t.TempDir(), "clients.yaml")
	writeFile(t, path, clientsYAML(entry("ci", `["*"]`, "")))
	f, err := OpenClientsFile(path)
	if err != nil {
		t.Fatal(err)
	}
	a := WithClients(NoAuth(), f)
	for _, pw := range []string{"nobody:s3cret", "ci:wrong", "ci:wrong"} {
		start := time.Now()
		_, err := a.Client(Credentials{User: "1", Password: pw})
		if d := time.Since(start); d < FailFloor {
			t.Errorf("%s refused after %s, want at least %s", pw, d, FailFloor)
		}
		if err == nil || !strings.HasSuffix(err.Error(), ": unknown client or wrong secret") {
			t.Errorf("%s: %v", pw, err)
		}
	}
	if _, err := a.Client(Credentials{User: "1", Password: "ci:s3cret"}); err != nil {
		t.Errorf("right secret: %v", err)
	}
}

// TestCheckSkipsUnchangedFile: Check reads a policy file again only when
// its size, modification time or identity changed, or it was modified
// within stampSettle (a coarse timestamp cannot hide a quick rewrite);
// a file replaced by a rename is read again.
func TestCheckSkipsUnchangedFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "revoked")
	writeFile(t, path, []byte("aaa\n"))
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	f, err := OpenRevokedFile(path)
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, want bool) {
		t.Helper()
		apply, err := f.Check()
		if err != nil {
			t.Fatal(err)
		}
		if got := apply != nil; got != want {
			t.Fatalf("%s: change seen %v, want %v", what, got, want)
		}
		if apply != nil {
			apply()
		}
	}
	// Rewritten in place, same size, its old time put back: not read.
	writeFile(t, path, []byte("bbb\n"))
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	check("same size and time, an hour old", false)
	if !f.Has("aaa") {
		t.Fatal("the unread change took effect")
	}
	// The same, modified just now: read.
	now := time.Now()
	if err := os.Chtimes(path, now, now); err != nil {
		t.Fatal(err)
	}
	check("modified just now", true)
	if !f.Has("bbb") || f.Has("aaa") {
		t.Fatal("the change did not take effect")
	}
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	check("the old time put back (read, nothing changed)", false)
	// Replaced by a rename, same size and time: another file, read.
	next := filepath.Join(dir, "next")
	writeFile(t, next, []byte("ccc\n"))
	if err := os.Chtimes(next, old, old); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, path); err != nil {
		t.Fatal(err)
	}
	check("replaced by a rename", true)
	if !f.Has("ccc") {
		t.Fatal("the replacement did not take effect")
	}
	// A size change is read, whatever the time.
	writeFile(t, path, []byte("dddd\n"))
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	check("another size", true)
}
