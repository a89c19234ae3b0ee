package cli

import (
	"crypto"
	"fmt"
	"path/filepath"
	"time"

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
	AgentID  string        `name:"agent-id" required:"" help:"The agent ID the token is for."`
	Role     string        `enum:"client,agent" default:"client" help:"Who uses the token. One of: [client, agent]."`
	Audience string        `help:"Audience (aud) to put in the token."`
	Duration time.Duration `default:"24h" help:"How long the token is valid."`
	In       string        `name:"in" short:"i" default:"auth-key-private.pem" placeholder:"FILE" help:"The private key; '-' for stdin."`
	Out      string        `name:"out" short:"o" default:"jwt.b64" placeholder:"FILE" help:"Where to write the token; '-' for stdout."`
}

func (c *AuthJWTTokenCmd) Run(e *Env) error {
	if c.Duration <= 0 {
		return fmt.Errorf("--duration: must be positive, got %s", c.Duration)
	}
	key, err := readPrivateKey(c.In, e)
	if err != nil {
		return err
	}
	token, err := auth.Sign(key, auth.TokenOptions{AgentID: c.AgentID, Role: c.Role, Audience: c.Audience, Duration: c.Duration})
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
