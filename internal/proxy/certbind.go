package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"strconv"
	"strings"

	"github.com/reverse-http/reverse-http/internal/tlsconf"
)

// Values of Config.AgentIDFromCert.
const (
	// AgentIDFromCN: the agent ID must equal the client certificate's
	// subject common name.
	AgentIDFromCN = "cn"
	// AgentIDFromSAN: the agent ID must equal one of the client
	// certificate's DNS SANs, or be named by one of its URI SANs of the form
	// tlsconf.AgentURIPrefix + ID (see tlsconf.AgentIDFromURI).
	AgentIDFromSAN = "san"
)

// certMismatchError is an authenticated agent ID that its client
// certificate does not name.
type certMismatchError struct{ msg string }

func (e *certMismatchError) Error() string { return e.msg }

// checkCertBinding returns a *certMismatchError unless the client
// certificate of state names agent id the way mode says. Comparisons are
// exact, byte for byte.
func checkCertBinding(mode string, state tls.ConnectionState, id string) error {
	var what string
	switch mode {
	case AgentIDFromCN:
		what = "the client certificate's CN"
	case AgentIDFromSAN:
		what = "a DNS SAN of the client certificate or its URI SAN " + tlsconf.AgentURIPrefix + "<ID>"
	default:
		return &certMismatchError{fmt.Sprintf("the proxy requires the agent ID to match the client certificate in an unknown way (%q)", mode)}
	}
	if len(state.PeerCertificates) == 0 {
		return &certMismatchError{fmt.Sprintf("the proxy requires the agent ID to match %s, but the agent sent no client certificate; agent ID is %s", what, short(id))}
	}
	cert := state.PeerCertificates[0]
	if mode == AgentIDFromCN {
		if cert.Subject.CommonName == id {
			return nil
		}
		return &certMismatchError{fmt.Sprintf("the proxy requires the agent ID to match %s: certificate CN is %s, agent ID is %s",
			what, short(cert.Subject.CommonName), short(id))}
	}
	for _, n := range cert.DNSNames {
		if n == id {
			return nil
		}
	}
	for _, u := range cert.URIs {
		if got, ok := tlsconf.AgentIDFromURI(u); ok && got == id {
			return nil
		}
	}
	return &certMismatchError{fmt.Sprintf("the proxy requires the agent ID to match %s: agent ID is %s, certificate SANs are %s",
		what, short(id), describeSANs(cert))}
}

// short quotes s for a refusal reason, cut to 64 bytes: the reason travels
// in a QUIC CONNECTION_CLOSE and is logged by both sides.
func short(s string) string {
	const n = 64
	if len(s) <= n {
		return strconv.Quote(s)
	}
	return strconv.Quote(s[:n]) + "..."
}

// describeSANs lists the DNS and URI SANs of cert, at most four.
func describeSANs(cert *x509.Certificate) string {
	var sans []string
	for _, n := range cert.DNSNames {
		sans = append(sans, "DNS:"+short(n))
	}
	for _, u := range cert.URIs {
		sans = append(sans, "URI:"+short(u.String()))
	}
	if len(sans) == 0 {
		return "none (DNS or URI)"
	}
	if len(sans) > 4 {
		sans = append(sans[:4], fmt.Sprintf("and %d more", len(sans)-4))
	}
	return strings.Join(sans, ", ")
}
