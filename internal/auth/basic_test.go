package auth

import (
	"encoding/base64"
	"testing"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestParseBasic(t *testing.T) {
	tests := []struct {
		name, header, user, password string
	}{
		{"plain", "Basic " + b64("4711:token"), "4711", "token"},
		{"lower-case scheme", "basic " + b64("4711:token"), "4711", "token"},
		{"upper-case scheme", "BASIC " + b64("4711:token"), "4711", "token"},
		{"surrounding spaces", "  Basic   " + b64("4711:token") + " \t", "4711", "token"},
		{"tab after scheme", "Basic\t" + b64("4711:token"), "4711", "token"},
		{"colons in password", "Basic " + b64("4711:a:b:c"), "4711", "a:b:c"},
		{"empty password", "Basic " + b64("4711:"), "4711", ""},
		{"empty user", "Basic " + b64(":pw"), "", "pw"},
		{"round trip", BasicHeader("agent ü", "eyJ.x.y"), "agent ü", "eyJ.x.y"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			user, password, err := ParseBasic(tc.header)
			if err != nil {
				t.Fatal(err)
			}
			if user != tc.user || password != tc.password {
				t.Fatalf("ParseBasic = %q, %q; want %q, %q", user, password, tc.user, tc.password)
			}
		})
	}
}

func TestParseBasicMalformed(t *testing.T) {
	tests := []struct {
		name, header, want string
	}{
		{"missing", "", "no credentials"},
		{"blank", " \t ", "no credentials"},
		{"bearer", "Bearer " + b64("4711:token"), `auth scheme "Bearer", want Basic`},
		{"digest", "Digest username=x", `auth scheme "Digest"`},
		{"no space after scheme", "Basic" + b64("4711:token"), "auth scheme"},
		{"long scheme cut short", "Basicxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", `"Basicxxxxxxxxxxxxxxx..."`},
		{"scheme only", "Basic", "empty Basic credentials"},
		{"scheme and spaces", "Basic   ", "empty Basic credentials"},
		{"bad base64", "Basic !!!!", "not valid base64"},
		{"unpadded base64", "Basic " + base64.RawStdEncoding.EncodeToString([]byte("4711:to")), "not valid base64"},
		{"space inside base64", "Basic " + b64("4711:token")[:4] + " " + b64("4711:token")[4:], "not valid base64"},
		{"missing colon", "Basic " + b64("4711token"), "without ':'"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			user, password, err := ParseBasic(tc.header)
			if user != "" || password != "" {
				t.Errorf("got %q, %q", user, password)
			}
			wantErr(t, err, tc.want, ErrUnauthorized)
		})
	}
}

func TestBasicHeader(t *testing.T) {
	if got, want := BasicHeader("Aladdin", "open sesame"), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="; got != want {
		t.Fatalf("BasicHeader = %q, want %q (RFC 7617 example)", got, want)
	}
}
