package main

import (
	"context"
	"fmt"
	"time"
)

// transportRun measures agents over TCP (the fallback transport,
// --agent-client.transport=tcp) against agents over QUIC, in the same run:
// a new tunnel's latency, samples alternating between the two pairs, and
// one tunnel's download and upload throughput, the transfers alternating.
func transportRun(ctx context.Context, b *bench, r *runRecorder) error {
	ready := func(ctx context.Context, httpAddr string) (*httpConn, error) {
		return dialTunnel(ctx, httpAddr, agentID, b.origin.echo)
	}
	q, err := b.startPairFlags(ctx, ready, nil, []string{"--agent-client.transport=quic"})
	if err != nil {
		return err
	}
	defer q.stop()
	t, err := b.startPairFlags(ctx, ready, nil, []string{"--agent-client.transport=tcp"})
	if err != nil {
		return err
	}
	defer t.stop()
	dial := func(p *pair) func(context.Context) (*httpConn, error) {
		return func(ctx context.Context) (*httpConn, error) {
			return dialTunnel(ctx, p.httpAddr, agentID, b.origin.http)
		}
	}
	lat, err := newConnLatency(ctx, b.cfg.LatencyN, dial(t), dial(q))
	if err != nil {
		return fmt.Errorf("new tunnels: %w", err)
	}
	r.latency("transport.new.tcp", "agent over TCP: new tunnel: CONNECT + GET /small + close", lat[0])
	r.latency("transport.new.quic", "agent over QUIC, alternating: same", lat[1])

	down, up := b.cfg.Download, b.cfg.Upload
	for _, tr := range []struct {
		name string
		p    *pair
	}{{"quic", q}, {"tcp", t}} {
		c, err := dial(tr.p)(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", tr.name, err)
		}
		start := time.Now()
		err = c.download(down)
		took := time.Since(start)
		if err == nil {
			r.add("transport.download."+tr.name, "agent over "+tr.name+": 1 tunnel, download "+formatSize(down), "MB/s", mbps(down, took))
			start = time.Now()
			err = c.upload(up)
			r.add("transport.upload."+tr.name, "agent over "+tr.name+": 1 tunnel, upload "+formatSize(up), "MB/s", mbps(up, time.Since(start)))
		}
		c.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", tr.name, err)
		}
	}
	return nil
}
