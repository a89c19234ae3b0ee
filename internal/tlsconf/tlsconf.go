// Package tlsconf builds the TLS configurations of the proxy (server) and the
// agent (client) from PEM files, with the semantics of the reference's
// github.com/grepplabs/cert-source flags:
//
//	server: tls.file.cert, tls.file.key, tls.key-password,
//	        tls.file.client-ca, tls.file.client-crl, tls.refresh
//	client: tls.file.cert, tls.file.key, tls.key-password, tls.file.root-ca,
//	        tls.use-system-pool, tls.insecure-skip-verify, tls.refresh
//
// Files are re-read lazily: with a refresh interval, the first handshake after
// the interval has passed reads them again (no goroutine, nothing to stop). A
// reload that fails is logged and the previous material stays in use, so a
// half-written file never takes a running proxy down.
//
// It also makes the certificates a quickstart needs: a self-signed server
// certificate with its fingerprint, and a small local PKI (CA, proxy and agent
// certificates, CRLs).
package tlsconf

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Setting names, used in errors so that an operator knows which flag to fix.
// They are relative to the flag's prefix; Describe renders them in full.
const (
	settingCert        setting = "tls.file.cert"
	settingKey         setting = "tls.file.key"
	settingKeyPassword setting = "tls.key-password"
	settingClientCA    setting = "tls.file.client-ca"
	settingClientCRL   setting = "tls.file.client-crl"
	settingRootCA      setting = "tls.file.root-ca"
)

// setting is the name of a setting relative to its flag's prefix. In the
// arguments of errorf it is rendered by Describe's name function.
type setting string

// FileError is a problem with one configured file. Its text names the setting
// and the path: `tls.file.cert "/x.pem": open /x.pem: no such file or directory`.
type FileError struct {
	Setting string // flag name, e.g. "tls.file.cert"
	Path    string
	Err     error
}

func (e *FileError) Error() string { return e.describe(nil) }
func (e *FileError) Unwrap() error { return e.Err }

func (e *FileError) describe(name func(string) string) string {
	return fmt.Sprintf("%s %q: %s", rename(name, e.Setting), e.Path, Describe(e.Err, name))
}

// settingsError is an error whose text names settings: the arguments of
// type setting are rendered by the name function given to Describe, and
// arguments that are errors by Describe too. The rest (paths above all) is
// never rewritten.
type settingsError struct {
	format string // with %v where errorf was given %w
	args   []any
	err    error // the argument given for %w, if any
}

// errorf is fmt.Errorf for messages that name settings.
func errorf(format string, args ...any) error {
	e := &settingsError{format: strings.ReplaceAll(format, "%w", "%v"), args: args}
	if strings.Contains(format, "%w") {
		for _, a := range args {
			if err, ok := a.(error); ok {
				e.err = err
				break
			}
		}
	}
	return e
}

func (e *settingsError) Error() string { return e.describe(nil) }
func (e *settingsError) Unwrap() error { return e.err }

func (e *settingsError) describe(name func(string) string) string {
	args := make([]any, len(e.args))
	for i, a := range e.args {
		switch v := a.(type) {
		case setting:
			args[i] = rename(name, string(v))
		case error:
			args[i] = Describe(v, name)
		default:
			args[i] = a
		}
	}
	return fmt.Sprintf(e.format, args...)
}

func rename(name func(string) string, s string) string {
	if name == nil {
		return s
	}
	return name(s)
}

// Describe returns the text of err, an error of this package, with every
// setting it names passed through name: a caller turns "tls.file.cert" into
// its full flag "--agent-server.tls.file.cert", while paths and other text
// stay exactly as they are. For any other error it is err.Error().
func Describe(err error, name func(setting string) string) string {
	if d, ok := err.(describer); ok {
		return d.describe(name)
	}
	return err.Error()
}

// describer is implemented by the errors whose text names settings.
type describer interface {
	describe(name func(string) string) string
}

// file is one configured file: the setting it came from and its path.
type file struct {
	setting setting
	path    string
}

func (f file) fail(err error) error {
	return &FileError{Setting: string(f.setting), Path: f.path, Err: err}
}

// readFiles reads every file and returns their contents with a digest of all
// of them, used to skip re-parsing when nothing changed.
func readFiles(files ...file) ([][]byte, [sha256.Size]byte, error) {
	data, sum, _, err := readFileSums(files...)
	return data, sum, err
}

// fileSum is the digest of one file's contents, to tell which files a
// reload changed.
type fileSum struct {
	setting setting
	sum     [sha256.Size]byte
}

