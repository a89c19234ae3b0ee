package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// The TCP relay chain is the tunnel's process topology without QUIC:
// client → relay → relay → origin, each relay a helper process
// (`rh-bench tcp-relay`) that copies bytes both ways with io.Copy. It
// shows what four processes passing each message along cost on this
// machine, whatever carries the bytes between the middle two.

// tcpRelayMain listens on one loopback port per address in -to, prints
// "relay ADDR" for each in that order, and relays every connection it
// accepts on a port to that port's address until its stdin closes.
func tcpRelayMain(args []string) error {
	fs := flag.NewFlagSet("tcp-relay", flag.ContinueOnError)
	to := fs.String("to", "", "comma-separated addresses to relay to, one listening port each")
	if err := fs.Parse(args); err != nil {
		return err
	}
	targets := strings.Split(*to, ",")
	errc := make(chan error, len(targets))
	for _, target := range targets {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		fmt.Printf("relay %s\n", ln.Addr())
		go func() { errc <- relayTo(ln, target) }()
	}
	go exitWithStdin()
	return <-errc
}

func relayTo(ln net.Listener, target string) error {
	return serveConns(ln, func(c net.Conn) {
		d, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer d.Close()
		go func() {
			io.Copy(d, c)
			d.(*net.TCPConn).CloseWrite()
		}()
		io.Copy(c, d)
	})
}

// chain is a running client-side relay of a two-relay chain: its HTTP
// and echo addresses lead to the origin's.
type chain struct {
	http, echo string
	relays     []*proc
}

func (c *chain) stop() {
	for _, p := range c.relays {
		p.stop(time.Second)
	}
}

// startChain starts the two relays, the second one first.
func (b *bench) startChain(ctx context.Context) (*chain, error) {
	c := &chain{http: b.origin.http, echo: b.origin.echo}
	for range 2 {
		p, err := b.procs.start("tcp-relay", true, strings.Fields(b.cfg.Env), b.self, "tcp-relay", "-to", c.http+","+c.echo)
		if err != nil {
			c.stop()
			return nil, err
		}
		c.relays = append(c.relays, p)
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		var addrs []string
		for range 2 {
			line, err := p.readLine(rctx)
			addr, ok := strings.CutPrefix(line, "relay ")
			if err != nil || !ok {
				cancel()
				c.stop()
				return nil, fmt.Errorf("tcp-relay: %q, %v", line, err)
			}
			addrs = append(addrs, addr)
		}
		cancel()
		c.http, c.echo = addrs[0], addrs[1]
	}
	return c, nil
}
