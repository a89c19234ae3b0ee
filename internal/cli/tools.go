package cli

import (
	"crypto"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/reverse-http/reverse-http/internal/allow"
	"github.com/reverse-http/reverse-http/internal/auth"
	"github.com/reverse-http/reverse-http/internal/tlsconf"
)

// AuthCmd is `reverse-http auth`.
type AuthCmd struct {
	Key struct {
		Private AuthKeyPrivateCmd `cmd:"" name:"private" help:"Generate a private key."`
		Public  AuthKeyPublicCmd  `cmd:"" name:"public" help:"Derive the public key from a private key."`
	} `cmd:"" name:"key" help:"Key tools."`
	JWT struct {
		Token AuthJWTTokenCmd `cmd:"" name:"token" help:"Sign a token."`
	} `cmd:"" name:"jwt" help:"JWT tools."`
	Client struct {
		Add    AuthClientAddCmd    `cmd:"" name:"add" help:"Add a client with a new random secret to a clients file (--auth.clients.file) and print NAME:SECRET, its password, once."`
		Remove AuthClientRemoveCmd `cmd:"" name:"remove" help:"Remove a client from a clients file; a proxy watching it refuses the client and closes its tunnels within a second."`
	} `cmd:"" name:"client" help:"Clients file tools."`
}

// AuthClientAddCmd is `reverse-http auth client add`.
type AuthClientAddCmd struct {
	File         string        `required:"" placeholder:"FILE" help:"The clients file; created (mode 0600) if missing."`
	Agents       []string      `required:"" placeholder:"PATTERNS" help:"Agents the client may use: agent IDs, or patterns with '*' ('*' for all); comma-separated or repeated."`
	Destinations []string      `placeholder:"PATTERNS" help:"Destinations the client may reach, as allowlist patterns (comma-separated or repeated); empty: every destination the node allows."`
	Expires      time.Duration `placeholder:"DURATION" help:"The client expires this long from now (0: never)."`
	Name         string        `arg:"" help:"The client's name: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit."`
}

func (c *AuthClientAddCmd) Run(e *Env) error {
	if c.Expires < 0 {
		return fmt.Errorf("--expires: must not be negative, got %s", c.Expires)
	}
	spec := auth.ClientSpec{Name: c.Name, Agents: c.Agents, Destinations: c.Destinations}
	if err := auth.CheckClientName(c.Name); err != nil {
		return fmt.Errorf("NAME: %w", err)
	}
	if _, err := auth.ParseAgentPatterns(c.Agents); err != nil {
		return fmt.Errorf("--agents: %w", err)
	}
	if _, err := allow.Parse(c.Destinations); err != nil {
		return fmt.Errorf("--destinations: %w", err)
	}
	if c.Expires > 0 {
		spec.Expires = time.Now().Add(c.Expires)
	}
	secret, err := auth.AddClient(c.File, spec)
	if err != nil {
		return fmt.Errorf("--file: %w", err)
	}
	fmt.Fprintln(e.Stdout, c.Name+":"+secret)
	return nil
}

// AuthClientRemoveCmd is `reverse-http auth client remove`.
type AuthClientRemoveCmd struct {
	File string `required:"" placeholder:"FILE" help:"The clients file."`
	Name string `arg:"" help:"The client's name."`
}

func (c *AuthClientRemoveCmd) Run(e *Env) error {
	if err := auth.RemoveClient(c.File, c.Name); err != nil {
		return fmt.Errorf("--file: %w", err)
	}
	return nil
}

// AuthKeyPrivateCmd is `reverse-http auth key private`.
type AuthKeyPrivateCmd struct {
	Algo string `enum:"RS256,ES256" default:"ES256" help:"Key type. One of: [RS256, ES256]."`
	Out  string `name:"out" short:"o" default:"auth-key-private.pem" placeholder:"FILE" help:"Where to write the private key; '-' for stdout."`
}

func (c *AuthKeyPrivateCmd) Run(e *Env) error {
	key, err := auth.GenerateKey(c.Algo)
	if err != nil {
		return fmt.Errorf("--algo: %w", err)
	}
	pem, err := auth.MarshalPrivateKey(key)
	if err != nil {
		return err
	}
	return auth.WriteOutput(c.Out, pem, 0o600, e.Stdout)
}

// AuthKeyPublicCmd is `reverse-http auth key public`.
type AuthKeyPublicCmd struct {
	In  string `name:"in" short:"i" default:"auth-key-private.pem" placeholder:"FILE" help:"The private key; '-' for stdin."`
	Out string `name:"out" short:"o" default:"auth-key-public.pem" placeholder:"FILE" help:"Where to write the public key; '-' for stdout."`
}