// readFileSums is readFiles that also returns each file's digest.
func readFileSums(files ...file) ([][]byte, [sha256.Size]byte, []fileSum, error) {
	h := sha256.New()
	data := make([][]byte, len(files))
	sums := make([]fileSum, len(files))
	for i, f := range files {
		b, err := os.ReadFile(f.path)
		if err != nil {
			return nil, [sha256.Size]byte{}, nil, f.fail(err)
		}
		data[i] = b
		sums[i] = fileSum{f.setting, sha256.Sum256(b)}
		_ = binary.Write(h, binary.BigEndian, uint64(len(b)))
		h.Write(b)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return data, sum, sums, nil
}

// changedFiles returns the settings whose file contents differ between two
// loads, in the order of next.
func changedFiles(prev, next []fileSum) []string {
	var changed []string
	for _, n := range next {
		same := false
		for _, p := range prev {
			if p.setting == n.setting {
				same = p.sum == n.sum
				break
			}
		}
		if !same {
			changed = append(changed, string(n.setting))
		}
	}
	return changed
}

// ServerFiles are the server's PEM files. The zero value of a field means
// "not configured".
type ServerFiles struct {
	Key, Cert string // required, together
	// ClientCA, when set, requires every client to present a certificate
	// that verifies against the certificates in this file (and only those:
	// the system pool is not consulted).
	ClientCA string
	// ClientCRL, when set, holds one or more "X509 CRL" blocks, each signed
	// by a certificate in ClientCA. Clients whose certificate (or an
	// intermediate of its chain) is listed are refused. Requires ClientCA.
	ClientCRL string
	// KeyPassword decrypts an encrypted Key; ignored for a plain key.
	KeyPassword string
}

// serverMaterial is one consistent load of every server file. It is never
// modified after it is built.
type serverMaterial struct {
	sum       [sha256.Size]byte
	sums      []fileSum
	cert      tls.Certificate
	clientCAs *x509.CertPool // nil: no client authentication
	revoked   revocations    // nil: no CRL
}

// Server returns a server TLS configuration (MinVersion TLS 1.2) serving
// f.Cert and f.Key. The caller may set NextProtos, MinVersion and similar
// fields on it before use.
//
// With f.ClientCA, ClientAuth is RequireAndVerifyClientCert against that pool;
// with f.ClientCRL, VerifyConnection also refuses revoked client certificates,
// on resumed sessions too.
//
// refresh > 0 re-reads every file on the first handshake after refresh has
// passed since the last read. This works through GetConfigForClient, which
// returns a clone of the returned Config with the current certificates, so
// fields set on the returned Config are honoured. A reload that fails is
// logged with logger (nil: slog.Default) and the previous material is kept;
// it is tried again after another refresh.
func Server(f ServerFiles, refresh time.Duration, logger *slog.Logger) (*tls.Config, error) {
	cfg, _, err := server(f, refresh, false, logger)
	return cfg, err
}

// NewServer is Server, with the files also re-read on demand (see
// Reloadable). Its Config always answers handshakes through
// GetConfigForClient, with a clone of itself carrying the current material.
func NewServer(f ServerFiles, refresh time.Duration, logger *slog.Logger) (*Reloadable, error) {
	cfg, src, err := server(f, refresh, true, logger)
	if err != nil {
		return nil, err
	}
	return &Reloadable{config: cfg, check: func() ([]string, func(), error) {
		prev, next, apply, err := src.prepare()
		if err != nil || next == prev {
			return nil, apply, err
		}
		return changedFiles(prev.sums, next.sums), apply, nil
	}}, nil
}

// server builds Server's configuration; dynamic sets GetConfigForClient
// even without a refresh interval, so that Reloadable can change the
// material.
func server(f ServerFiles, refresh time.Duration, dynamic bool, logger *slog.Logger) (*tls.Config, *source[serverMaterial], error) {
	if logger == nil {
		logger = slog.Default()
	}
	switch {
	case f.Cert == "" && f.Key == "":
		return nil, nil, errorf("%s and %s are required", settingCert, settingKey)
	case f.Key == "":
		return nil, nil, errorf("%s is set but %s is not", settingCert, settingKey)
	case f.Cert == "":
		return nil, nil, errorf("%s is set but %s is not", settingKey, settingCert)
	case f.ClientCRL != "" && f.ClientCA == "":
		return nil, nil, errorf("%s requires %s", settingClientCRL, settingClientCA)
	}

	src, err := newSource(refresh, logger, func(prev *serverMaterial) (*serverMaterial, error) {
		return loadServer(f, prev, logger)
	})
	if err != nil {
		return nil, nil, err
	}

	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	src.get().apply(cfg)
	if refresh > 0 || dynamic {
		cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			c := cfg.Clone()
			c.GetConfigForClient = nil
			src.get().apply(c)
			return c, nil
		}
	}
	return cfg, src, nil
}

