package auth

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"
	"gopkg.in/yaml.v3"

	"github.com/reverse-http/reverse-http/internal/allow"
)

// The clients file (--auth.clients.file) lists the clients that may use
// the proxy, each with a secret stored as a bcrypt hash, the agents it
// may use and, optionally, the destinations it may reach and an expiry:
//
//	clients:
//	  - name: ci
//	    secret_hash: $2a$10$...
//	    agents: ["4711", "site-*"]
//	    destinations: ["*.internal:443", "10.0.0.0/8"]
//	    expires: 2027-01-01T00:00:00Z
//
// A client authenticates with user = agent ID and password = NAME:SECRET
// (`reverse-http auth client add` prints it), or, on the HTTPS listener
// with client certificates, with a certificate whose CN is NAME.

// Bounds of a clients file.
const (
	MaxClientsFileBytes = 4 << 20
	MaxClients          = 10000
	maxClientName       = 64
	maxSecret           = 128
)

// ClientSecretCost is the bcrypt cost of the hashes `auth client add`
// writes: about 50-100ms of CPU per check on current hardware, paid once
// per client and secret (successes are cached).
const ClientSecretCost = bcrypt.DefaultCost

// clientsDoc is the file's YAML document.
type clientsDoc struct {
	Clients []clientEntry `yaml:"clients"`
}

type clientEntry struct {
	Name         string   `yaml:"name"`
	SecretHash   string   `yaml:"secret_hash"`
	Agents       []string `yaml:"agents"`
	Destinations []string `yaml:"destinations,omitempty"`
	Expires      string   `yaml:"expires,omitempty"`
}

// fileClient is one client, checked.
type fileClient struct {
	name    string
	hash    []byte
	agents  AgentPatterns
	dests   *allow.List // nil: no policy of its own
	expires time.Time   // zero: never
}

// ClientSet is a parsed clients file.
type ClientSet struct {
	clients map[string]*fileClient
	sum     [32]byte // of the file's bytes
	cache   *verifyCache
}

// Len is how many clients the set has.
func (s *ClientSet) Len() int { return len(s.clients) }

// CheckClientName reports why name cannot be a client's name, or nil: 1-64
// bytes of A-Z a-z 0-9 . _ -, starting with a letter or digit, and not
// OtherClient (the metrics label of clients not in the file).
func CheckClientName(name string) error {
	switch {
	case name == "":
		return errors.New("empty")
	case len(name) > maxClientName:
		return fmt.Errorf("longer than %d bytes", maxClientName)
	case name == OtherClient:
		return fmt.Errorf("%q is reserved (the metrics label of clients not in the file)", OtherClient)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case (c == '.' || c == '_' || c == '-') && i > 0:
		default:
			return fmt.Errorf("character %q at %d (allowed: A-Z a-z 0-9, and . _ - after the first)", c, i)
		}
	}
	return nil
}

// ParseClients parses a clients file. Every error says where.
func ParseClients(data []byte) (*ClientSet, error) {
	if len(data) > MaxClientsFileBytes {
		return nil, fmt.Errorf("larger than %d bytes", MaxClientsFileBytes)
	}
	var doc clientsDoc
	if len(bytes.TrimSpace(data)) > 0 {
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("YAML: %w", err)
		}
	}
	if len(doc.Clients) > MaxClients {
		return nil, fmt.Errorf("%d clients, more than %d", len(doc.Clients), MaxClients)
	}
	s := &ClientSet{clients: make(map[string]*fileClient, len(doc.Clients)), sum: sha256.Sum256(data), cache: newVerifyCache()}
	for i, e := range doc.Clients {
		c, err := e.check()
		if err != nil {
			if e.Name != "" && CheckClientName(e.Name) == nil {
				return nil, fmt.Errorf("client %d (%s): %w", i+1, e.Name, err)
			}
			return nil, fmt.Errorf("client %d: %w", i+1, err)
		}
		if s.clients[c.name] != nil {
			return nil, fmt.Errorf("client %d: name %s appears twice", i+1, c.name)
		}
		s.clients[c.name] = c
	}
	return s, nil
}

