// Command reverse-http is a reverse HTTP proxy over QUIC: agents inside
// private networks dial out to a proxy, and HTTP clients reach services in
// those networks through the proxy.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/reverse-http/reverse-http/internal/cli"
)

// The first SIGINT or SIGTERM starts a graceful stop (--shutdown-timeout);
// a second one exits at once, with status 1.
func main() {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		cancel()
		sig := <-sigs
		fmt.Fprintf(os.Stderr, "reverse-http: second signal (%v) during the graceful stop: exiting at once\n", sig)
		os.Exit(1)
	}()
	code := cli.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	signal.Stop(sigs) // a signal now must not change the exit status
	cancel()
	os.Exit(code)
}