// apply sets the material's certificate and client authentication on c.
func (m *serverMaterial) apply(c *tls.Config) {
	c.Certificates = []tls.Certificate{m.cert}
	if m.clientCAs == nil {
		return
	}
	c.ClientCAs = m.clientCAs
	c.ClientAuth = tls.RequireAndVerifyClientCert
	if m.revoked != nil {
		c.VerifyConnection = m.revoked.verifyConnection
	}
}

func loadServer(f ServerFiles, prev *serverMaterial, logger *slog.Logger) (*serverMaterial, error) {
	cert, key := file{settingCert, f.Cert}, file{settingKey, f.Key}
	ca, crl := file{settingClientCA, f.ClientCA}, file{settingClientCRL, f.ClientCRL}
	files := []file{cert, key}
	if f.ClientCA != "" {
		files = append(files, ca)
	}
	if f.ClientCRL != "" {
		files = append(files, crl)
	}
	data, sum, sums, err := readFileSums(files...)
	if err != nil {
		return nil, err
	}
	if prev != nil && prev.sum == sum {
		return prev, nil
	}

	m := &serverMaterial{sum: sum, sums: sums}
	if m.cert, err = keyPair(cert, data[0], key, data[1], f.KeyPassword, logger); err != nil {
		return nil, err
	}
	if f.ClientCA == "" {
		return m, nil
	}
	caCerts, err := parseCertPEM(data[2])
	if err != nil {
		return nil, ca.fail(err)
	}
	m.clientCAs = x509.NewCertPool()
	for _, c := range caCerts {
		m.clientCAs.AddCert(c)
	}
	if f.ClientCRL == "" {
		return m, nil
	}
	crls, err := parseCRLPEM(data[3])
	if err != nil {
		return nil, crl.fail(err)
	}
	if m.revoked, err = newRevocations(crls, caCerts, ca, crl, logger); err != nil {
		return nil, err
	}
	return m, nil
}