func (e clientEntry) check() (*fileClient, error) {
	if err := CheckClientName(e.Name); err != nil {
		return nil, fmt.Errorf("name: %w", err)
	}
	c := &fileClient{name: e.Name, hash: []byte(e.SecretHash)}
	if e.SecretHash == "" {
		return nil, errors.New("secret_hash: missing")
	}
	if _, err := bcrypt.Cost(c.hash); err != nil {
		return nil, fmt.Errorf("secret_hash: not a bcrypt hash: %w", err)
	}
	var err error
	if c.agents, err = ParseAgentPatterns(e.Agents); err != nil {
		return nil, fmt.Errorf("agents: %w", err)
	}
	if len(e.Destinations) > 0 {
		if c.dests, err = allow.Parse(e.Destinations); err != nil {
			return nil, fmt.Errorf("destinations: %w", err)
		}
		if c.dests.Empty() {
			return nil, errors.New("destinations: given but empty; leave it out to allow every destination the node allows")
		}
	}
	if e.Expires != "" {
		if c.expires, err = time.Parse(time.RFC3339, e.Expires); err != nil {
			return nil, fmt.Errorf("expires: want RFC 3339 (2027-01-01T00:00:00Z): %w", err)
		}
	}
	return c, nil
}

// ClientsFile is a clients file in force, re-read by Check. Safe for
// concurrent use.
type ClientsFile struct {
	path  string
	cur   atomic.Pointer[ClientSet]
	stamp stamp
	// sem bounds the bcrypt checks running at once, so that strangers
	// cannot take every CPU.
	sem chan struct{}
}

// OpenClientsFile reads and parses the clients file at path.
func OpenClientsFile(path string) (*ClientsFile, error) {
	f := &ClientsFile{path: path, sem: make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2))}
	data, fi, _, err := f.stamp.reread(path, MaxClientsFileBytes, time.Now())
	if err != nil {
		return nil, err
	}
	s, err := ParseClients(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	f.cur.Store(s)
	f.stamp.record(fi)
	return f, nil
}

// readBounded reads path, refusing one larger than limit bytes.
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return data, nil
}

// Path is the file's path.
func (f *ClientsFile) Path() string { return f.path }

// Set returns the clients in force.
func (f *ClientsFile) Set() *ClientSet { return f.cur.Load() }

// Check reads the file again, unless its size, modification time and
// identity say it has not changed (see stamp). If its contents changed and
// parse, apply puts them in force (the caches of verified secrets start
// empty); if they did not change, apply is nil. A file that does not
// parse is an error naming it, and the clients in force stay.
func (f *ClientsFile) Check() (apply func(), err error) {
	data, fi, skip, err := f.stamp.reread(f.path, MaxClientsFileBytes, time.Now())
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
	s, err := ParseClients(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.path, err)
	}
	return func() {
		if f.cur.CompareAndSwap(old, s) {
			f.stamp.record(fi)
		}
	}, nil
}

// FailFloor is the least time a refused NAME:SECRET takes to be refused,
// whether the name is unknown (no hash is computed) or the secret wrong (a
// bcrypt check): both look the same from outside, and unknown names cost
// no CPU. A variable for tests.
var FailFloor = 250 * time.Millisecond

// authenticate checks NAME:SECRET for a client that wants agentID.
func (f *ClientsFile) authenticate(name, secret, agentID string) (*Identity, error) {
	start := time.Now()
	id, err := f.verify(name, secret, agentID)
	if err != nil && errors.Is(err, errBadSecret) {
		// Unknown name and wrong secret alike: refused no sooner than
		// FailFloor after the start (a sleep, not CPU).
		if d := FailFloor - time.Since(start); d > 0 {
			time.Sleep(d)
		}
		return nil, deny("client %s: unknown client or wrong secret", quoteIfOdd(name))
	}
	return id, err
}

