package tlsconf

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// clockSkew backdates NotBefore so that a certificate is valid at once on a
// peer whose clock is slightly behind.
const clockSkew = 5 * time.Minute

const (
	leafValidity = 1  // years
	caValidity   = 10 // years
)

// SelfSigned makes an in-memory ECDSA P-256 server certificate for hosts (IP
// addresses become IP SANs, anything else DNS SANs), valid for one year. It
// returns the certificate and its SHA-256 fingerprint (see Fingerprint), which
// clients can pin.
func SelfSigned(hosts []string) (tls.Certificate, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	cn := "reverse-http"
	if len(hosts) > 0 {
		cn = hosts[0]
	}
	tmpl, err := leafTemplate(cn, hosts, false, time.Now())
	if err != nil {
		return tls.Certificate{}, "", err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, "", fmt.Errorf("create certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, Fingerprint(der), nil
}

// Fingerprint returns the SHA-256 fingerprint of a DER certificate as
// colon-separated upper-case hex, the format of
// `openssl x509 -noout -fingerprint -sha256`.
func Fingerprint(der []byte) string {
	const digits = "0123456789ABCDEF"
	sum := sha256.Sum256(der)
	b := make([]byte, 0, 3*len(sum)-1)
	for i, v := range sum {
		if i > 0 {
			b = append(b, ':')
		}
		b = append(b, digits[v>>4], digits[v&0x0f])
	}
	return string(b)
}

// CA is a local certificate authority for the quickstart and for tests.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte // "CERTIFICATE"
	KeyPEM  []byte // PKCS#8 "PRIVATE KEY"
}

// NewCA makes an ECDSA P-256 CA certificate valid for ten years.
func NewCA(commonName string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.AddDate(caValidity, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, CertPEM: encodeCert(der), KeyPEM: keyPEM}, nil
}

// Issue makes a leaf certificate signed by ca, valid for one year (at most
// until the CA expires), with a new ECDSA P-256 key. client selects
// ExtKeyUsageClientAuth instead of ExtKeyUsageServerAuth. hosts become SANs:
// IP addresses as IP SANs, anything else as DNS names.
func (ca *CA) Issue(commonName string, hosts []string, client bool) (certPEM, keyPEM []byte, err error) {
	tmpl, err := leafTemplate(commonName, hosts, client, time.Now())
	if err != nil {
		return nil, nil, err
	}
	return ca.sign(tmpl)
}

// sign issues tmpl with a new ECDSA P-256 key, its validity cut to the CA's.
func (ca *CA) sign(tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue certificate %q: %w", tmpl.Subject.CommonName, err)
	}
	if keyPEM, err = encodeKey(key); err != nil {
		return nil, nil, err
	}
	return encodeCert(der), keyPEM, nil
}

// RevocationList returns a PEM "X509 CRL" signed by ca that revokes serials,
// valid for one year. Its number grows with time, so a newer list supersedes
// an older one.
func (ca *CA) RevocationList(serials []*big.Int) ([]byte, error) {
	now := time.Now()
	tmpl := &x509.RevocationList{
		Number:     big.NewInt(now.UnixNano()),
		ThisUpdate: now.Add(-clockSkew),
		NextUpdate: now.AddDate(leafValidity, 0, 0),
	}
	for _, s := range serials {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: s, RevocationTime: now})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("create CRL: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemCRL, Bytes: der}), nil
}

func leafTemplate(commonName string, hosts []string, client bool, now time.Time) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	t := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.AddDate(leafValidity, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if client {
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			t.IPAddresses = append(t.IPAddresses, ip)
		} else {
			t.DNSNames = append(t.DNSNames, h)
		}
	}
	return t, nil
}

// randomSerial returns a random positive 128-bit serial number.
func randomSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	if s.Sign() == 0 { // a serial must be positive
		s.SetInt64(1)
	}
	return s, nil
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der})
}

func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}), nil
}

// Names of the files WriteLocalPKI writes.
const (
	LocalCACert    = "ca.pem"
	LocalCAKey     = "ca-key.pem"
	LocalProxyCert = "proxy.pem"
	LocalProxyKey  = "proxy-key.pem"
	LocalAgentCert = "agent.pem"
	LocalAgentKey  = "agent-key.pem"
)

// WriteLocalPKI writes a CA, a proxy (server) certificate for hosts and an
// agent (client) certificate with common name "agent" into dir:
// ca.pem, ca-key.pem, proxy.pem, proxy-key.pem, agent.pem, agent-key.pem.
// dir is created with mode 0700; keys are written 0600, certificates 0644,
// each atomically (temporary file and rename).
//
// Unless force, files that are already complete are kept: all six exist,
// every key matches its certificate, ca.pem verifies proxy.pem for server
// auth and agent.pem for client auth, and nothing has expired. Note that the
// hosts of an existing proxy.pem are not compared with hosts; use force to
// issue for new hosts. Otherwise all six are written anew.
//
// It returns the paths written, none when the existing files were kept.
func WriteLocalPKI(dir string, hosts []string, force bool) ([]string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if !force && localPKIValid(dir) {
		return nil, nil
	}
	ca, err := NewCA("reverse-http local CA")
	if err != nil {
		return nil, err
	}
	proxyCert, proxyKey, err := ca.Issue("proxy", hosts, false)
	if err != nil {
		return nil, err
	}
	agentCert, agentKey, err := ca.Issue("agent", nil, true)
	if err != nil {
		return nil, err
	}
	files := []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{LocalCAKey, ca.KeyPEM, 0o600},
		{LocalCACert, ca.CertPEM, 0o644},
		{LocalProxyKey, proxyKey, 0o600},
		{LocalProxyCert, proxyCert, 0o644},
		{LocalAgentKey, agentKey, 0o600},
		{LocalAgentCert, agentCert, 0o644},
	}
	var written []string
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := writeFileAtomic(p, f.data, f.perm); err != nil {
			return written, err
		}
		written = append(written, p)
	}
	return written, nil
}

// localPKIValid reports whether dir holds a complete, consistent local PKI.
func localPKIValid(dir string) bool {
	read := func(name string) []byte {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		return b
	}
	ca, err := parseCertPEM(read(LocalCACert))
	if err != nil {
		return false
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca[0])
	for _, p := range []struct {
		cert, key string
		usage     x509.ExtKeyUsage
	}{
		{LocalCACert, LocalCAKey, x509.ExtKeyUsageAny},
		{LocalProxyCert, LocalProxyKey, x509.ExtKeyUsageServerAuth},
		{LocalAgentCert, LocalAgentKey, x509.ExtKeyUsageClientAuth},
	} {
		kp, err := keyPair(file{setting(p.cert), p.cert}, read(p.cert), file{setting(p.key), p.key}, read(p.key), "", discardLogger)
		if err != nil {
			return false
		}
		opts := x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{p.usage}}
		if _, err := kp.Leaf.Verify(opts); err != nil {
			return false
		}
	}
	return true
}

func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.Remove(f.Name())
		}
	}()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err1 := f.Close(); err == nil {
		err = err1
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

var discardLogger = slog.New(slog.DiscardHandler)
