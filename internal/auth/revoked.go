package auth

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"sync/atomic"
	"time"
)

// The revocation list (--auth.jwt.revoked) names tokens refused before
// they expire, one jti per line. Blank lines and lines starting with '#'
// are skipped; spaces around a jti are trimmed. A jti is 1-256 bytes of
// printable ASCII without spaces.

// Bounds of a revocation list.
const (
	MaxRevokedFileBytes = 4 << 20
	maxJTI              = 256
)

// RevokedSet is a parsed revocation list.
type RevokedSet struct {
	ids map[string]struct{}
	sum [32]byte
}

// Has reports whether jti is revoked.
func (s *RevokedSet) Has(jti string) bool {
	if s == nil || jti == "" {
		return false
	}
	_, ok := s.ids[jti]
	return ok
}

// ParseRevoked parses a revocation list; an error names the line.
func ParseRevoked(data []byte) (*RevokedSet, error) {
	if len(data) > MaxRevokedFileBytes {
		return nil, fmt.Errorf("larger than %d bytes", MaxRevokedFileBytes)
	}
	s := &RevokedSet{ids: map[string]struct{}{}, sum: sha256.Sum256(data)}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), MaxRevokedFileBytes+1)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		if err := checkJTI(line); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		s.ids[string(line)] = struct{}{}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return s, nil
}

func checkJTI(b []byte) error {
	if len(b) > maxJTI {
		return fmt.Errorf("jti longer than %d bytes", maxJTI)
	}
	for i, c := range b {
		if c <= ' ' || c > '~' {
			return fmt.Errorf("jti: byte 0x%02x at %d (want printable ASCII without spaces; one jti per line)", c, i)
		}
	}
	return nil
}

// RevokedFile is a revocation list in force, re-read by Check. Safe for
// concurrent use.
type RevokedFile struct {
	path  string
	cur   atomic.Pointer[RevokedSet]
	stamp stamp
}

// OpenRevokedFile reads and parses the revocation list at path.
func OpenRevokedFile(path string) (*RevokedFile, error) {
	f := &RevokedFile{path: path}
	data, fi, _, err := f.stamp.reread(path, MaxRevokedFileBytes, time.Now())
	if err != nil {
		return nil, err
	}
	s, err := ParseRevoked(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	f.cur.Store(s)
	f.stamp.record(fi)
	return f, nil
}

// Has reports whether jti is revoked now. A nil *RevokedFile revokes
// nothing.
func (f *RevokedFile) Has(jti string) bool {
	if f == nil {
		return false
	}
	return f.cur.Load().Has(jti)
}

// Check reads the file again, as ClientsFile.Check.
func (f *RevokedFile) Check() (apply func(), err error) {
	data, fi, skip, err := f.stamp.reread(f.path, MaxRevokedFileBytes, time.Now())
	if skip || err != nil {
		return nil, err
	}
	// Applied only over what was read against: the file watcher and a
	// reload both check, and an older read must not replace a newer one.
	old := f.cur.Load()
	if sha256.Sum256(data) == old.sum {
		f.stamp.record(fi)
		return nil, nil
	}
	s, err := ParseRevoked(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.path, err)
	}
	return func() {
		if f.cur.CompareAndSwap(old, s) {
			f.stamp.record(fi)
		}
	}, nil
}
