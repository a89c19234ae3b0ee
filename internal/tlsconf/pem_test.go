package tlsconf

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// pkcs8EncryptedKey encrypts a PKCS#8 key PEM as PBES2 with PBKDF2-HMAC-SHA256
// and AES-256-CBC, the OpenSSL 3 default. TestParseKeyOpenSSL checks the
// decoder against OpenSSL itself, so this encoder is not the only reference.
func pkcs8EncryptedKey(t testing.TB, keyPEM []byte, password string) []byte {
	t.Helper()
	return pkcs8EncryptedKeyIter(t, keyPEM, password, 2048)
}

func pkcs8EncryptedKeyIter(t testing.TB, keyPEM []byte, password string, iter int) []byte {
	t.Helper()
	block, _ := pem.Decode(keyPEM)
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("want a PKCS#8 PRIVATE KEY, got %q", keyPEM)
	}
	salt, iv := make([]byte, 16), make([]byte, aes.BlockSize)
	_, _ = rand.Read(salt)
	_, _ = rand.Read(iv)
	key, err := pbkdf2.Key(sha256.New, password, salt, iter, 32)
	if err != nil {
		t.Fatal(err)
	}
	n := aes.BlockSize - len(block.Bytes)%aes.BlockSize
	plain := append(append([]byte{}, block.Bytes...), make([]byte, n)...)
	for i := len(block.Bytes); i < len(plain); i++ {
		plain[i] = byte(n)
	}
	c, _ := aes.NewCipher(key)
	cipher.NewCBCEncrypter(c, iv).CryptBlocks(plain, plain)

	mustMarshal := func(v any) []byte {
		b, err := asn1.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	kdf := pbkdf2Params{
		Salt:           salt,
		IterationCount: iter,
		PRF:            pkix.AlgorithmIdentifier{Algorithm: oidHMACSHA256, Parameters: asn1.NullRawValue},
	}
	params := pbes2Params{
		KeyDerivationFunc: pkix.AlgorithmIdentifier{Algorithm: oidPBKDF2, Parameters: asn1.RawValue{FullBytes: mustMarshal(kdf)}},
		EncryptionScheme:  pkix.AlgorithmIdentifier{Algorithm: oidAES256CBC, Parameters: asn1.RawValue{FullBytes: mustMarshal(iv)}},
	}
	info := encryptedPrivateKeyInfo{
		Algorithm: pkix.AlgorithmIdentifier{Algorithm: oidPBES2, Parameters: asn1.RawValue{FullBytes: mustMarshal(params)}},
		Data:      plain,
	}
	return pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: mustMarshal(info)})
}

func TestParseKeyFormats(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 1024) //nolint:gosec // a test key; size is irrelevant
	pkcs8 := func(k any) []byte {
		b, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	sec1, _ := x509.MarshalECPrivateKey(ec)
	enc := func(typ string, der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}) }
	ecParams := enc("EC PARAMETERS", []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07})

	for name, data := range map[string][]byte{
		"pkcs8 ec":               enc("PRIVATE KEY", pkcs8(ec)),
		"pkcs8 ed25519":          enc("PRIVATE KEY", pkcs8(ed)),
		"pkcs8 rsa":              enc("PRIVATE KEY", pkcs8(rsaKey)),
		"pkcs1 rsa":              enc("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey)),
		"sec1 ec":                enc("EC PRIVATE KEY", sec1),
		"sec1 after EC PARAMS":   append(ecParams, enc("EC PRIVATE KEY", sec1)...),
		"mislabelled":            enc("RSA PRIVATE KEY", pkcs8(ec)),
		"key after certificate":  append(enc("CERTIFICATE", []byte{1}), enc("PRIVATE KEY", pkcs8(ec))...),
		"pkcs8 encrypted (test)": pkcs8EncryptedKey(t, enc("PRIVATE KEY", pkcs8(ec)), "pw"),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := parseKeyPEM(data, "pw"); err != nil {
				t.Fatal(err)
			}
		})
	}

	x, _ := x509.MarshalPKCS8PrivateKey(mustECDH(t))
	if _, err := parseKeyPEM(enc("PRIVATE KEY", x), ""); err == nil || !strings.Contains(err.Error(), "unsupported private key type") {
		t.Fatalf("X25519 key: %v", err)
	}
	if _, err := parseKeyPEM(pkcs8EncryptedKey(t, enc("PRIVATE KEY", pkcs8(ec)), "pw"), "nope"); !errors.Is(err, x509.IncorrectPasswordError) {
		t.Fatalf("wrong PKCS#8 password: %v", err)
	}
	if _, err := parseKeyPEM(pkcs8EncryptedKey(t, enc("PRIVATE KEY", pkcs8(ec)), "pw"), ""); err == nil || !strings.Contains(err.Error(), "tls.key-password is not set") {
		t.Fatalf("no PKCS#8 password: %v", err)
	}
	// The iteration count is bounded, so a key file cannot stall a start
	// or a reload; the check comes before any derivation.
	defer func(n int) { maxPBKDF2Iterations = n }(maxPBKDF2Iterations)
	maxPBKDF2Iterations = 4096
	if _, err := parseKeyPEM(pkcs8EncryptedKeyIter(t, enc("PRIVATE KEY", pkcs8(ec)), "pw", 4097), "pw"); err == nil || !strings.Contains(err.Error(), "PBKDF2 iteration count 4097 out of range [1, 4096]") {
		t.Fatalf("iterations above the cap: %v", err)
	}
}

