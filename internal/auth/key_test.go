package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"
)

type equaler interface{ Equal(crypto.PrivateKey) bool }
type pubEqualer interface{ Equal(crypto.PublicKey) bool }

func TestGenerateKeyRoundTrip(t *testing.T) {
	tests := []struct {
		algo, privType string
	}{
		{"ES256", "EC PRIVATE KEY"},
		{"RS256", "RSA PRIVATE KEY"},
	}
	for _, tc := range tests {
		t.Run(tc.algo, func(t *testing.T) {
			key, err := GenerateKey(tc.algo)
			if err != nil {
				t.Fatal(err)
			}
			if alg, err := algOf(key); err != nil || alg != tc.algo {
				t.Fatalf("algOf = %q, %v; want %q", alg, err, tc.algo)
			}
			privPEM, err := MarshalPrivateKey(key)
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := pem.Decode(privPEM); b == nil || b.Type != tc.privType {
				t.Fatalf("private key PEM %q, want block %q", privPEM, tc.privType)
			}
			back, err := ParsePrivateKey(privPEM)
			if err != nil {
				t.Fatal(err)
			}
			if !back.(equaler).Equal(key) {
				t.Fatal("parsed private key differs")
			}

			pubPEM, err := MarshalPublicKey(key.Public())
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := pem.Decode(pubPEM); b == nil || b.Type != "PUBLIC KEY" {
				t.Fatalf("public key PEM %q, want block PUBLIC KEY", pubPEM)
			}
			pub, err := ParsePublicKey(pubPEM)
			if err != nil {
				t.Fatal(err)
			}
			if !pub.(pubEqualer).Equal(key.Public()) {
				t.Fatal("parsed public key differs")
			}

			// The round-tripped keys sign and verify.
			tok := mustSign(t, back, TokenOptions{AgentID: "4711", Role: RoleAgent, Duration: time.Minute})
			if _, err := NewVerifier(pub, "").Verify(tok, RoleAgent); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestGenerateKeyUnsupported(t *testing.T) {
	for _, algo := range []string{"", "HS256", "ES384", "PS256", "none", "es256"} {
		if k, err := GenerateKey(algo); err == nil {
			t.Errorf("GenerateKey(%q) = %T, want error", algo, k)
		}
	}
}

func TestParsePrivateKeyEncodings(t *testing.T) {
	k := testKeys()
	pkcs8 := func(key any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	sec1, err := x509.MarshalECPrivateKey(k.ec)
	if err != nil {
		t.Fatal(err)
	}
	ecParams := pemBytes("EC PARAMETERS", []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07})

	tests := []struct {
		name string
		pem  []byte
		want crypto.Signer
	}{
		{"PKCS#8 ECDSA", pemBytes("PRIVATE KEY", pkcs8(k.ec)), k.ec},
		{"PKCS#8 RSA", pemBytes("PRIVATE KEY", pkcs8(k.rsa)), k.rsa},
		{"SEC1 ECDSA (reference)", pemBytes("EC PRIVATE KEY", sec1), k.ec},
		{"PKCS#1 RSA (reference)", pemBytes("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k.rsa)), k.rsa},
		{"openssl ecparam -genkey output", append(ecParams, pemBytes("EC PRIVATE KEY", sec1)...), k.ec},
		{"text around the block", append(append([]byte("comment\n"), pemBytes("EC PRIVATE KEY", sec1)...), "trailer\n"...), k.ec},
		{"public key before private key", append(pemBytes("PUBLIC KEY", nil), pemBytes("PRIVATE KEY", pkcs8(k.rsa))...), k.rsa},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePrivateKey(tc.pem)
			if err != nil {
				t.Fatal(err)
			}
			if !got.(equaler).Equal(tc.want) {
				t.Fatal("parsed key differs")
			}
		})
	}
}

func TestParsePrivateKeyErrors(t *testing.T) {
	k := testKeys()
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384DER, _ := x509.MarshalECPrivateKey(p384)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	edDER, _ := x509.MarshalPKCS8PrivateKey(edKey)
	rsaPKCS8, _ := x509.MarshalPKCS8PrivateKey(k.rsa)
	pubDER, _ := x509.MarshalPKIXPublicKey(k.ec.Public())
	legacy := pem.EncodeToMemory(&pem.Block{
		Type:    "RSA PRIVATE KEY",
		Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,00000000000000000000000000000000"},
		Bytes:   []byte("ciphertext"),
	})

	tests := []struct {
		name, pem, want string
	}{
		{"empty", "", "no PEM block found"},
		{"garbage", "this is not a key", "no PEM block found"},
		{"broken PEM", "-----BEGIN EC PRIVATE KEY-----\n!!!!\n-----END EC PRIVATE KEY-----\n", "no PEM block found"},
		{"garbage in block", string(pemBytes("EC PRIVATE KEY", []byte("garbage"))), `parse "EC PRIVATE KEY" PEM block`},
		{"PKCS#8 under RSA PRIVATE KEY", string(pemBytes("RSA PRIVATE KEY", rsaPKCS8)), `parse "RSA PRIVATE KEY" PEM block`},
		{"public key", string(pemBytes("PUBLIC KEY", pubDER)), `no private key among PEM blocks "PUBLIC KEY"`},
		{"certificate", string(pemBytes("CERTIFICATE", []byte("x"))), `"CERTIFICATE"`},
		{"encrypted PKCS#8", string(pemBytes("ENCRYPTED PRIVATE KEY", []byte("x"))), "encrypted"},
		{"legacy encrypted", string(legacy), "encrypted"},
		{"P-384", string(pemBytes("EC PRIVATE KEY", p384DER)), "P-384"},
		{"Ed25519", string(pemBytes("PRIVATE KEY", edDER)), "unsupported key type ed25519.PrivateKey"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key, err := ParsePrivateKey([]byte(tc.pem))
			if key != nil {
				t.Errorf("got key %T", key)
			}
			wantErr(t, err, tc.want)
		})
	}
}

func TestParsePublicKeyEncodings(t *testing.T) {
	k := testKeys()
	pkixDER := func(pub any) []byte {
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "signer"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	cert, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.ec.Public(), k.ec)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		pem  []byte
		want crypto.PublicKey
	}{
		{"PKIX ECDSA", pemBytes("PUBLIC KEY", pkixDER(k.ec.Public())), k.ec.Public()},
		{"PKIX RSA (reference)", pemBytes("PUBLIC KEY", pkixDER(k.rsa.Public())), k.rsa.Public()},
		{"EC PUBLIC KEY (reference)", pemBytes("EC PUBLIC KEY", pkixDER(k.ec.Public())), k.ec.Public()},
		{"PKCS#1 RSA", pemBytes("RSA PUBLIC KEY", x509.MarshalPKCS1PublicKey(&k.rsa.PublicKey)), k.rsa.Public()},
		{"certificate", pemBytes("CERTIFICATE", cert), k.ec.Public()},
		{"unknown block first", append(pemBytes("COMMENT", []byte("x")), pemBytes("PUBLIC KEY", pkixDER(k.rsa.Public()))...), k.rsa.Public()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePublicKey(tc.pem)
			if err != nil {
				t.Fatal(err)
			}
			if !got.(pubEqualer).Equal(tc.want) {
				t.Fatal("parsed key differs")
			}
		})
	}
}

func TestParsePublicKeyErrors(t *testing.T) {
	k := testKeys()
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384DER, _ := x509.MarshalPKIXPublicKey(p384.Public())
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	edDER, _ := x509.MarshalPKIXPublicKey(edPub)
	sec1, _ := x509.MarshalECPrivateKey(k.ec)
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	smallDER, _ := x509.MarshalPKIXPublicKey(small.Public())

	tests := []struct {
		name, pem, want string
	}{
		{"empty", "", "no PEM block found"},
		{"garbage", "ssh-ed25519 AAAA", "no PEM block found"},
		{"garbage in block", string(pemBytes("PUBLIC KEY", []byte("garbage"))), `parse "PUBLIC KEY" PEM block`},
		{"private key", string(pemBytes("EC PRIVATE KEY", sec1)), "is a private key"},
		{"unknown type", string(pemBytes("SSH PUBLIC KEY", []byte("x"))), `no public key among PEM blocks "SSH PUBLIC KEY"`},
		{"P-384", string(pemBytes("PUBLIC KEY", p384DER)), "P-384"},
		{"Ed25519", string(pemBytes("PUBLIC KEY", edDER)), "unsupported public key type ed25519.PublicKey"},
		{"RSA 1024", string(pemBytes("PUBLIC KEY", smallDER)), "1024 bits"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key, err := ParsePublicKey([]byte(tc.pem))
			if key != nil {
				t.Errorf("got key %T", key)
			}
			wantErr(t, err, tc.want)
		})
	}
}

func TestMarshalUnsupported(t *testing.T) {
	k := testKeys()
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)

	for _, key := range []crypto.Signer{edKey, p384} {
		if _, err := MarshalPrivateKey(key); err == nil {
			t.Errorf("MarshalPrivateKey(%T) succeeded", key)
		}
	}
	for _, pub := range []crypto.PublicKey{k.ec, k.rsa, edKey.Public(), p384.Public(), nil} {
		if _, err := MarshalPublicKey(pub); err == nil {
			t.Errorf("MarshalPublicKey(%T) succeeded", pub)
		}
	}
}
