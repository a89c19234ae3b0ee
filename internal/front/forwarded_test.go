package front

import (
	"strings"
	"testing"
	"time"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

// TestCheckForwarded: only a header signed with the cluster key, for this
// agent and destination, within ForwardedMaxAge of now, is proof.
func TestCheckForwarded(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	good := SignForwarded(testKey, "4711", "db:5432", now)
	for _, tc := range []struct {
		name, value, agent, dest string
		key                      []byte
		at                       time.Time
		wantErr                  string // "" = proof
	}{
		{"signed", good, "4711", "db:5432", testKey, now, ""},
		{"clock a little ahead", good, "4711", "db:5432", testKey, now.Add(-ForwardedMaxAge + time.Second), ""},
		{"old", good, "4711", "db:5432", testKey, now.Add(ForwardedMaxAge + time.Second), "from this node's clock"},
		{"from the future", good, "4711", "db:5432", testKey, now.Add(-ForwardedMaxAge - time.Second), "from this node's clock"},
		{"other agent", good, "4712", "db:5432", testKey, now, "another agent or destination"},
		{"other destination", good, "4711", "db:5433", testKey, now, "another agent or destination"},
		{"other key", SignForwarded([]byte("another key of 32 bytes........."), "4711", "db:5432", now), "4711", "db:5432", testKey, now, "not signed with the cluster key"},
		{"unsigned", "1", "4711", "db:5432", testKey, now, "not signed"},
		{"no key here", good, "4711", "db:5432", nil, now, "no --store.cluster-key"},
		{"garbage time", "rhf1 soon " + strings.Repeat("0", 64), "4711", "db:5432", testKey, now, "malformed"},
		{"extra field", good + " x", "4711", "db:5432", testKey, now, "not signed"},
	} {
		err := checkForwarded(tc.key, tc.value, tc.agent, tc.dest, tc.at)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s: %v, want it accepted", tc.name, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.wantErr)
		}
	}
	if v := SignForwarded(nil, "4711", "db:5432", now); v != "1" {
		t.Errorf("without a key: %q, want 1", v)
	}
}

// FuzzCheckForwarded: no header value panics the check, and none but the
// one signed for this agent and destination is accepted.
func FuzzCheckForwarded(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	good := SignForwarded(testKey, "4711", "db:5432", now)
	f.Add(good)
	f.Add("1")
	f.Add("rhf1 1800000000000 zz")
	f.Add("rhf1 -9223372036854775808 " + strings.Repeat("a", 64))
	f.Fuzz(func(t *testing.T, v string) {
		if err := checkForwarded(testKey, v, "4711", "db:5432", now); err == nil && strings.Join(strings.Fields(v), " ") != good {
			t.Fatalf("%q accepted", v)
		}
	})
}

// TestForwardedFor: a v2 header vouches for the client name it was signed
// for, for this agent and destination, and only with the cluster key; a
// v1 header vouches for nobody.
func TestForwardedFor(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	good := SignForwardedFor(testKey, "4711", "db:5432", "ci team", now)
	if name, err := checkForwardedFor(testKey, good, "4711", "db:5432", now); err != nil || name != "ci team" {
		t.Fatalf("signed for ci team: %q, %v", name, err)
	}
	if name, err := checkForwardedFor(testKey, SignForwarded(testKey, "4711", "db:5432", now), "4711", "db:5432", now); err != nil || name != "" {
		t.Errorf("v1: %q, %v; want proof for nobody", name, err)
	}
	if v := SignForwardedFor(testKey, "4711", "db:5432", "", now); !strings.HasPrefix(v, "rhf1 ") {
		t.Errorf("no name: %q, want v1", v)
	}
	f := strings.Fields(good)
	forged := f[0] + " " + f[1] + " b3Bz " + f[3] // "ops" with ci's MAC
	for _, tc := range []struct {
		name, value, agent, dest string
		key                      []byte
		at                       time.Time
	}{
		{"other name", forged, "4711", "db:5432", testKey, now},
		{"other agent", good, "4712", "db:5432", testKey, now},
		{"other destination", good, "4711", "db:1", testKey, now},
		{"no key here", good, "4711", "db:5432", nil, now},
		{"old", good, "4711", "db:5432", testKey, now.Add(time.Minute)},
		{"bad name encoding", f[0] + " " + f[1] + " !! " + f[3], "4711", "db:5432", testKey, now},
	} {
		if name, err := checkForwardedFor(tc.key, tc.value, tc.agent, tc.dest, tc.at); err == nil {
			t.Errorf("%s: accepted for %q", tc.name, name)
		}
	}
}

func FuzzCheckForwardedFor(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	good := SignForwardedFor(testKey, "4711", "db:5432", "ci", now)
	f.Add(good)
	f.Add("rhf2 1800000000000 Y2k " + strings.Repeat("a", 64))
	f.Fuzz(func(t *testing.T, v string) {
		name, err := checkForwardedFor(testKey, v, "4711", "db:5432", now)
		if err == nil && name != "" && strings.Join(strings.Fields(v), " ") != good {
			t.Fatalf("%q accepted for %q", v, name)
		}
	})
}
