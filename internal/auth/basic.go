package auth

import (
	"encoding/base64"
	"strings"
)

// ParseBasic parses a Proxy-Authorization header value
// "Basic base64(user:password)". The scheme is case-insensitive and spaces
// around the value and the credentials are ignored. The password is what
// follows the first colon and may itself hold colons. Errors wrap
// ErrUnauthorized.
func ParseBasic(header string) (user, password string, err error) {
	header = strings.TrimSpace(header)
	if header == "" {
		return "", "", deny("no credentials")
	}
	scheme, creds := header, ""
	if i := strings.IndexAny(header, " \t"); i >= 0 {
		scheme, creds = header[:i], header[i+1:]
	}
	if !strings.EqualFold(scheme, "Basic") {
		if len(scheme) > 20 {
			scheme = scheme[:20] + "..."
		}
		return "", "", deny("auth scheme %q, want Basic", scheme)
	}
	creds = strings.TrimSpace(creds)
	if creds == "" {
		return "", "", deny("empty Basic credentials")
	}
	raw, err := base64.StdEncoding.DecodeString(creds)
	if err != nil {
		return "", "", &denied{reason: "Basic credentials are not valid base64", cause: err}
	}
	user, password, ok := strings.Cut(string(raw), ":")
	if !ok {
		return "", "", deny("Basic credentials without ':' between user and password")
	}
	return user, password, nil
}

// BasicHeader returns the header value "Basic base64(user:password)".
func BasicHeader(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}
