package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestNoAuthAgent(t *testing.T) {
	tests := []struct {
		credential string
		want       string // error substring; "" = accepted
	}{
		{"4711", ""},
		{"agent-ü.example", ""},
		{" spaced ", ""}, // taken as is, like the reference
		{strings.Repeat("a", 256), ""},
		{"", "empty"},
		{strings.Repeat("a", 257), "longer than 256 bytes"},
		{"a\nb", "control character U+000A"},
		{"a\x00", "control character U+0000"},
		{"a\x7f", "control character U+007F"},
		{"a\u0085", "control character U+0085"},
		{"\xff\xfe", "not valid UTF-8"},
		{"a:b", "contains ':', which separates user and password in Proxy-Authorization, so no client could select this agent"},
		{":", "contains ':'"},
		{"site-*", "contains '*', which client policies read as a wildcard"},
		{"a,b", "contains ',', which separates agent patterns in client policies"},
		{"eyJhbGciOiJFUzI1NiJ9." + strings.Repeat("e", 300) + ".c2ln", "this proxy uses noauth and the credential sent looks like a JWT"},
	}
	for _, tc := range tests {
		t.Run(tc.credential, func(t *testing.T) {
			id, err := NoAuth().Agent(tc.credential)
			if tc.want == "" {
				if err != nil || id != tc.credential {
					t.Fatalf("Agent = %q, %v; want %q", id, err, tc.credential)
				}
				return
			}
			if id != "" {
				t.Errorf("got ID %q", id)
			}
			wantErr(t, err, tc.want, ErrUnauthorized)
		})
	}
}

func TestNoAuthClient(t *testing.T) {
	tests := []struct {
		user, password string
		want           string
	}{
		{"4711", "", ""},
		{"4711", "any password at all", ""}, // ignored, like the reference
		{"", "secret", "user: empty"},
		{"a\r\nb", "", "control character"},
		{"*", "", "user: contains '*'"}, // a user names one agent, not a pattern
	}
	for _, tc := range tests {
		t.Run(tc.user+":"+tc.password, func(t *testing.T) {
			id, err := NoAuth().Client(Credentials{User: tc.user, Password: tc.password})
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if id.Kind != KindNoAuth || id.String() != "noauth" || id.Metric != OtherClient {
					t.Errorf("identity %+v, want noauth", id)
				}
				return
			}
			wantErr(t, err, tc.want, ErrUnauthorized)
		})
	}
}

func TestJWTAuthenticator(t *testing.T) {
	for _, kp := range algKeys() {
		a := JWT(NewVerifier(kp.key.Public(), "proxy"))
		tok := func(agentID, role string) string {
			return mustSign(t, kp.key, TokenOptions{AgentID: agentID, Role: role, Audience: "proxy", Duration: time.Hour})
		}
		t.Run(kp.alg+"/agent", func(t *testing.T) {
			id, err := a.Agent(tok("4711", RoleAgent))
			if err != nil || id != "4711" {
				t.Fatalf("Agent = %q, %v; want 4711", id, err)
			}
			_, err = a.Agent(tok("4711", RoleClient))
			wantErr(t, err, "role client, want agent", ErrUnauthorized)
			_, err = a.Agent("4711") // a noauth agent talking to a JWT proxy
			wantErr(t, err, "this proxy requires an agent JWT (--auth.type=jwt --auth.jwt.token=file:PATH); the credential sent is not a JWT", ErrUnauthorized)
			_, err = a.Agent("abc.def.ghi") // shaped like a JWT: jwt's own reason
			wantErr(t, err, "token is malformed", ErrUnauthorized)
			_, err = a.Agent(mustSign(t, kp.other, TokenOptions{AgentID: "4711", Role: RoleAgent, Audience: "proxy", Duration: time.Hour}))
			wantErr(t, err, "signature is invalid", ErrUnauthorized)
		})
		t.Run(kp.alg+"/client", func(t *testing.T) {
			id, err := a.Client(Credentials{User: "4711", Password: tok("4711", RoleClient)})
			if err != nil {
				t.Fatal(err)
			}
			if id.Kind != KindJWT || !strings.HasPrefix(id.Name, "jti:") || id.Metric != OtherClient {
				t.Errorf("identity %+v, want jwt with the jti as name", id)
			}
			tests := []struct {
				name, user, password, want string
			}{
				{"agent_id mismatch", "4711", tok("4712", RoleClient), "agent_id mismatch: user 4711, token 4712"},
				{"agent token", "4711", tok("4711", RoleAgent), "role agent, want client"},
				{"empty user", "", tok("4711", RoleClient), "empty user"},
				{"empty password", "4711", "", "empty token"},
				{"garbage password", "4711", "secret", "token is malformed"},
				{"odd user is quoted", "47\n11", tok("4711", RoleClient), `user "47\n11"`},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					_, err := a.Client(Credentials{User: tc.user, Password: tc.password})
					wantErr(t, err, tc.want, ErrUnauthorized)
				})
			}
		})
	}
}

func TestDeniedUnwrap(t *testing.T) {
	cause := errors.New("cause")
	err := error(&denied{reason: "r", cause: cause})
	if !errors.Is(err, ErrUnauthorized) || !errors.Is(err, cause) || err.Error() != "unauthorized: r" {
		t.Fatalf("denied = %q, want it to wrap ErrUnauthorized and its cause", err)
	}
}

func TestLooksLikeJWT(t *testing.T) {
	for s, want := range map[string]bool{
		"eyJhbGciOiJFUzI1NiJ9.eyJhIjoxfQ.c2ln": true,
		"a.b.c":                                true,
		"a.b.c=":                               true,
		"4711":                                 false,
		"a.b":                                  false,
		"a..c":                                 false,
		".b.c":                                 false,
		"a.b.c.d":                              false,
		"a.b.c d":                              false,
		"a.b/c.d":                              false,
		"":                                     false,
	} {
		if got := looksLikeJWT(s); got != want {
			t.Errorf("looksLikeJWT(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestSignRefusesUnselectableAgentID(t *testing.T) {
	kp := algKeys()[0]
	if _, err := Sign(kp.key, TokenOptions{AgentID: "a:b", Role: RoleAgent, Duration: time.Hour}); err == nil || !strings.Contains(err.Error(), "contains ':'") {
		t.Fatalf("Sign with agent ID a:b: %v, want refused", err)
	}
}

func TestCredentialAgentID(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := Sign(key, TokenOptions{AgentID: "4711", Role: RoleAgent, Duration: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for cred, want := range map[string]string{"4711": "4711", tok: "4711", "a.b.c": ""} {
		if got := CredentialAgentID(cred); got != want {
			t.Errorf("CredentialAgentID(%.20q) = %q, want %q", cred, got, want)
		}
	}
}
