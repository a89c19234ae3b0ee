package cli_test

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/cli"
	"github.com/reverse-http/reverse-http/internal/tlsconf"
)

// TestVersion: -V prints the build as JSON, like the reference, and exits
// 0 without running a command; `version` prints one line.
func TestVersion(t *testing.T) {
	isolate(t)
	want := map[string]string{"version": cli.Version, "commit": cli.Commit, "date": cli.Date}
	for _, args := range [][]string{{"-V"}, {"--version-json"}, {"proxy", "-V"}} {
		r := runCmd(t, "", waitTimeout, args...)
		if r.code != 0 {
			t.Fatalf("%q exited with %d; stderr:\n%s", args, r.code, r.stderr)
		}
		var got map[string]string
		if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
			t.Fatalf("%q printed %q: %v", args, r.stdout, err)
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%q: %s=%q, want %q (all: %s)", args, k, got[k], v, r.stdout)
			}
		}
		if strings.Count(r.stdout, "\n") != 1 {
			t.Errorf("%q printed %q, want one line", args, r.stdout)
		}
	}
	r := mustRun(t, "version")
	if !strings.HasPrefix(r.stdout, "reverse-http ") || !strings.Contains(r.stdout, cli.Version) || strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("version printed %q, want one line: reverse-http %s ...", r.stdout, cli.Version)
	}
}

// TestAuthRoundTrip: a private key from `auth key private`, its public key
// from `auth key public` through stdin and stdout, and a token from `auth jwt
// token` that the public key verifies, with the reference's claims.
func TestAuthRoundTrip(t *testing.T) {
	for _, algo := range []string{"", "ES256", "RS256"} { // "" is the default, ES256
		name := algo
		if name == "" {
			name = "default"
		}
		t.Run(name, func(t *testing.T) {
			dir := isolate(t)
			priv := filepath.Join(dir, "priv.pem")
			args := []string{"auth", "key", "private", "-o", priv}
			if algo != "" {
				args = append(args, "--algo", algo)
			}
			mustRun(t, args...)
			st, err := os.Stat(priv)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("private key has mode %v, want 0600", st.Mode().Perm())
			}
			privPEM, err := os.ReadFile(priv)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(privPEM, []byte("PRIVATE KEY-----")) {
				t.Fatalf("not a private key PEM:\n%s", privPEM)
			}

			r := runCmd(t, string(privPEM), waitTimeout, "auth", "key", "public", "-i", "-", "-o", "-")
			if r.code != 0 {
				t.Fatalf("auth key public exited with %d; stderr:\n%s", r.code, r.stderr)
			}
			pub, err := auth.ParsePublicKey([]byte(r.stdout))
			if err != nil {
				t.Fatalf("auth key public printed %q: %v", r.stdout, err)
			}

			before := time.Now().Add(-time.Second).Unix()
			r = mustRun(t, "auth", "jwt", "token", "--agent-id", "4711", "--role", "agent",
				"--audience", "aud", "--duration", "1h", "-i", priv, "-o", "-")
			token := strings.TrimSpace(r.stdout)
			parts := strings.Split(token, ".")
			if len(parts) != 3 {
				t.Fatalf("not a JWT: %q", r.stdout)
			}
			payload, err := base64.RawURLEncoding.DecodeString(parts[1])
			if err != nil {
				t.Fatalf("payload %q: %v", parts[1], err)
			}
			var claims map[string]any
			if err := json.Unmarshal(payload, &claims); err != nil {
				t.Fatalf("payload %s: %v", payload, err)
			}
			for k, want := range map[string]string{"agent_id": "4711", "role": "agent"} {
				if got, _ := claims[k].(string); got != want {
					t.Errorf("%s = %v, want %q (payload %s)", k, claims[k], want, payload)
				}
			}
			switch aud := claims["aud"].(type) {
			case string:
				if aud != "aud" {
					t.Errorf("aud = %q, want aud", aud)
				}
			case []any:
				if len(aud) != 1 || aud[0] != "aud" {
					t.Errorf("aud = %v, want [aud]", aud)
				}
			default:
				t.Errorf("aud = %v, want aud (payload %s)", claims["aud"], payload)
			}
			for _, k := range []string{"iss", "sub", "nbf", "iat"} {
				if _, ok := claims[k]; ok {
					t.Errorf("claim %s in %s: want compact claims (agent_id, role, exp, jti, aud)", k, payload)
				}
			}
			if jti, _ := claims["jti"].(string); len(jti) != 11 {
				t.Errorf("jti = %v, want 8 random bytes, base64url (payload %s)", claims["jti"], payload)
			}
			exp, _ := claims["exp"].(float64)
			if int64(exp) < before+3600 || int64(exp) > time.Now().Unix()+3601 {
				t.Errorf("exp = %v; want 1h from now (payload %s)", exp, payload)
			}

			wantAlg := algo
			if wantAlg == "" {
				wantAlg = "ES256"
			}
			parsed, err := jwt.Parse(token, func(*jwt.Token) (any, error) { return pub, nil },
				jwt.WithValidMethods([]string{wantAlg}), jwt.WithAudience("aud"), jwt.WithExpirationRequired())
			if err != nil || !parsed.Valid {
				t.Fatalf("the public key does not verify the token: %v", err)
			}
		})
	}
}

