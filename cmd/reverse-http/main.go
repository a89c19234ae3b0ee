// Command reverse-http is a reverse HTTP proxy over QUIC: agents inside
// private networks dial out to a proxy, and HTTP clients reach services in
// those networks through the proxy.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/reverse-http/reverse-http/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