var errBadSecret = errors.New("unknown client or wrong secret")

func (f *ClientsFile) verify(name, secret, agentID string) (*Identity, error) {
	set := f.cur.Load()
	c := set.clients[name]
	if c == nil || len(secret) == 0 || len(secret) > maxSecret {
		return nil, errBadSecret
	}
	key := cacheKey(c, secret)
	switch set.cache.get(key) {
	case cacheBad:
		return nil, errBadSecret
	case cacheUnknown:
		f.sem <- struct{}{}
		err := bcrypt.CompareHashAndPassword(c.hash, []byte(secret))
		<-f.sem
		if err != nil {
			set.cache.put(key, cacheBad)
			return nil, errBadSecret
		}
		set.cache.put(key, cacheGood)
	}
	return f.identity(c, KindClient, agentID)
}

// byCert returns the identity of the client named by a certificate's CN,
// or nil if no client has that name.
func (f *ClientsFile) byCert(cn, agentID string) (*Identity, error) {
	c := f.cur.Load().clients[cn]
	if c == nil {
		return nil, nil
	}
	return f.identity(c, KindCert, agentID)
}

// identity checks c's policy for agentID now and returns its identity.
func (f *ClientsFile) identity(c *fileClient, kind, agentID string) (*Identity, error) {
	if !c.expires.IsZero() && !time.Now().Before(c.expires) {
		return nil, deny("client %s expired at %s", c.name, c.expires.UTC().Format(time.RFC3339))
	}
	if !c.agents.Match(agentID) {
		return nil, deny("client %s may not use agent %s", c.name, quoteIfOdd(agentID))
	}
	hash := c.hash
	return &Identity{
		Kind: kind, Name: c.name, Expires: c.expires, Metric: c.name, destinations: c.dests,
		check: func(agentID, hostport string) error {
			now := f.cur.Load().clients[c.name]
			switch {
			case now == nil:
				return revoked("client %s was removed from %s", c.name, filepath.Base(f.path))
			case kind == KindClient && !bytes.Equal(now.hash, hash):
				return revoked("client %s's secret changed", c.name)
			case !now.expires.IsZero() && !time.Now().Before(now.expires):
				return revoked("client %s expired at %s", c.name, now.expires.UTC().Format(time.RFC3339))
			case !now.agents.Match(agentID):
				return revoked("client %s may no longer use agent %s", c.name, agentID)
			case hostport != "" && !now.dests.Empty() && !now.dests.AllowedHostPort(hostport):
				return revoked("client %s may no longer reach %s", c.name, hostport)
			}
			return nil
		},
	}, nil
}

// verifyCache remembers the outcome of bcrypt checks, keyed by a hash of
// the client, its stored hash and the secret tried: a client opening many
// tunnels pays the check once, and so does a stranger repeating a wrong
// secret. Bounded: successes up to maxGood (only a right secret adds one),
// failures up to maxBad, forgotten all at once when full. A reload starts
// a new cache.
type verifyCache struct {
	mu   sync.Mutex
	good map[[32]byte]struct{}
	bad  map[[32]byte]struct{}
}

const (
	maxGood = 4096
	maxBad  = 4096
)

type cacheState int

const (
	cacheUnknown cacheState = iota
	cacheGood
	cacheBad
)

func newVerifyCache() *verifyCache {
	return &verifyCache{good: map[[32]byte]struct{}{}, bad: map[[32]byte]struct{}{}}
}

func cacheKey(c *fileClient, secret string) [32]byte {
	h := sha256.New()
	h.Write([]byte(c.name))
	h.Write([]byte{0})
	h.Write(c.hash)
	h.Write([]byte{0})
	h.Write([]byte(secret))
	var k [32]byte
	h.Sum(k[:0])
	return k
}