// TestAuthDefaultFiles: the tools read and write the reference's default
// files in the working directory, tokens and private keys readable only by
// the owner, and the proxy finds the public key there.
func TestAuthDefaultFiles(t *testing.T) {
	dir := isolate(t)
	mustRun(t, "auth", "key", "private")
	mustRun(t, "auth", "key", "public")
	mustRun(t, "auth", "jwt", "token", "--agent-id=4711")
	for name, mode := range map[string]os.FileMode{
		"auth-key-private.pem": 0o600,
		"auth-key-public.pem":  0o644,
		"jwt.b64":              0o600,
	} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("default output: %v", err)
			continue
		}
		if st.Mode().Perm()&^mode != 0 {
			t.Errorf("%s has mode %v, want at most %v", name, st.Mode().Perm(), mode)
		}
	}
	pubPEM, err := os.ReadFile(filepath.Join(dir, "auth-key-public.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := auth.ParsePublicKey(pubPEM); err != nil {
		t.Errorf("auth-key-public.pem: %v", err)
	}
	// A token written to a file verifies with that public key.
	tok, err := os.ReadFile(filepath.Join(dir, "jwt.b64"))
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := auth.ParsePublicKey(pubPEM)
	if _, err := auth.NewVerifier(pub, "").Verify(strings.TrimSpace(string(tok)), auth.RoleClient); err != nil {
		t.Errorf("default token (role client) does not verify: %v", err)
	}
	r := start(t, proxyArgs("--auth.type=jwt")...)
	if line := r.waitFor(proxyReady); logAttr(t, line, "auth") != "jwt" {
		t.Errorf("want auth=jwt: %s", line)
	}
	if code := r.stop(); code != 0 {
		t.Fatalf("proxy --auth.type=jwt with ./auth-key-public.pem exited %d; stderr:\n%s", code, r.stderr)
	}
}

// TestAuthTokenRefused: a token that would be useless or dangerous is not
// signed, and nothing is written.
func TestAuthTokenRefused(t *testing.T) {
	dir := isolate(t)
	f := newFiles(t)
	out := filepath.Join(dir, "token.jwt")
	for _, tc := range []struct {
		extra []string
		want  string
	}{
		{[]string{"--duration", "0"}, "--duration"},
		{[]string{"--duration=-1m"}, "--duration"},
		{[]string{"--role", "admin"}, "--role"},
	} {
		args := append([]string{"auth", "jwt", "token", "--agent-id=4711", "-i", f.authPrivate, "-o", out}, tc.extra...)
		r := runCmd(t, "", waitTimeout, args...)
		if r.code == 0 {
			t.Errorf("%q exited 0", args)
		}
		if !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%q: stderr does not name %s:\n%s", args, tc.want, r.stderr)
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("%q wrote %s", args, out)
		}
	}
}

