package tlsconf

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// AgentURIPrefix starts the URI SAN that names an agent ID in a client
// certificate: urn:reverse-http:agent:<ID>, the ID percent-encoded (RFC
// 3986) where URI syntax needs it, e.g. urn:reverse-http:agent:site%2F7 for
// the ID "site/7". See AgentURI and AgentIDFromURI.
const AgentURIPrefix = "urn:reverse-http:agent:"

const agentNSS = "reverse-http:agent:" // AgentURIPrefix after "urn:"

// AgentURI is the URI SAN naming agent id: AgentURIPrefix followed by id
// percent-encoded as a URI path segment (url.PathEscape: anything but
// ASCII letters, digits and -._~$&+=:@ is escaped, non-ASCII as its UTF-8
// bytes).
func AgentURI(id string) *url.URL {
	return &url.URL{Scheme: "urn", Opaque: agentNSS + url.PathEscape(id)}
}

// AgentIDFromURI returns the agent ID a URI SAN names, if it has the form
// of AgentURI: scheme "urn" and namespace "reverse-http:agent:" (both
// compared without regard to case), no query or fragment, and an ID whose
// percent-escapes decode. The ID itself is returned decoded and compared by
// callers byte for byte.
func AgentIDFromURI(u *url.URL) (string, bool) {
	if u == nil || !strings.EqualFold(u.Scheme, "urn") || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return "", false
	}
	if len(u.Opaque) <= len(agentNSS) || !strings.EqualFold(u.Opaque[:len(agentNSS)], agentNSS) {
		return "", false
	}
	id, err := url.PathUnescape(u.Opaque[len(agentNSS):])
	if err != nil || id == "" {
		return "", false
	}
	return id, true
}

// AgentCertFiles are the names WriteAgentCert gives the certificate and
// key of agent id: agent-<ID>.pem and agent-<ID>-key.pem. It refuses an ID
// that cannot be part of a file name (a path separator, a NUL, "." or
// "..") or whose files would be another's: "key" (agent-key.pem is the
// generic agent key) and IDs ending in "-key" (agent-X-key.pem is X's key).
func AgentCertFiles(id string) (cert, key string, err error) {
	switch {
	case id == "":
		return "", "", errors.New("empty")
	case strings.ContainsAny(id, `/\`+"\x00"):
		return "", "", errors.New("contains a path separator, so it cannot be part of a file name")
	case id == "." || id == "..":
		return "", "", errors.New("not a usable file name part")
	case id == "key" || strings.HasSuffix(id, "-key"):
		return "", "", fmt.Errorf("the certificate file agent-%s.pem would be taken for a key file; issue it with another CA tool", id)
	}
	return "agent-" + id + ".pem", "agent-" + id + "-key.pem", nil
}

// IssueAgent makes a client certificate for agent id signed by ca: CN id,
// the URI SAN AgentURI(id), ExtKeyUsageClientAuth, valid for one year (at
// most until the CA expires), with a new ECDSA P-256 key.
func (ca *CA) IssueAgent(id string) (certPEM, keyPEM []byte, err error) {
	tmpl, err := leafTemplate(id, nil, true, time.Now())
	if err != nil {
		return nil, nil, err
	}
	tmpl.URIs = []*url.URL{AgentURI(id)}
	return ca.sign(tmpl)
}

// WriteAgentCert writes a client certificate for agent id and its key into
// dir (see AgentCertFiles), issued by the CA that WriteLocalPKI wrote there
// (ca.pem and ca-key.pem). Unless force, existing files are kept when the
// key matches the certificate, which the CA verifies for client auth and
// which names id (CN and URI SAN). Keys are written 0600, certificates
// 0644, each atomically. It returns the paths written, none when kept.
func WriteAgentCert(dir, id string, force bool) ([]string, error) {
	certName, keyName, err := AgentCertFiles(id)
	if err != nil {
		return nil, err
	}
	ca, err := loadLocalCA(dir)
	if err != nil {
		return nil, err
	}
	certPath, keyPath := filepath.Join(dir, certName), filepath.Join(dir, keyName)
	if !force && agentCertValid(ca, certPath, keyPath, id) {
		return nil, nil
	}
	certPEM, keyPEM, err := ca.IssueAgent(id)
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(certPath, certPEM, 0o644); err != nil {
		return []string{keyPath}, err
	}
	return []string{keyPath, certPath}, nil
}

// loadLocalCA reads the CA WriteLocalPKI wrote into dir.
func loadLocalCA(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, LocalCACert), filepath.Join(dir, LocalCAKey)
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	kp, err := keyPair(file{setting(LocalCACert), certPath}, certPEM, file{setting(LocalCAKey), keyPath}, keyPEM, "", discardLogger)
	if err != nil {
		return nil, err
	}
	key, ok := kp.PrivateKey.(crypto.Signer)
	if !ok || !kp.Leaf.IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate", certPath)
	}
	return &CA{Cert: kp.Leaf, Key: key, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// agentCertValid reports whether certPath and keyPath hold a key pair that
// ca verifies for client auth and that names agent id.
func agentCertValid(ca *CA, certPath, keyPath, id string) bool {
	certPEM, err1 := os.ReadFile(certPath)
	keyPEM, err2 := os.ReadFile(keyPath)
	if err1 != nil || err2 != nil {
		return false
	}
	kp, err := keyPair(file{"cert", certPath}, certPEM, file{"key", keyPath}, keyPEM, "", discardLogger)
	if err != nil {
		return false
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if _, err := kp.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return false
	}
	if kp.Leaf.Subject.CommonName != id {
		return false
	}
	for _, u := range kp.Leaf.URIs {
		if got, ok := AgentIDFromURI(u); ok && got == id {
			return true
		}
	}
	return false
}
