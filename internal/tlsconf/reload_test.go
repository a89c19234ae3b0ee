package tlsconf

import (
	"errors"
	"math/big"
	"path/filepath"
	"slices"
	"testing"
)

// Reload re-reads the files at once, with no refresh interval: new server
// certificate, client CA and CRL apply to the next handshake; a bad file is
// an error naming its setting and changes nothing.
func TestReloadServerNow(t *testing.T) {
	p := newLocalPKI(t)
	crlPath := filepath.Join(p.dir, "crl.pem")
	empty, err := p.ca.RevocationList(nil)
	if err != nil {
		t.Fatal(err)
	}
	replaceFile(t, crlPath, empty)
	f := p.serverFiles(true)
	f.ClientCRL = crlPath
	r, err := NewServer(f, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	cli := mustClient(t, p.agentOptions(true))
	res := handshake(t, r.Config(), cli)
	if res.err != nil {
		t.Fatal(res.err)
	}
	old := peerSerial(res.client)

	if changed, err := r.Reload(); err != nil || len(changed) != 0 {
		t.Fatalf("reload of unchanged files: changed %v, err %v", changed, err)
	}

	// A broken certificate: refused, naming the setting; the old one stays.
	replaceFile(t, p.path(LocalProxyCert), []byte("garbage"))
	_, _, err = r.Check()
	var fe *FileError
	if !errors.As(err, &fe) || fe.Setting != string(settingCert) {
		t.Fatalf("check of a broken certificate: %v, want a FileError for %s", err, settingCert)
	}
	if got := peerSerial(handshake(t, r.Config(), cli).client); got.Cmp(old) != 0 {
		t.Fatalf("after a refused reload served %x, want the old %x", got, old)
	}

	// A new certificate and a CRL revoking the agent: Check alone changes
	// nothing, apply switches both.
	certPEM, keyPEM, err := p.ca.Issue("proxy-2", []string{"localhost"}, false)
	if err != nil {
		t.Fatal(err)
	}
	replaceFile(t, p.path(LocalProxyKey), keyPEM)
	replaceFile(t, p.path(LocalProxyCert), certPEM)
	revoked, err := p.ca.RevocationList([]*big.Int{serialOf(t, readFile(t, p.path(LocalAgentCert)))})
	if err != nil {
		t.Fatal(err)
	}
	replaceFile(t, crlPath, revoked)
	changed, apply, err := r.Check()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"tls.file.cert", "tls.file.key", "tls.file.client-crl"}
	if !slices.Equal(changed, want) {
		t.Fatalf("changed %v, want %v", changed, want)
	}
	if res := handshake(t, r.Config(), cli); res.err != nil || peerSerial(res.client).Cmp(old) != 0 {
		t.Fatalf("before apply: err %v, serial %x, want the old %x", res.err, peerSerial(res.client), old)
	}
	apply()
	res = handshake(t, r.Config(), cli)
	if res.serverErr == nil || peerSerial(res.client).Cmp(serialOf(t, certPEM)) != 0 {
		t.Fatalf("after apply: served %x (want %x), server error %v (want revoked)", peerSerial(res.client), serialOf(t, certPEM), res.serverErr)
	}
}

func TestReloadClientNow(t *testing.T) {
	p := newLocalPKI(t)
	srv := mustServer(t, p.serverFiles(true), 0, nil)
	r, err := NewClient(p.agentOptions(true), nil)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := p.ca.Issue("agent-2", nil, true)
	if err != nil {
		t.Fatal(err)
	}
	replaceFile(t, p.path(LocalAgentKey), keyPEM)
	if _, err := r.Reload(); err == nil {
		t.Fatal("reload with a key that does not match the certificate succeeded")
	}
	replaceFile(t, p.path(LocalAgentCert), certPEM)
	changed, err := r.Reload()
	if err != nil || !slices.Equal(changed, []string{"tls.file.cert", "tls.file.key"}) {
		t.Fatalf("reload: changed %v, err %v", changed, err)
	}
	res := handshake(t, srv, r.Config())
	if res.serverErr != nil || peerSerial(res.server).Cmp(serialOf(t, certPEM)) != 0 {
		t.Fatalf("after reload: server error %v, client serial %x, want %x", res.serverErr, peerSerial(res.server), serialOf(t, certPEM))
	}

	// Without a client certificate there is nothing to reload.
	none, err := NewClient(p.agentOptions(false), nil)
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := none.Reload(); err != nil || changed != nil {
		t.Fatalf("reload without files: %v, %v", changed, err)
	}
}
