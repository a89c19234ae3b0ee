package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// With -pprof, proxy and agent serve /debug/pprof/ on their admin port
// and the first run of each phase saves profiles of them while it
// measures. The files are named PHASE-WHAT-PROCESS.pprof; Go profiles
// carry their symbols, so `go tool pprof -top FILE` reads them as they are.

// metricsFlag gives a process an admin listener with pprof on a free
// loopback port when profiles are wanted; it returns the flags to add and
// the address. A listener already in extra (-proxy-flags, -agent-flags)
// is used as it is.
func (b *bench) metricsFlag(extra string) ([]string, string, error) {
	if b.cfg.PprofDir == "" {
		return nil, "", nil
	}
	pprof := []string{"--admin.pprof"}
	if strings.Contains(extra, "--admin.pprof") {
		pprof = nil
	}
	for _, f := range strings.Fields(extra) {
		for _, flag := range []string{"--admin.listen-address=", "--metrics.listen-address="} {
			if addr, ok := strings.CutPrefix(f, flag); ok {
				if strings.HasPrefix(addr, ":") {
					addr = "127.0.0.1" + addr
				}
				return pprof, addr, nil
			}
		}
	}
	port, err := freePort("tcp")
	if err != nil {
		return nil, "", err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	return append(pprof, "--admin.listen-address="+addr), addr, nil
}

// profiling reports whether r's run takes profiles.
func (b *bench) profiling(r *runRecorder) bool { return b.cfg.PprofDir != "" && r.run == 0 }

// cpuProfile starts CPU profiles of procs lasting d, for r's first run
// only. what names the measurement. The returned function waits until the
// profiles are written. A profile that fails is a note, not an error: the
// figures stand without it.
func (b *bench) cpuProfile(ctx context.Context, r *runRecorder, what string, d time.Duration, procs ...*proc) (wait func()) {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	return b.fetchProfiles(ctx, r, what+"-cpu", fmt.Sprintf("profile?seconds=%d", secs), time.Duration(secs)*time.Second, procs)
}

// heapProfile saves heap profiles (after a GC) of procs, for r's first
// run only.
func (b *bench) heapProfile(ctx context.Context, r *runRecorder, what string, procs ...*proc) {
	b.fetchProfiles(ctx, r, what+"-heap", "heap?gc=1", 0, procs)()
}

func (b *bench) fetchProfiles(ctx context.Context, r *runRecorder, what, query string, d time.Duration, procs []*proc) (wait func()) {
	if !b.profiling(r) {
		return func() {}
	}
	var wg sync.WaitGroup
	for _, p := range procs {
		if p.metrics == "" {
			continue
		}
		path := filepath.Join(b.cfg.PprofDir, fmt.Sprintf("%s-%s-%s.pprof", r.phase, what, p.name))
		wg.Go(func() {
			if err := fetchTo(ctx, "http://"+p.metrics+"/debug/pprof/"+query, path, d+30*time.Second); err != nil {
				b.rep.notes([]string{fmt.Sprintf("pprof %s: %v", path, err)})
				return
			}
			fmt.Fprintln(os.Stderr, "   profile:", path)
		})
	}
	return wg.Wait
}

// fetchTo writes the body of url to path.
func fetchTo(ctx context.Context, url, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s", resp.Status, body)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
