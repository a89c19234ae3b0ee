package tlsconf

import (
	"bytes"
	"crypto/x509"
	"net/url"
	"os"
	"path/filepath"
	"testing"
)

func TestAgentURIRoundTrip(t *testing.T) {
	for _, id := range []string{"a1", "site/7", "with space", "ünïcødé", "100%", "a#b?c", "x.y-z_~", "$&+=@"} {
		u := AgentURI(id)
		// What a certificate carries is the string; parse it back as x509 does.
		parsed, err := url.Parse(u.String())
		if err != nil {
			t.Fatalf("%q: %s does not parse: %v", id, u, err)
		}
		got, ok := AgentIDFromURI(parsed)
		if !ok || got != id {
			t.Errorf("%q: AgentIDFromURI(%s) = %q, %v", id, u, got, ok)
		}
		for _, r := range u.String() {
			if r > 0x7e || r < 0x21 {
				t.Errorf("%q: %s is not printable ASCII (a URI SAN is an IA5String)", id, u)
				break
			}
		}
	}
}

func TestAgentIDFromURI(t *testing.T) {
	for in, want := range map[string]string{
		"urn:reverse-http:agent:a1":     "a1",
		"URN:Reverse-HTTP:Agent:a1":     "a1",
		"urn:reverse-http:agent:a%2Fb":  "a/b",
		"urn:reverse-http:agent:":       "",
		"urn:reverse-http:agent:a%zz":   "",
		"urn:reverse-http:agent:a?x=1":  "",
		"urn:reverse-http:agent:a#frag": "",
		"urn:reverse-http:agents:a1":    "",
		"urn:other:agent:a1":            "",
		"spiffe://reverse-http/agent/a": "",
		"https://a1":                    "",
		"a1":                            "",
	} {
		u, err := url.Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := AgentIDFromURI(u)
		if got != want || ok != (want != "") {
			t.Errorf("AgentIDFromURI(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}

func TestAgentCertFiles(t *testing.T) {
	cert, key, err := AgentCertFiles("edge-1")
	if err != nil || cert != "agent-edge-1.pem" || key != "agent-edge-1-key.pem" {
		t.Errorf("AgentCertFiles(edge-1) = %q, %q, %v", cert, key, err)
	}
	for _, id := range []string{"", "a/b", `a\b`, "a\x00b", ".", "..", "key", "edge-1-key"} {
		if _, _, err := AgentCertFiles(id); err == nil {
			t.Errorf("AgentCertFiles(%q) accepted", id)
		}
	}
}

func TestWriteAgentCert(t *testing.T) {
	dir := t.TempDir()
	if _, err := WriteAgentCert(dir, "a1", false); err == nil {
		t.Fatal("WriteAgentCert without a CA in dir succeeded")
	}
	if _, err := WriteLocalPKI(dir, []string{"localhost"}, false); err != nil {
		t.Fatal(err)
	}
	const id = "site 7 ü"
	files, err := WriteAgentCert(dir, id, false)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath := filepath.Join(dir, "agent-"+id+".pem"), filepath.Join(dir, "agent-"+id+"-key.pem")
	if len(files) != 2 || files[0] != keyPath || files[1] != certPath {
		t.Fatalf("wrote %q", files)
	}
	if st, err := os.Stat(keyPath); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key mode: %v %v", st, err)
	}
	first, err := os.ReadFile(certPath)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := parseCertPEM(first)
	if err != nil {
		t.Fatal(err)
	}
	c := certs[0]
	if c.Subject.CommonName != id {
		t.Errorf("CN %q, want %q", c.Subject.CommonName, id)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != "urn:reverse-http:agent:site%207%20%C3%BC" {
		t.Errorf("URIs %v", c.URIs)
	}
	if len(c.DNSNames) != 0 || len(c.IPAddresses) != 0 {
		t.Errorf("unexpected SANs %v %v", c.DNSNames, c.IPAddresses)
	}
	if len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("ext key usage %v, want client auth only", c.ExtKeyUsage)
	}

	// Kept when valid; replaced with force, or when the CA changed.
	if files, err := WriteAgentCert(dir, id, false); err != nil || len(files) != 0 {
		t.Errorf("second run: %q %v, want the files kept", files, err)
	}
	if _, err := WriteAgentCert(dir, id, true); err != nil {
		t.Fatal(err)
	}
	second, _ := os.ReadFile(certPath)
	if bytes.Equal(first, second) {
		t.Error("force kept the certificate")
	}
	if _, err := WriteLocalPKI(dir, []string{"localhost"}, true); err != nil {
		t.Fatal(err)
	}
	if files, err := WriteAgentCert(dir, id, false); err != nil || len(files) != 2 {
		t.Errorf("after a new CA: %q %v, want the files rewritten", files, err)
	}
	// A certificate for another ID under this name is replaced.
	other, otherKey, err := AgentCertFiles("other")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := WriteAgentCert(dir, "other", false); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(certPath)
	keyData, _ := os.ReadFile(keyPath)
	os.WriteFile(filepath.Join(dir, other), data, 0o644)
	os.WriteFile(filepath.Join(dir, otherKey), keyData, 0o600)
	if files, err := WriteAgentCert(dir, "other", false); err != nil || len(files) != 2 {
		t.Errorf("certificate of another ID: %q %v, want it replaced", files, err)
	}
	if _, err := WriteAgentCert(dir, "a/../../x", false); err == nil {
		t.Error("an ID with a path separator was written")
	}
}
