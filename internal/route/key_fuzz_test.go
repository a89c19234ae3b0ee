package route

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"
)

// FuzzKey checks what the route store relies on, whatever bytes an agent ID
// holds: its key is a legal memcached key, and two IDs never share a key
// (they would overwrite each other's route, and each proxy would close the
// other's agent as replaced). Besides the two fuzzed IDs it tries the IDs
// an attacker would pick to collide with them: their hashed key
// "rh:<hex sha256>" and their key itself, taken as IDs (issue 9: the ID
// "rh:<hex sha256 of "x y">" shared the key of the ID "x y").
// Seeds: f.Add below and testdata/fuzz/FuzzKey.
func FuzzKey(f *testing.F) {
	f.Add("4711", "4712")
	f.Add("agent-1.example", "agent-1.example ")
	f.Fuzz(func(t *testing.T, a, b string) {
		ids := []string{a, b}
		for _, id := range []string{a, b} {
			if id == "" {
				continue // auth refuses an empty ID: it never reaches the store
			}
			checkLegalKey(t, id)
			sum := sha256.Sum256([]byte(id))
			ids = append(ids, "rh:"+hex.EncodeToString(sum[:]), Key(id))
		}
		for i, x := range ids {
			for _, y := range ids[i+1:] {
				if x != y && x != "" && y != "" && Key(x) == Key(y) {
					t.Fatalf("IDs %q and %q share the key %q", x, y, Key(x))
				}
			}
		}
	})
}

// checkLegalKey fails unless Key(id) is a key memcached accepts: 1 to 250
// bytes, no space or control character (the text protocol splits on them).
func checkLegalKey(t *testing.T, id string) {
	t.Helper()
	k := Key(id)
	if len(k) == 0 || len(k) > 250 {
		t.Fatalf("Key(%q) = %q: %d bytes, want 1..250", id, k, len(k))
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; c <= ' ' || c == 0x7f {
			t.Fatalf("Key(%q) = %q: byte %#x at %d", id, k, c, i)
		}
	}
}