func (c *AuthKeyPublicCmd) Run(e *Env) error {
	key, err := readPrivateKey(c.In, e)
	if err != nil {
		return err
	}
	pem, err := auth.MarshalPublicKey(key.Public())
	if err != nil {
		return err
	}
	return auth.WriteOutput(c.Out, pem, 0o644, e.Stdout)
}

func readPrivateKey(name string, e *Env) (crypto.Signer, error) {
	data, err := auth.ReadInput(name, e.Stdin)
	if err != nil {
		return nil, fmt.Errorf("--in: %w", err)
	}
	key, err := auth.ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("--in %q: %w", name, err)
	}
	return key, nil
}

// AuthJWTTokenCmd is `reverse-http auth jwt token`.
type AuthJWTTokenCmd struct {
	AgentID      []string      `name:"agent-id" required:"" sep:"none" placeholder:"ID" help:"The agent ID the token is for. A client token may name several (repeat it) and patterns with '*'."`
	Destinations []string      `placeholder:"PATTERNS" help:"Client tokens: destinations the client may reach, as allowlist patterns (comma-separated or repeated); empty: every destination the proxy allows."`
	Role         string        `enum:"client,agent" default:"client" help:"Who uses the token. One of: [client, agent]."`
	Audience     string        `help:"Audience (aud) to put in the token."`
	Duration     time.Duration `default:"24h" help:"How long the token is valid."`
	In           string        `name:"in" short:"i" default:"auth-key-private.pem" placeholder:"FILE" help:"The private key; '-' for stdin."`
	Out          string        `name:"out" short:"o" default:"jwt.b64" placeholder:"FILE" help:"Where to write the token; '-' for stdout."`
}

func (c *AuthJWTTokenCmd) Run(e *Env) error {
	if c.Duration <= 0 {
		return fmt.Errorf("--duration: must be positive, got %s", c.Duration)
	}
	key, err := readPrivateKey(c.In, e)
	if err != nil {
		return err
	}
	if len(c.Destinations) > 0 && c.Role != auth.RoleClient {
		return errors.New("--destinations: only client tokens (--role client) have them")
	}
	if _, err := allow.Parse(c.Destinations); err != nil {
		return fmt.Errorf("--destinations: %w", err)
	}
	token, err := auth.Sign(key, auth.TokenOptions{Agents: c.AgentID, Role: c.Role, Audience: c.Audience, Duration: c.Duration,
		Destinations: c.Destinations})
	if err != nil {
		return fmt.Errorf("--agent-id: %w", err)
	}
	return auth.WriteOutput(c.Out, []byte(token), 0o600, e.Stdout)
}

// CertsCmd is `reverse-http certs`.
type CertsCmd struct {
	Dir     string   `default:"certs" placeholder:"DIR" help:"Directory to write ca.pem, proxy.pem, proxy-key.pem, agent.pem, agent-key.pem into."`
	Host    []string `default:"localhost,127.0.0.1,::1" help:"Names and addresses the proxy certificate is valid for."`
	AgentID []string `name:"agent-id" sep:"none" placeholder:"ID" help:"Also write agent-ID.pem and agent-ID-key.pem, a client certificate for this agent ID (CN ID, URI SAN urn:reverse-http:agent:ID) for --agent-server.tls.agent-id-from-cert. Repeat for more agents."`
	Force   bool     `help:"Overwrite existing files."`
}

func (c *CertsCmd) Run(e *Env) error {
	// Check every ID before writing anything.
	for _, id := range c.AgentID {
		if err := auth.CheckAgentID(id); err != nil {
			return fmt.Errorf("--agent-id %q: %w", id, err)
		}
		if _, _, err := tlsconf.AgentCertFiles(id); err != nil {
			return fmt.Errorf("--agent-id %q: %w", id, err)
		}
	}
	files, err := tlsconf.WriteLocalPKI(c.Dir, c.Host, c.Force)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		fmt.Fprintf(e.Stdout, "%s: certificates exist and verify; kept them (use --force to replace)\n", c.Dir)
	}
	for _, f := range files {
		fmt.Fprintln(e.Stdout, "wrote", f)
	}
	for _, id := range c.AgentID {
		// A new CA invalidates the agent certificates of the old one.
		written, err := tlsconf.WriteAgentCert(c.Dir, id, c.Force || len(files) > 0)
		if err != nil {
			return fmt.Errorf("--agent-id %q: %w", id, err)
		}
		if len(written) == 0 {
			cert, _, _ := tlsconf.AgentCertFiles(id)
			fmt.Fprintf(e.Stdout, "%s: exists and verifies for agent %s; kept it (use --force to replace)\n", filepath.Join(c.Dir, cert), id)
		}
		for _, f := range written {
			fmt.Fprintln(e.Stdout, "wrote", f)
		}
	}
	return nil
}