// TestCerts: `certs --dir D` writes the CA, proxy and agent certificates and
// keys; a second run keeps them and says so; --force replaces them.
func TestCerts(t *testing.T) {
	dir := filepath.Join(isolate(t), "pki")
	names := []string{"ca.pem", "ca-key.pem", "proxy.pem", "proxy-key.pem", "agent.pem", "agent-key.pem"}

	r := mustRun(t, "certs", "--dir", dir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if want := slices.Sorted(slices.Values(names)); !slices.Equal(got, want) {
		t.Fatalf("certs wrote %v, want %v", got, want)
	}
	first := map[string][]byte{}
	for _, n := range names {
		p := filepath.Join(dir, n)
		if !strings.Contains(r.stdout, p) {
			t.Errorf("stdout does not mention %s:\n%s", p, r.stdout)
		}
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(n, "-key.pem") && st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", n, st.Mode().Perm())
		}
		if first[n], err = os.ReadFile(p); err != nil {
			t.Fatal(err)
		}
	}

	r = mustRun(t, "certs", "--dir", dir)
	if !strings.Contains(r.stdout, "kept") {
		t.Errorf("second run printed %q, want that it kept the files", r.stdout)
	}
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(data, first[n]) {
			t.Errorf("second run without --force changed %s", n)
		}
	}

	mustRun(t, "certs", "--dir", dir, "--force")
	data, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(data, first["ca.pem"]) {
		t.Error("--force kept the old CA")
	}

	// The files are what the proxy and agent flags want.
	pr := start(t, proxyArgs(
		"--agent-server.tls.file.cert="+filepath.Join(dir, "proxy.pem"),
		"--agent-server.tls.file.key="+filepath.Join(dir, "proxy-key.pem"),
		"--agent-server.tls.file.client-ca="+filepath.Join(dir, "ca.pem"),
	)...)
	pr.waitFor(proxyReady)
	if code := pr.stop(); code != 0 {
		t.Fatalf("proxy with the certs exited %d; stderr:\n%s", code, pr.stderr)
	}
}

