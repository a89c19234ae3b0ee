package auth

import (
	"crypto"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"
)

func FuzzParseBasic(f *testing.F) {
	for _, s := range []string{
		"", "Basic", "Basic ", "basic " + b64("u:p"), BasicHeader("4711", "eyJ.a.b"),
		"Bearer x", "Basic !!", "Basic " + b64("nocolon"), " \tBASIC\t" + b64(":") + " ",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		user, password, err := ParseBasic(header)
		if err != nil {
			if !errors.Is(err, ErrUnauthorized) {
				t.Fatalf("error %v does not wrap ErrUnauthorized", err)
			}
			if user != "" || password != "" {
				t.Fatalf("error with credentials %q, %q", user, password)
			}
			return
		}
		// What parsed must survive a round trip through BasicHeader.
		u2, p2, err := ParseBasic(BasicHeader(user, password))
		if err != nil || u2 != user || p2 != password {
			t.Fatalf("round trip of %q, %q gave %q, %q, %v", user, password, u2, p2, err)
		}
	})
}

func FuzzVerify(f *testing.F) {
	k := testKeys()
	// Seeds: real tokens signed by keys the verifiers do not trust, and
	// near-misses.
	opts := TokenOptions{AgentID: "4711", Role: RoleAgent, Duration: time.Hour}
	for _, key := range []crypto.Signer{k.ec2, k.rsa2} {
		tok, err := Sign(key, opts)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(tok)
		f.Add(tok[:strings.LastIndex(tok, ".")+1])
	}
	for _, s := range []string{"", "a.b.c", "..", "eyJhbGciOiJub25lIn0.e30.", "eyJhbGciOiJIUzI1NiJ9.e30.x"} {
		f.Add(s)
	}
	verifiers := []*Verifier{
		NewVerifier(k.ec.Public(), ""),
		NewVerifier(k.rsa.Public(), ""),
		NewVerifier(k.ec.Public(), "proxy"),
	}
	f.Fuzz(func(t *testing.T, token string) {
		for _, v := range verifiers {
			for _, role := range []string{RoleAgent, RoleClient} {
				c, err := v.Verify(token, role)
				if err == nil || c != nil {
					t.Fatalf("random token %q verified: %+v", token, c)
				}
				if !errors.Is(err, ErrUnauthorized) {
					t.Fatalf("error %v does not wrap ErrUnauthorized", err)
				}
			}
		}
	})
}

func FuzzParsePrivateKey(f *testing.F) {
	k := testKeys()
	for _, key := range []crypto.Signer{k.ec, k.rsa} {
		p, err := MarshalPrivateKey(key)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p)
		der, _ := x509.MarshalPKCS8PrivateKey(key)
		f.Add(pemBytes("PRIVATE KEY", der))
	}
	f.Add([]byte("-----BEGIN EC PRIVATE KEY-----\n\n-----END EC PRIVATE KEY-----\n"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, data []byte) {
		key, err := ParsePrivateKey(data)
		if err != nil {
			if key != nil {
				t.Fatalf("error %v with key %T", err, key)
			}
			return
		}
		// Whatever parsed is usable: it marshals and signs.
		if _, err := MarshalPrivateKey(key); err != nil {
			t.Fatalf("parsed key does not marshal: %v", err)
		}
		if _, err := MarshalPublicKey(key.Public()); err != nil {
			t.Fatalf("parsed key's public half does not marshal: %v", err)
		}
	})
}

func FuzzParsePublicKey(f *testing.F) {
	k := testKeys()
	for _, key := range []crypto.Signer{k.ec, k.rsa} {
		p, err := MarshalPublicKey(key.Public())
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p)
	}
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\n\n-----END PUBLIC KEY-----\n"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, data []byte) {
		pub, err := ParsePublicKey(data)
		if err != nil {
			if pub != nil {
				t.Fatalf("error %v with key %T", err, pub)
			}
			return
		}
		p, err := MarshalPublicKey(pub)
		if err != nil {
			t.Fatalf("parsed key does not marshal: %v", err)
		}
		if _, err := ParsePublicKey(p); err != nil {
			t.Fatalf("marshalled key does not parse: %v", err)
		}
	})
}
