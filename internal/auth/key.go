package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// Signing algorithms, named as in the JWT "alg" header.
const (
	algES256 = "ES256"
	algRS256 = "RS256"
)

// PEM block types. Private keys are written as the reference writes them:
// SEC1 "EC PRIVATE KEY" and PKCS#1 "RSA PRIVATE KEY". PKCS#8 "PRIVATE KEY"
// is accepted on input too.
//
// Public keys are written as PKIX "PUBLIC KEY" for both key types, the form
// openssl and every JWT library read. The reference wrote ECDSA public keys
// with the same PKIX bytes under the nonstandard type "EC PUBLIC KEY"; its
// reader ignores the block type, so it reads ours, and we accept its type.
const (
	pemPrivateKey      = "PRIVATE KEY"
	pemECPrivateKey    = "EC PRIVATE KEY"
	pemRSAPrivateKey   = "RSA PRIVATE KEY"
	pemEncryptedKey    = "ENCRYPTED PRIVATE KEY"
	pemPublicKey       = "PUBLIC KEY"
	pemECPublicKey     = "EC PUBLIC KEY"
	pemRSAPublicKey    = "RSA PUBLIC KEY"
	pemCertificate     = "CERTIFICATE"
	rsaGenerateBits    = 2048
	rsaMinBits         = 2048
	wantPrivateKeyType = `"PRIVATE KEY" (PKCS#8), "EC PRIVATE KEY" (SEC1) or "RSA PRIVATE KEY" (PKCS#1)`
	wantPublicKeyType  = `"PUBLIC KEY" (PKIX), "EC PUBLIC KEY", "RSA PUBLIC KEY" (PKCS#1) or "CERTIFICATE"`
)

// GenerateKey returns a new private key for algo: "ES256" (ECDSA P-256) or
// "RS256" (RSA, 2048 bits).
func GenerateKey(algo string) (crypto.Signer, error) {
	switch algo {
	case algES256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case algRS256:
		return rsa.GenerateKey(rand.Reader, rsaGenerateBits)
	default:
		return nil, fmt.Errorf("unsupported algorithm %q, want %s or %s", algo, algES256, algRS256)
	}
}

// algOf returns the JWT algorithm for a private or public key, or an error
// for a key ES256/RS256 cannot use.
func algOf(key any) (string, error) {
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		return algOf(&k.PublicKey)
	case *rsa.PrivateKey:
		return algOf(&k.PublicKey)
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			name := "unknown"
			if k.Curve != nil {
				name = k.Curve.Params().Name
			}
			return "", fmt.Errorf("unsupported ECDSA curve %s, ES256 needs P-256", name)
		}
		return algES256, nil
	case *rsa.PublicKey:
		if k.N == nil {
			return "", errors.New("invalid RSA key: no modulus")
		}
		if n := k.N.BitLen(); n < rsaMinBits {
			return "", fmt.Errorf("RSA key has %d bits, want at least %d", n, rsaMinBits)
		}
		return algRS256, nil
	default:
		return "", fmt.Errorf("unsupported key type %T, want ECDSA P-256 or RSA", key)
	}
}

// publicAlgOf is algOf for public keys only.
func publicAlgOf(pub crypto.PublicKey) (string, error) {
	switch pub.(type) {
	case *ecdsa.PublicKey, *rsa.PublicKey:
		return algOf(pub)
	default:
		return "", fmt.Errorf("unsupported public key type %T, want ECDSA P-256 or RSA", pub)
	}
}

// MarshalPrivateKey encodes k as PEM: "EC PRIVATE KEY" (SEC1) for ECDSA P-256,
// "RSA PRIVATE KEY" (PKCS#1) for RSA, as the reference writes them.
func MarshalPrivateKey(k crypto.Signer) ([]byte, error) {
	if _, err := algOf(k); err != nil {
		return nil, err
	}
	var block pem.Block
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, fmt.Errorf("marshal ECDSA private key: %w", err)
		}
		block = pem.Block{Type: pemECPrivateKey, Bytes: der}
	case *rsa.PrivateKey:
		block = pem.Block{Type: pemRSAPrivateKey, Bytes: x509.MarshalPKCS1PrivateKey(k)}
	}
	return pem.EncodeToMemory(&block), nil
}

