package tlsconf

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/des"
	"crypto/pbkdf2"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"strings"
)

// PEM block types this package reads and writes.
const (
	pemCertificate      = "CERTIFICATE"
	pemPrivateKey       = "PRIVATE KEY"
	pemEncryptedPrivKey = "ENCRYPTED PRIVATE KEY"
	pemCRL              = "X509 CRL"
)

// parseCertPEM returns the certificates of every CERTIFICATE block in data,
// in file order (leaf first for a chain). Blocks of other types, such as a
// private key kept in the same file, are skipped. At least one certificate
// is required.
func parseCertPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != pemCertificate {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no " + pemCertificate + " PEM block found")
	}
	return certs, nil
}

// parseCRLPEM returns the revocation lists of every X509 CRL block in data.
// At least one is required.
func parseCRLPEM(data []byte) ([]*x509.RevocationList, error) {
	var crls []*x509.RevocationList
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != pemCRL {
			continue
		}
		l, err := x509.ParseRevocationList(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CRL %d: %w", len(crls)+1, err)
		}
		crls = append(crls, l)
	}
	if len(crls) == 0 {
		return nil, errors.New("no " + pemCRL + " PEM block found")
	}
	return crls, nil
}

// parseKeyPEM returns the private key in the first "... PRIVATE KEY" block
// of data. It reads PKCS#8 ("PRIVATE KEY"), PKCS#1 ("RSA PRIVATE KEY") and
// SEC 1 ("EC PRIVATE KEY") keys, plain or encrypted:
//
//   - legacy OpenSSL encryption (headers "Proc-Type: 4,ENCRYPTED" and
//     "DEK-Info"), as written by `openssl genrsa -aes256` or `openssl rsa -aes256`;
//   - PKCS#8 "ENCRYPTED PRIVATE KEY" with PBES2 (PBKDF2 with HMAC-SHA1/SHA-2,
//     AES-CBC or 3DES-CBC), the OpenSSL 3 default of `openssl genpkey -aes256`
//     and `openssl pkcs8 -topk8`.
//
// password is ignored for a key that is not encrypted. A wrong password
// returns an error wrapping x509.IncorrectPasswordError.
func parseKeyPEM(data []byte, password string) (crypto.Signer, error) {
	var block *pem.Block
	for rest := data; ; {
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("no " + pemPrivateKey + " PEM block found")
		}
		if block.Type == pemPrivateKey || strings.HasSuffix(block.Type, " "+pemPrivateKey) {
			break
		}
	}

	switch {
	case block.Type == pemEncryptedPrivKey:
		if password == "" {
			return nil, errorf("key is encrypted (%s) and %s is not set", pemEncryptedPrivKey, settingKeyPassword)
		}
		der, err := decryptPKCS8(block.Bytes, []byte(password))
		if err != nil {
			return nil, err
		}
		key, err := parseKeyDER(pemPrivateKey, der)
		if err != nil {
			// CBC padding matched by chance: the password is still wrong.
			return nil, wrongPassword()
		}
		return key, nil

	// Legacy PEM encryption is deprecated for its weak key derivation, but
	// OpenSSL still writes it and the reference accepts it.
	case x509.IsEncryptedPEMBlock(block): //nolint:staticcheck // SA1019, see above
		if password == "" {
			return nil, errorf("key is encrypted (Proc-Type: 4,ENCRYPTED) and %s is not set", settingKeyPassword)
		}
		der, err := x509.DecryptPEMBlock(block, []byte(password)) //nolint:staticcheck // SA1019, see above
		if errors.Is(err, x509.IncorrectPasswordError) {
			return nil, wrongPassword()
		}
		if err != nil {
			return nil, fmt.Errorf("decrypt key: %w", err)
		}
		key, err := parseKeyDER(block.Type, der)
		if err != nil {
			return nil, wrongPassword()
		}
		return key, nil
	}
	return parseKeyDER(block.Type, block.Bytes)
}

func wrongPassword() error {
	return errorf("%s: %w", settingKeyPassword, x509.IncorrectPasswordError)
}

// parseKeyDER parses a PKCS#8, PKCS#1 or SEC 1 private key. Like
// tls.X509KeyPair it tries every format, since PEM labels are often wrong;
// on failure it reports the error of the format the label names.
func parseKeyDER(pemType string, der []byte) (crypto.Signer, error) {
	var key any
	k8, err8 := x509.ParsePKCS8PrivateKey(der)
	key = k8
	var err1, errEC error
	if err8 != nil {
		var k1 any
		k1, err1 = x509.ParsePKCS1PrivateKey(der)
		key = k1
		if err1 != nil {
			key, errEC = x509.ParseECPrivateKey(der)
		}
	}
	if err8 != nil && err1 != nil && errEC != nil {
		switch pemType {
		case "RSA " + pemPrivateKey:
			return nil, fmt.Errorf("parse %s: %w", pemType, err1)
		case "EC " + pemPrivateKey:
			return nil, fmt.Errorf("parse %s: %w", pemType, errEC)
		default:
			return nil, fmt.Errorf("parse %s: %w", pemType, err8)
		}
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported private key type %T", key)
	}
	return s, nil
}

// PKCS#8 encryption (RFC 8018). Only PBES2 with PBKDF2 is supported: PBES1
// (MD5/SHA-1 with DES or RC2) is obsolete and scrypt is not in the standard
// library.
var (
	oidPBES2  = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 13}
	oidPBKDF2 = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 12}

	oidHMACSHA1   = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 7}
	oidHMACSHA224 = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 8}
	oidHMACSHA256 = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 9}
	oidHMACSHA384 = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 10}
	oidHMACSHA512 = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 11}

	oidAES128CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 2}
	oidAES192CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 22}
	oidAES256CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}
	oidDESEDE3CBC = asn1.ObjectIdentifier{1, 2, 840, 113549, 3, 7}
)