// TestCertsAgentID: `certs --agent-id ID` (repeatable) also writes
// agent-ID.pem and agent-ID-key.pem, a client certificate naming ID in its
// CN and URI SAN; a second run keeps them; a new CA reissues them; an ID
// that is not a valid agent ID or file name part is refused before
// anything is written.
func TestCertsAgentID(t *testing.T) {
	dir := filepath.Join(isolate(t), "pki")
	ids := []string{"edge.1", "site 7"} // one flag per ID
	args := []string{"certs", "--dir", dir}
	for _, id := range ids {
		args = append(args, "--agent-id", id)
	}
	r := mustRun(t, args...)
	first := map[string][]byte{}
	for _, id := range ids {
		for _, n := range []string{"agent-" + id + ".pem", "agent-" + id + "-key.pem"} {
			p := filepath.Join(dir, n)
			if !strings.Contains(r.stdout, "wrote "+p) {
				t.Errorf("stdout does not mention %s:\n%s", p, r.stdout)
			}
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			first[n] = data
		}
		block, _ := pem.Decode(first["agent-"+id+".pem"])
		if block == nil {
			t.Fatalf("agent-%s.pem: no PEM", id)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if c.Subject.CommonName != id || len(c.URIs) != 1 || c.URIs[0].String() != tlsconf.AgentURI(id).String() {
			t.Errorf("agent-%s.pem: CN %q, URIs %v", id, c.Subject.CommonName, c.URIs)
		}
	}

	r = mustRun(t, args...)
	if !strings.Contains(r.stdout, "kept") || strings.Contains(r.stdout, "wrote") {
		t.Errorf("second run printed %q, want that it kept the files", r.stdout)
	}
	mustRun(t, append(args, "--force")...)
	for n, data := range first {
		if now, _ := os.ReadFile(filepath.Join(dir, n)); bytes.Equal(now, data) {
			t.Errorf("--force kept %s", n)
		}
	}

	for _, bad := range []string{"a/b", "a:b", "", "x-key", "a\nb"} {
		empty := filepath.Join(t.TempDir(), "pki")
		r := runCmd(t, "", waitTimeout, "certs", "--dir", empty, "--agent-id", bad)
		if r.code == 0 || !strings.Contains(r.stderr, "--agent-id") {
			t.Errorf("--agent-id %q: exit %d, stderr %q; want an error naming --agent-id", bad, r.code, r.stderr)
		}
		if _, err := os.Stat(empty); err == nil {
			t.Errorf("--agent-id %q: wrote %s before refusing", bad, empty)
		}
	}
}

// TestAuthClientFile: `auth client add` creates the file, appends a
// client and prints NAME:SECRET once; bad names, patterns and durations
// are refused naming the flag; `auth client remove` removes one.
func TestAuthClientFile(t *testing.T) {
	dir := isolate(t)
	file := filepath.Join(dir, "clients.yaml")
	r := mustRun(t, "auth", "client", "add", "--file", file, "--agents", "4711,site-*", "--destinations", "*.internal:443", "--expires", "24h", "ci")
	name, secret, ok := strings.Cut(strings.TrimSpace(r.stdout), ":")
	if !ok || name != "ci" || len(secret) != 32 {
		t.Fatalf("stdout %q, want ci:SECRET", r.stdout)
	}
	mustRun(t, "auth", "client", "add", "--file", file, "--agents", "*", "ops")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), secret) || !strings.Contains(string(data), "secret_hash: $2a$") || !strings.Contains(string(data), "expires:") {
		t.Errorf("file holds the secret or no bcrypt hash:\n%s", data)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"add", "--file", file, "--agents", "*", "ci"}, "exists"},
		{[]string{"add", "--file", file, "--agents", "a:b", "x"}, "--agents"},
		{[]string{"add", "--file", file, "--agents", "*", "--destinations", "*.x:0", "x"}, "--destinations"},
		{[]string{"add", "--file", file, "--agents", "*", "--expires=-1h", "x"}, "--expires"},
		{[]string{"add", "--file", file, "--agents", "*", "bad name"}, "NAME: character ' ' at 3"},
		{[]string{"remove", "--file", file, "nobody"}, "no client"},
	} {
		r := runCmd(t, "", waitTimeout, append([]string{"auth", "client"}, tc.args...)...)
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want an error with %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
	mustRun(t, "auth", "client", "remove", "--file", file, "ci")
	if data, _ := os.ReadFile(file); strings.Contains(string(data), "name: ci") || !strings.Contains(string(data), "name: ops") {
		t.Errorf("after remove:\n%s", data)
	}
}

// TestAuthTokenPolicy: --agent-id repeated and --destinations make a
// client token with a list of agents and a destinations claim.
func TestAuthTokenPolicy(t *testing.T) {
	isolate(t)
	f := newFiles(t)
	r := mustRun(t, "auth", "jwt", "token", "-i", f.authPrivate, "-o", "-", "--agent-id", "4711", "--agent-id", "site-*", "--destinations", "*.internal:443,10.0.0.0/8")
	claims := parseClaims(t, r.stdout)
	if got, _ := json.Marshal(claims["agent_id"]); string(got) != `["4711","site-*"]` {
		t.Errorf("agent_id %s", got)
	}
	if got, _ := json.Marshal(claims["destinations"]); string(got) != `["*.internal:443","10.0.0.0/8"]` {
		t.Errorf("destinations %s", got)
	}
	for _, args := range [][]string{
		{"--agent-id", "1", "--agent-id", "2", "--role", "agent"},
		{"--agent-id", "1", "--role", "agent", "--destinations", "a:1"},
		{"--agent-id", "1", "--destinations", "a:0"},
	} {
		r := runCmd(t, "", waitTimeout, append([]string{"auth", "jwt", "token", "-i", f.authPrivate, "-o", "-"}, args...)...)
		if r.code == 0 {
			t.Errorf("%q exited 0", args)
		}
	}
}