// keyPair parses a certificate chain and its private key and checks that
// they belong together.
func keyPair(cert file, certPEM []byte, key file, keyPEM []byte, password string, logger *slog.Logger) (tls.Certificate, error) {
	chain, err := parseCertPEM(certPEM)
	if err != nil {
		return tls.Certificate{}, cert.fail(err)
	}
	priv, err := parseKeyPEM(keyPEM, password)
	if err != nil {
		return tls.Certificate{}, key.fail(err)
	}
	pub, ok := chain[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(priv.Public()) {
		return tls.Certificate{}, key.fail(errorf("private key does not match the certificate in %s %q", cert.setting, cert.path))
	}
	if now := time.Now(); now.After(chain[0].NotAfter) {
		logger.Warn("TLS certificate has expired", "file", cert.path, "not_after", chain[0].NotAfter)
	}
	out := tls.Certificate{PrivateKey: priv, Leaf: chain[0]}
	for _, c := range chain {
		out.Certificate = append(out.Certificate, c.Raw)
	}
	return out, nil
}

// revocations are the revoked serial numbers of a set of CRLs, keyed by
// issuer: serial numbers are only unique per CA.
type revocations map[revokedCert]struct{}

type revokedCert struct{ issuer, serial string }

func revokedKey(rawIssuer []byte, serial *big.Int) revokedCert {
	return revokedCert{string(rawIssuer), serial.Text(16)}
}

// newRevocations checks that every CRL is signed by one of the client CAs
// and indexes its entries.
func newRevocations(crls []*x509.RevocationList, cas []*x509.Certificate, ca, crl file, logger *slog.Logger) (revocations, error) {
	r := revocations{}
	for i, l := range crls {
		signed := false
		for _, c := range cas {
			if bytes.Equal(l.RawIssuer, c.RawSubject) && l.CheckSignatureFrom(c) == nil {
				signed = true
				break
			}
		}
		if !signed {
			return nil, crl.fail(errorf("CRL %d (issuer %q) is not signed by a certificate in %s %q", i+1, l.Issuer, ca.setting, ca.path))
		}
		if !l.NextUpdate.IsZero() && time.Now().After(l.NextUpdate) {
			logger.Warn("client CRL is past its next update", "file", crl.path, "next_update", l.NextUpdate)
		}
		for _, e := range l.RevokedCertificateEntries {
			r[revokedKey(l.RawIssuer, e.SerialNumber)] = struct{}{}
		}
	}
	return r, nil
}

// verifyConnection refuses a connection if any certificate the peer
// presented, or any certificate of a verified chain, is revoked. It runs on
// resumed connections too, so a session of a since revoked client cannot be
// resumed.
func (r revocations) verifyConnection(cs tls.ConnectionState) error {
	check := func(c *x509.Certificate) error {
		if _, ok := r[revokedKey(c.RawIssuer, c.SerialNumber)]; ok {
			return fmt.Errorf("client certificate %q (serial %X) is revoked", c.Subject.CommonName, c.SerialNumber)
		}
		return nil
	}
	for _, c := range cs.PeerCertificates {
		if err := check(c); err != nil {
			return err
		}
	}
	for _, chain := range cs.VerifiedChains {
		for _, c := range chain {
			if err := check(c); err != nil {
				return err
			}
		}
	}
	return nil
}

// ClientFiles are the client's PEM files. The zero value of a field means
// "not configured".
type ClientFiles struct {
	Key, Cert string // optional, together: the client certificate for mTLS
	// RootCA holds the certificates that verify the server. Empty: the
	// system pool. It is read once, at start-up; it is not refreshed.
	RootCA      string
	KeyPassword string // decrypts an encrypted Key; ignored for a plain key
}

// ClientOptions configure Client.
type ClientOptions struct {
	Files ClientFiles
	// Refresh > 0 re-reads Cert and Key on the first handshake after Refresh
	// has passed since the last read. Zero: read once.
	Refresh time.Duration
	// InsecureSkipVerify disables verification of the server certificate.
	InsecureSkipVerify bool
	// UseSystemPool adds the system roots to Files.RootCA. Without RootCA
	// the system pool is used anyway.
	UseSystemPool bool
}

// clientMaterial is one load of the client certificate and key.
type clientMaterial struct {
	sum  [sha256.Size]byte
	sums []fileSum
	cert tls.Certificate
}

// Client returns a client TLS configuration (MinVersion TLS 1.2). The caller
// sets ServerName (and NextProtos) as needed.
//
// With o.Files.RootCA, RootCAs is the pool of that file, plus the system pool
// with o.UseSystemPool; without it RootCAs is nil, which means the system
// pool. With Cert and Key, GetClientCertificate presents that certificate,
// re-reading the files as described for Server when o.Refresh > 0.
func Client(o ClientOptions, logger *slog.Logger) (*tls.Config, error) {
	r, err := NewClient(o, logger)
	if err != nil {
		return nil, err
	}
	return r.config, nil
}

// NewClient is Client, with the client certificate and key also re-read on
// demand (see Reloadable). RootCA is not: it is read once.
func NewClient(o ClientOptions, logger *slog.Logger) (*Reloadable, error) {
	if logger == nil {
		logger = slog.Default()
	}
	f := o.Files
	switch {
	case f.Cert != "" && f.Key == "":
		return nil, errorf("%s is set but %s is not", settingCert, settingKey)
	case f.Key != "" && f.Cert == "":
		return nil, errorf("%s is set but %s is not", settingKey, settingCert)
	}

	r := &Reloadable{check: func() ([]string, func(), error) { return nil, func() {}, nil }}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: o.InsecureSkipVerify, //nolint:gosec // G402: an explicit operator choice (tls.insecure-skip-verify)
	}

	if f.RootCA != "" {
		root := file{settingRootCA, f.RootCA}
		data, _, err := readFiles(root)
		if err != nil {
			return nil, err
		}
		certs, err := parseCertPEM(data[0])
		if err != nil {
			return nil, root.fail(err)
		}
		pool := x509.NewCertPool()
		if o.UseSystemPool {
			sys, err := x509.SystemCertPool()
			if err != nil {
				logger.Warn("system certificate pool unavailable; using tls.file.root-ca only", "error", err)
			} else {
				pool = sys
			}
		}
		for _, c := range certs {
			pool.AddCert(c)
		}
		cfg.RootCAs = pool
	}

	if f.Cert != "" {
		cert, key := file{settingCert, f.Cert}, file{settingKey, f.Key}
		src, err := newSource(o.Refresh, logger, func(prev *clientMaterial) (*clientMaterial, error) {
			data, sum, sums, err := readFileSums(cert, key)
			if err != nil {
				return nil, err
			}
			if prev != nil && prev.sum == sum {
				return prev, nil
			}
			kp, err := keyPair(cert, data[0], key, data[1], f.KeyPassword, logger)
			if err != nil {
				return nil, err
			}
			return &clientMaterial{sum: sum, sums: sums, cert: kp}, nil
		})
		if err != nil {
			return nil, err
		}
		// Set only when there is a certificate: with a non-nil callback
		// crypto/tls assumes one is available.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &src.get().cert, nil
		}
		r.check = func() ([]string, func(), error) {
			prev, next, apply, err := src.prepare()
			if err != nil || next == prev {
				return nil, apply, err
			}
			return changedFiles(prev.sums, next.sums), apply, nil
		}
	}
	r.config = cfg
	return r, nil
}