// maxPBKDF2Iterations bounds the work an encrypted key can demand.
// OpenSSL writes 2048 by default; OWASP suggests 600000 for SHA-256.
// A variable so that the fuzz target can lower it: one key at the cap takes
// seconds to derive, which stalls the fuzzer's workers past its deadline.
var maxPBKDF2Iterations = 10_000_000

type encryptedPrivateKeyInfo struct {
	Algorithm pkix.AlgorithmIdentifier
	Data      []byte
}

type pbes2Params struct {
	KeyDerivationFunc pkix.AlgorithmIdentifier
	EncryptionScheme  pkix.AlgorithmIdentifier
}

type pbkdf2Params struct {
	Salt           []byte
	IterationCount int
	KeyLength      int                      `asn1:"optional"`
	PRF            pkix.AlgorithmIdentifier `asn1:"optional"`
}

// decryptPKCS8 decrypts an EncryptedPrivateKeyInfo and returns the inner
// PrivateKeyInfo DER.
func decryptPKCS8(der []byte, password []byte) ([]byte, error) {
	var info encryptedPrivateKeyInfo
	if rest, err := asn1.Unmarshal(der, &info); err != nil {
		return nil, fmt.Errorf("parse %s: %w", pemEncryptedPrivKey, err)
	} else if len(rest) != 0 {
		return nil, fmt.Errorf("parse %s: trailing data", pemEncryptedPrivKey)
	}
	if !info.Algorithm.Algorithm.Equal(oidPBES2) {
		return nil, fmt.Errorf("unsupported PKCS#8 encryption %v (only PBES2 is supported)", info.Algorithm.Algorithm)
	}
	var params pbes2Params
	if _, err := asn1.Unmarshal(info.Algorithm.Parameters.FullBytes, &params); err != nil {
		return nil, fmt.Errorf("parse PBES2 parameters: %w", err)
	}
	if !params.KeyDerivationFunc.Algorithm.Equal(oidPBKDF2) {
		return nil, fmt.Errorf("unsupported PBES2 key derivation %v (only PBKDF2 is supported)", params.KeyDerivationFunc.Algorithm)
	}
	var kdf pbkdf2Params
	if _, err := asn1.Unmarshal(params.KeyDerivationFunc.Parameters.FullBytes, &kdf); err != nil {
		return nil, fmt.Errorf("parse PBKDF2 parameters: %w", err)
	}
	if kdf.IterationCount < 1 || kdf.IterationCount > maxPBKDF2Iterations {
		return nil, fmt.Errorf("PBKDF2 iteration count %d out of range [1, %d]", kdf.IterationCount, maxPBKDF2Iterations)
	}

	var newBlock func(key []byte) (cipher.Block, error)
	var keyLen int
	switch s := params.EncryptionScheme.Algorithm; {
	case s.Equal(oidAES128CBC):
		newBlock, keyLen = aes.NewCipher, 16
	case s.Equal(oidAES192CBC):
		newBlock, keyLen = aes.NewCipher, 24
	case s.Equal(oidAES256CBC):
		newBlock, keyLen = aes.NewCipher, 32
	case s.Equal(oidDESEDE3CBC):
		newBlock, keyLen = des.NewTripleDESCipher, 24
	default:
		return nil, fmt.Errorf("unsupported PBES2 cipher %v", s)
	}
	if kdf.KeyLength != 0 && kdf.KeyLength != keyLen {
		return nil, fmt.Errorf("PBKDF2 key length %d does not match the cipher (%d)", kdf.KeyLength, keyLen)
	}
	var iv []byte
	if rest, err := asn1.Unmarshal(params.EncryptionScheme.Parameters.FullBytes, &iv); err != nil {
		return nil, fmt.Errorf("parse cipher IV: %w", err)
	} else if len(rest) != 0 {
		return nil, errors.New("parse cipher IV: trailing data")
	}

	var h func() hash.Hash
	switch prf := kdf.PRF.Algorithm; {
	case len(prf) == 0, prf.Equal(oidHMACSHA1): // the DEFAULT of RFC 8018
		h = sha1.New
	case prf.Equal(oidHMACSHA224):
		h = sha256.New224
	case prf.Equal(oidHMACSHA256):
		h = sha256.New
	case prf.Equal(oidHMACSHA384):
		h = sha512.New384
	case prf.Equal(oidHMACSHA512):
		h = sha512.New
	default:
		return nil, fmt.Errorf("unsupported PBKDF2 PRF %v", prf)
	}

	key, err := pbkdf2.Key(h, string(password), kdf.Salt, kdf.IterationCount, keyLen)
	if err != nil {
		return nil, fmt.Errorf("derive key: %w", err)
	}
	block, err := newBlock(key)
	if err != nil {
		return nil, err
	}
	bs := block.BlockSize()
	if len(iv) != bs {
		return nil, fmt.Errorf("cipher IV is %d bytes, want %d", len(iv), bs)
	}
	if len(info.Data) == 0 || len(info.Data)%bs != 0 {
		return nil, errors.New("encrypted key is not a whole number of cipher blocks")
	}
	out := make([]byte, len(info.Data))
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(out, info.Data)
	return unpad(out, bs)
}

// unpad removes PKCS#7 padding; bad padding means a wrong password.
func unpad(b []byte, bs int) ([]byte, error) {
	n := int(b[len(b)-1])
	if n == 0 || n > bs || n > len(b) {
		return nil, wrongPassword()
	}
	for _, p := range b[len(b)-n:] {
		if int(p) != n {
			return nil, wrongPassword()
		}
	}
	return b[:len(b)-n], nil
}
