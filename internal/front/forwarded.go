package front

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// A node that forwards a client's tunnel to the proxy holding the agent
// sends ForwardedHeader with it. Any value stops the receiver from
// forwarding again (that only takes from the sender, so it is trusted from
// anyone). Not counting the request against the client limit a second time
// gives something, so it needs proof that a cluster member sent it:
//
//	rhf1 <unix ms> <mac>
//
// mac is the hex HMAC-SHA256, under the cluster key, of
// "reverse-http forwarded v1\n" ms "\n" agent ID "\n" host:port. Without a
// cluster key the value is "1" and proves nothing.
//
// A node that authenticated the client by its TLS client certificate (a
// client of the clients file, by CN) has no password to forward; it
// vouches for the client instead:
//
//	rhf2 <unix ms> <name> <mac>
//
// name is the client's name, base64url without padding, and mac the hex
// HMAC-SHA256 of "reverse-http forwarded v2\n" ms "\n" agent ID "\n"
// host:port "\n" name. The receiver takes the name as the CN of a
// verified client certificate (its own clients file gives the policy),
// and only with the cluster key.

const forwardedMagic = "rhf1"

// ForwardedMaxAge is how far a signed ForwardedHeader's time may be from
// the receiver's clock: node clocks may differ by a few seconds, and a
// copied header is good only this long, for the same agent and
// destination.
const ForwardedMaxAge = 30 * time.Second

// SignForwarded returns the ForwardedHeader value for a tunnel to hostport
// through agentID forwarded at now.
func SignForwarded(key []byte, agentID, hostport string, now time.Time) string {
	if len(key) == 0 {
		return "1"
	}
	ms := strconv.FormatInt(now.UnixMilli(), 10)
	return forwardedMagic + " " + ms + " " + forwardedMAC(key, ms, agentID, hostport)
}

const forwardedMagic2 = "rhf2"

// SignForwardedFor is SignForwarded for a client authenticated by its
// certificate as client certName, which the value vouches for. Without a
// key or a name it is SignForwarded.
func SignForwardedFor(key []byte, agentID, hostport, certName string, now time.Time) string {
	if len(key) == 0 || certName == "" {
		return SignForwarded(key, agentID, hostport, now)
	}
	ms := strconv.FormatInt(now.UnixMilli(), 10)
	name := base64.RawURLEncoding.EncodeToString([]byte(certName))
	return forwardedMagic2 + " " + ms + " " + name + " " + forwardedMAC2(key, ms, agentID, hostport, certName)
}

func forwardedMAC2(key []byte, ms, agentID, hostport, certName string) string {
	h := hmac.New(sha256.New, key)
	h.Write([]byte("reverse-http forwarded v2\n" + ms + "\n" + agentID + "\n" + hostport + "\n" + certName))
	return hex.EncodeToString(h.Sum(nil))
}

// maxVouchedName bounds the client name a forwarded header may carry.
const maxVouchedName = 256

// checkForwardedFor is checkForwarded that also returns the client name
// a v2 value vouches for ("" for v1).
func checkForwardedFor(key []byte, value, agentID, hostport string, now time.Time) (string, error) {
	f := strings.Fields(value)
	if len(f) != 4 || f[0] != forwardedMagic2 {
		return "", checkForwarded(key, value, agentID, hostport, now)
	}
	if len(key) == 0 {
		return "", errors.New("this node has no --store.cluster-key to verify it with")
	}
	if len(f[2]) > maxVouchedName*4/3+4 {
		return "", errors.New("malformed")
	}
	name, err := base64.RawURLEncoding.DecodeString(f[2])
	if err != nil || len(name) == 0 {
		return "", errors.New("malformed")
	}
	if !hmac.Equal([]byte(f[3]), []byte(forwardedMAC2(key, f[1], agentID, hostport, string(name)))) {
		return "", errors.New("not signed with the cluster key, or for another agent, destination or client")
	}
	ms, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return "", errors.New("malformed")
	}
	if d := now.Sub(time.UnixMilli(ms)); d > ForwardedMaxAge || d < -ForwardedMaxAge {
		return "", errors.New("signed at " + time.UnixMilli(ms).UTC().Format(time.RFC3339) + ", over " + ForwardedMaxAge.String() + " from this node's clock")
	}
	return string(name), nil
}

func forwardedMAC(key []byte, ms, agentID, hostport string) string {
	h := hmac.New(sha256.New, key)
	h.Write([]byte("reverse-http forwarded v1\n" + ms + "\n" + agentID + "\n" + hostport))
	return hex.EncodeToString(h.Sum(nil))
}

// checkForwarded reports why value does not prove that a cluster member
// forwarded the tunnel to hostport through agentID, or nil if it does.
func checkForwarded(key []byte, value, agentID, hostport string, now time.Time) error {
	if len(key) == 0 {
		return errors.New("this node has no --store.cluster-key to verify it with")
	}
	f := strings.Fields(value)
	if len(f) != 3 || f[0] != forwardedMagic {
		return errors.New("not signed")
	}
	ms, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return errors.New("malformed")
	}
	if !hmac.Equal([]byte(f[2]), []byte(forwardedMAC(key, f[1], agentID, hostport))) {
		return errors.New("not signed with the cluster key, or for another agent or destination")
	}
	if d := now.Sub(time.UnixMilli(ms)); d > ForwardedMaxAge || d < -ForwardedMaxAge {
		return errors.New("signed at " + time.UnixMilli(ms).UTC().Format(time.RFC3339) + ", over " + ForwardedMaxAge.String() + " from this node's clock")
	}
	return nil
}