func (c *verifyCache) get(k [32]byte) cacheState {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.good[k]; ok {
		return cacheGood
	}
	if _, ok := c.bad[k]; ok {
		return cacheBad
	}
	return cacheUnknown
}

func (c *verifyCache) put(k [32]byte, s cacheState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, limit := c.good, maxGood
	if s == cacheBad {
		m, limit = c.bad, maxBad
	}
	if len(m) >= limit {
		clear(m)
	}
	m[k] = struct{}{}
}

// NewClientSecret returns a random secret for a client: 24 random bytes,
// base64url (32 characters).
func NewClientSecret() string {
	b := make([]byte, 24)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// ClientSpec is a client to add to a clients file.
type ClientSpec struct {
	Name         string
	Agents       []string
	Destinations []string
	// Expires, if not zero, is when the client stops being accepted.
	Expires time.Time
	// Cost is the bcrypt cost; zero means ClientSecretCost.
	Cost int
}

// AddClient adds a client with a new random secret to the clients file
// at path, creating it (mode 0600) if needed, and returns the secret. The
// file is replaced atomically; comments in it are not kept.
func AddClient(path string, spec ClientSpec) (string, error) {
	if err := CheckClientName(spec.Name); err != nil {
		return "", fmt.Errorf("name %q: %w", spec.Name, err)
	}
	agents, err := ParseAgentPatterns(spec.Agents)
	if err != nil {
		return "", err
	}
	var dests []string
	if len(spec.Destinations) > 0 {
		l, err := allow.Parse(spec.Destinations)
		if err != nil {
			return "", err
		}
		if !l.Empty() {
			dests = splitPatterns(spec.Destinations)
		}
	}
	doc, err := readDoc(path, true)
	if err != nil {
		return "", err
	}
	for _, e := range doc.Clients {
		if e.Name == spec.Name {
			return "", fmt.Errorf("%s: client %s exists; remove it first to replace it", path, spec.Name)
		}
	}
	cost := spec.Cost
	if cost == 0 {
		cost = ClientSecretCost
	}
	secret := NewClientSecret()
	hash, err := bcrypt.GenerateFromPassword([]byte(secret), cost)
	if err != nil {
		return "", err
	}
	e := clientEntry{Name: spec.Name, SecretHash: string(hash), Agents: agents, Destinations: dests}
	if !spec.Expires.IsZero() {
		e.Expires = spec.Expires.UTC().Format(time.RFC3339)
	}
	doc.Clients = append(doc.Clients, e)
	return secret, writeDoc(path, doc)
}

// RemoveClient removes the client name from the clients file at path.
func RemoveClient(path, name string) error {
	doc, err := readDoc(path, false)
	if err != nil {
		return err
	}
	kept := doc.Clients[:0]
	found := false
	for _, e := range doc.Clients {
		if e.Name == name {
			found = true
			continue
		}
		kept = append(kept, e)
	}
	if !found {
		return fmt.Errorf("%s: no client %q", path, name)
	}
	doc.Clients = kept
	return writeDoc(path, doc)
}

func splitPatterns(elems []string) []string {
	var out []string
	for _, e := range elems {
		for p := range strings.SplitSeq(e, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

// readDoc reads the file at path and checks it parses; a missing file is
// an empty one if missingOK.
func readDoc(path string, missingOK bool) (*clientsDoc, error) {
	data, err := readBounded(path, MaxClientsFileBytes)
	if errors.Is(err, os.ErrNotExist) && missingOK {
		return &clientsDoc{}, nil
	}
	if err != nil {
		return nil, err
	}
	if _, err := ParseClients(data); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var doc clientsDoc
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &doc, nil
}

// writeDoc replaces the file at path with doc, atomically, mode 0600.
func writeDoc(path string, doc *clientsDoc) error {
	data, err := yaml.Marshal(doc)
	if err != nil {
		return err
	}
	data = append([]byte("# reverse-http clients file (--auth.clients.file); see docs/auth.md\n"), data...)
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
