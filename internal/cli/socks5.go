package cli

import (
	"net"

	"github.com/reverse-http/reverse-http/internal/allow"
)

// SOCKS5Config is --socks5.* on proxy and lb. Its variables are named
// here: kong.DefaultEnvars splits "socks5" at the digit (SOCKS_5).
type SOCKS5Config struct {
	ListenAddress string `env:"REVERSE_HTTP_SOCKS5_LISTEN_ADDRESS" placeholder:"ADDR" help:"Also serve SOCKS5 (RFC 1928 CONNECT, RFC 1929 username/password: user = agent ID, password = noauth, a client token of at most 255 bytes, or NAME:SECRET with --auth.clients.file) on this TCP address (empty = off). Same auth, allowlist, limits and routing as the HTTP proxy; domain names are resolved by the agent."`
}

// logSOCKS5 says where SOCKS5 clients connect, if they can.
func logSOCKS5(e *Env, addr net.Addr, authType string, allowList *allow.List) {
	if addr == nil {
		return
	}
	e.Log.Info("socks5 proxy listening", "address", addr.String(), "auth", authType, "allowlist", allowList.String())
}