// Reloadable is a TLS configuration made from files (NewServer,
// NewClient) whose files can also be re-read now, besides or instead of
// a refresh interval: a configuration reload checks everything it will
// change first, then applies it all, or nothing.
type Reloadable struct {
	config *tls.Config
	check  func() (changed []string, apply func(), err error)
}

// Config is the configuration to use; it always serves the current
// material.
// A nil *Reloadable has a nil Config.
func (r *Reloadable) Config() *tls.Config {
	if r == nil {
		return nil
	}
	return r.config
}

// Check reads and parses every file now, as at start. It returns the
// settings (relative names, like "tls.file.cert") whose file contents
// differ from the material in use, and apply, which makes what it read
// the material in use. Nothing changes until apply is called; on error
// (a *FileError for a file that cannot be read or parsed, naming its
// setting) nothing is returned to apply.
func (r *Reloadable) Check() (changed []string, apply func(), err error) {
	changed, apply, err = r.check()
	if err != nil {
		return nil, nil, err
	}
	return changed, apply, nil
}

// Reload re-reads every file now and uses what it read: Check, then
// apply. On error the previous material stays in use.
func (r *Reloadable) Reload() (changed []string, err error) {
	changed, apply, err := r.Check()
	if err != nil {
		return nil, err
	}
	apply()
	return changed, nil
}

// source holds the current material loaded from files and reloads it lazily.
type source[T any] struct {
	refresh time.Duration
	logger  *slog.Logger
	// load reads the files; it returns prev itself when they are unchanged.
	load func(prev *T) (*T, error)

	cur   atomic.Pointer[T]
	start time.Time    // monotonic origin of due
	due   atomic.Int64 // time.Since(start) at which the next reload is due
	mu    sync.Mutex   // held while reloading
}

// newSource loads the material once; a failure is a start-up error.
func newSource[T any](refresh time.Duration, logger *slog.Logger, load func(prev *T) (*T, error)) (*source[T], error) {
	s := &source[T]{refresh: refresh, logger: logger, load: load, start: time.Now()}
	m, err := load(nil)
	if err != nil {
		return nil, err
	}
	s.cur.Store(m)
	s.due.Store(int64(refresh))
	return s, nil
}

// get returns the current material, reloading it first if it is due. Only
// one caller reloads; the others meanwhile use the current material rather
// than wait on file I/O.
func (s *source[T]) get() *T {
	if s.refresh > 0 && s.isDue() && s.mu.TryLock() {
		defer s.mu.Unlock()
		if s.isDue() { // not reloaded by another caller since the check
			s.reload()
		}
	}
	return s.cur.Load()
}

func (s *source[T]) isDue() bool { return time.Since(s.start) >= time.Duration(s.due.Load()) }

// prepare loads the files now, whether or not a reload is due, and
// returns the material in use, the one loaded (prev itself when the files
// did not change) and apply, which makes it the material in use.
func (s *source[T]) prepare() (prev, next *T, apply func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	prev = s.cur.Load()
	if next, err = s.load(prev); err != nil {
		return nil, nil, nil, err
	}
	return prev, next, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.cur.Store(next)
		s.due.Store(int64(time.Since(s.start) + s.refresh))
	}, nil
}

func (s *source[T]) reload() {
	prev := s.cur.Load()
	m, err := s.load(prev)
	s.due.Store(int64(time.Since(s.start) + s.refresh))
	if err != nil {
		var fe *FileError
		path := ""
		if errors.As(err, &fe) {
			path = fe.Path
		}
		s.logger.Warn("TLS reload failed, keeping the previous certificates", "file", path, "error", err)
		return
	}
	if m != prev {
		s.cur.Store(m)
		s.logger.Info("TLS files reloaded")
	}
}