func mustECDH(t *testing.T) any {
	t.Helper()
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestParseKeyOpenSSL reads keys encrypted by OpenSSL in each format it
// writes. Skipped where openssl is not installed.
func TestParseKeyOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain.pem")
	run := func(args ...string) {
		t.Helper()
		out, err := exec.Command(openssl, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}
	run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", plain)
	want, err := parseKeyPEM(readFile(t, plain), "")
	if err != nil {
		t.Fatal(err)
	}
	variants := map[string][]string{
		"pkcs8 aes256 sha256":   {"pkcs8", "-topk8", "-v2", "aes-256-cbc", "-v2prf", "hmacWithSHA256"},
		"pkcs8 aes128 sha1":     {"pkcs8", "-topk8", "-v2", "aes-128-cbc", "-v2prf", "hmacWithSHA1"},
		"pkcs8 aes192 sha512":   {"pkcs8", "-topk8", "-v2", "aes-192-cbc", "-v2prf", "hmacWithSHA512"},
		"pkcs8 des3 sha384":     {"pkcs8", "-topk8", "-v2", "des3", "-v2prf", "hmacWithSHA384"},
		"legacy ec aes256":      {"ec", "-aes256"},
		"legacy ec des3":        {"ec", "-des3"},
		"pkcs8 high iterations": {"pkcs8", "-topk8", "-v2", "aes-256-cbc", "-iter", "100000"},
	}
	for name, args := range variants {
		t.Run(name, func(t *testing.T) {
			out := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".pem")
			run(append(args, "-in", plain, "-out", out, "-passout", "pass:s3cret")...)
			data := readFile(t, out)
			got, err := parseKeyPEM(data, "s3cret")
			if err != nil {
				t.Fatalf("%v\n%s", err, data)
			}
			if !want.Public().(*ecdsa.PublicKey).Equal(got.Public()) {
				t.Fatal("decrypted a different key")
			}
			if _, err := parseKeyPEM(data, "wrong"); !errors.Is(err, x509.IncorrectPasswordError) {
				t.Fatalf("wrong password: %v", err)
			}
		})
	}
}

// TestFingerprintMatchesOpenSSL compares Fingerprint with
// `openssl x509 -fingerprint -sha256`. Skipped without openssl.
func TestFingerprintMatchesOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	cert, fp, err := SelfSigned([]string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "cert.pem")
	if err := os.WriteFile(path, encodeCert(cert.Certificate[0]), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(openssl, "x509", "-noout", "-fingerprint", "-sha256", "-in", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	// "sha256 Fingerprint=AB:CD:..." (the prefix differs between versions).
	got := strings.TrimSpace(string(out))
	if i := strings.LastIndexByte(got, '='); i < 0 || got[i+1:] != fp {
		t.Fatalf("openssl says %q, Fingerprint %q", got, fp)
	}
}

func TestParseCertPEM(t *testing.T) {
	ca, err := NewCA("c")
	if err != nil {
		t.Fatal(err)
	}
	leaf, key, err := ca.Issue("l", []string{"x"}, false)
	if err != nil {
		t.Fatal(err)
	}
	// Chain with a key in between: certificates in order, key skipped.
	certs, err := parseCertPEM(append(append(append([]byte{}, leaf...), key...), ca.CertPEM...))
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != 2 || certs[0].Subject.CommonName != "l" || certs[1].Subject.CommonName != "c" {
		t.Fatalf("got %d certs", len(certs))
	}
	bad := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")})
	if _, err := parseCertPEM(append(append([]byte{}, leaf...), bad...)); err == nil || !strings.Contains(err.Error(), "certificate 2") {
		t.Fatalf("bad second certificate: %v", err)
	}
}

func fuzzSeeds(f *testing.F) [][]byte {
	ca, err := NewCA("fuzz")
	if err != nil {
		f.Fatal(err)
	}
	cert, key, err := ca.Issue("leaf", []string{"localhost", "127.0.0.1"}, false)
	if err != nil {
		f.Fatal(err)
	}
	crl, err := ca.RevocationList(nil)
	if err != nil {
		f.Fatal(err)
	}
	k, _ := parseKeyPEM(key, "")
	sec1, _ := x509.MarshalECPrivateKey(k.(*ecdsa.PrivateKey))
	//nolint:staticcheck // SA1019: legacy format on purpose
	legacy, _ := x509.EncryptPEMBlock(rand.Reader, "EC PRIVATE KEY", sec1, []byte("pw"), x509.PEMCipherAES128)
	return [][]byte{
		cert, key, crl, ca.CertPEM, ca.KeyPEM,
		append(append([]byte{}, cert...), ca.CertPEM...),
		pem.EncodeToMemory(legacy),
		pkcs8EncryptedKey(f, key, "pw"),
		[]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"),
		[]byte("garbage"), nil,
	}
}

func FuzzParseCertPEM(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := parseCertPEM(data)
		if err == nil && len(certs) == 0 {
			t.Fatal("no error and no certificates")
		}
		_, _ = parseCRLPEM(data)
	})
}

func FuzzParseKeyPEM(f *testing.F) {
	// Mutated iteration counts near the real cap make one input take
	// seconds; the bound itself is tested by TestParseKeyPEM's cases.
	defer func(n int) { maxPBKDF2Iterations = n }(maxPBKDF2Iterations)
	maxPBKDF2Iterations = 100_000
	for _, s := range fuzzSeeds(f) {
		f.Add(s, "pw")
		f.Add(s, "")
	}
	f.Fuzz(func(t *testing.T, data []byte, password string) {
		key, err := parseKeyPEM(data, password)
		if err == nil && key == nil {
			t.Fatal("no error and no key")
		}
	})
}
