package tlsconf

import (
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDescribeKeepsPaths checks that Describe renames settings only, never
// text inside a path that happens to contain "tls.".
func TestDescribeKeepsPaths(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etc.tls.d")
	if _, err := WriteLocalPKI(dir, []string{"localhost"}, false); err != nil {
		t.Fatal(err)
	}
	p := localPKI{dir: dir}
	missing := filepath.Join(dir, "mytls.pem")
	// A key whose name contains "tls." and does not match the certificate.
	otherKey := filepath.Join(dir, "my.tls.file.key.pem")
	data, err := os.ReadFile(p.path(LocalAgentKey))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(otherKey, data, 0o600); err != nil {
		t.Fatal(err)
	}
	name := func(s string) string { return "--agent-server." + s }
	for _, tc := range []struct {
		name string
		err  func() error
		want string
		is   error
	}{
		{"missing file", func() error {
			_, err := Server(ServerFiles{Cert: missing, Key: p.path(LocalProxyKey)}, 0, nil)
			return err
		}, `--agent-server.tls.file.cert "` + missing + `": open ` + missing + `: no such file or directory`, fs.ErrNotExist},
		{"key not matching, two settings and two paths", func() error {
			_, err := Server(ServerFiles{Cert: p.path(LocalProxyCert), Key: otherKey}, 0, nil)
			return err
		}, `--agent-server.tls.file.key "` + otherKey + `": private key does not match the certificate in --agent-server.tls.file.cert "` + p.path(LocalProxyCert) + `"`, nil},
		{"settings only", func() error {
			_, err := Server(ServerFiles{Cert: p.path(LocalProxyCert)}, 0, nil)
			return err
		}, "--agent-server.tls.file.cert is set but --agent-server.tls.file.key is not", nil},
		{"wrong password, wrapped", func() error {
			return wrongPassword()
		}, "--agent-server.tls.key-password: x509: decryption password incorrect", x509.IncorrectPasswordError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.err()
			if err == nil {
				t.Fatal("no error")
			}
			if got := Describe(err, name); got != tc.want {
				t.Errorf("Describe:\n got %s\nwant %s", got, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("%v does not wrap %v", err, tc.is)
			}
			if plain := err.Error(); strings.Contains(plain, "--agent-server") {
				t.Errorf("Error() renamed settings: %s", plain)
			}
		})
	}
	if got := Describe(errors.New("open tls.pem: denied"), name); got != "open tls.pem: denied" {
		t.Errorf("Describe of a foreign error: %q", got)
	}
}