// ParsePrivateKey decodes the first private key in pemBytes: PKCS#8
// "PRIVATE KEY", SEC1 "EC PRIVATE KEY" or PKCS#1 "RSA PRIVATE KEY", holding
// an ECDSA P-256 or RSA (at least 2048 bits) key. Other blocks before it, such
// as the "EC PARAMETERS" that openssl ecparam writes, are skipped. Encrypted
// keys are refused.
func ParsePrivateKey(pemBytes []byte) (crypto.Signer, error) {
	var skipped []string
	for rest := pemBytes; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if isEncrypted(block) {
			return nil, fmt.Errorf("private key PEM block %q is encrypted; decrypt it first", block.Type)
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case pemPrivateKey:
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case pemECPrivateKey:
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case pemRSAPrivateKey:
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			skipped = append(skipped, fmt.Sprintf("%q", block.Type))
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parse %q PEM block: %w", block.Type, err)
		}
		if _, err := algOf(key); err != nil {
			return nil, err
		}
		return key.(crypto.Signer), nil // algOf accepted only *ecdsa.PrivateKey and *rsa.PrivateKey
	}
	if len(skipped) == 0 {
		return nil, errors.New("no PEM block found, want a private key")
	}
	return nil, fmt.Errorf("no private key among PEM blocks %s, want %s", strings.Join(skipped, ", "), wantPrivateKeyType)
}

// isEncrypted reports whether block is a PKCS#8 encrypted key or a legacy
// OpenSSL encrypted PEM block (Proc-Type: 4,ENCRYPTED).
func isEncrypted(block *pem.Block) bool {
	return block.Type == pemEncryptedKey || strings.Contains(block.Headers["Proc-Type"], "ENCRYPTED")
}

// MarshalPublicKey encodes an ECDSA P-256 or RSA public key as a PKIX
// "PUBLIC KEY" PEM block.
func MarshalPublicKey(pub crypto.PublicKey) ([]byte, error) {
	if _, err := publicAlgOf(pub); err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("marshal public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPublicKey, Bytes: der}), nil
}

// ParsePublicKey decodes the first public key in pemBytes: PKIX
// "PUBLIC KEY" (or "EC PUBLIC KEY", as the reference wrote ECDSA keys),
// PKCS#1 "RSA PUBLIC KEY", or the key of a "CERTIFICATE". The key must be
// ECDSA P-256 or RSA of at least 2048 bits. A private key is refused rather
// than silently turned into its public half: the proxy needs only the public
// key, and the private one should not be lying around next to it.
func ParsePublicKey(pemBytes []byte) (crypto.PublicKey, error) {
	var skipped []string
	for rest := pemBytes; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case pemPublicKey, pemECPublicKey:
			key, err = x509.ParsePKIXPublicKey(block.Bytes)
		case pemRSAPublicKey:
			key, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case pemCertificate:
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				key = cert.PublicKey
			}
		case pemPrivateKey, pemECPrivateKey, pemRSAPrivateKey, pemEncryptedKey:
			return nil, fmt.Errorf("PEM block %q is a private key, want a public key (derive it with the auth key public command)", block.Type)
		default:
			skipped = append(skipped, fmt.Sprintf("%q", block.Type))
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parse %q PEM block: %w", block.Type, err)
		}
		if _, err := publicAlgOf(key); err != nil {
			return nil, err
		}
		return key, nil
	}
	if len(skipped) == 0 {
		return nil, errors.New("no PEM block found, want a public key")
	}
	return nil, fmt.Errorf("no public key among PEM blocks %s, want %s", strings.Join(skipped, ", "), wantPublicKeyType)
}
