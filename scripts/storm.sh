#!/usr/bin/env bash
# A reconnect storm against one proxy: N agents (e2e/fleet, real agents, 50
# to a UDP socket) start over RAMP against a fresh proxy on loopback, once
# per value of --limits.agent-handshakes-in-flight in BOUNDS, RUNS times
# each. For every run it prints how long until all were connected, how
# many connection attempts failed, and how many connections ended after
# they had authenticated (connected agents dropped along the way). With
# HOLD=SECONDS it then leaves them idle that long and reports how many
# connected agents dropped meanwhile.
#
#   scripts/storm.sh                      # N=10000 RAMP=30s BOUNDS="512 128 0" RUNS=3
#   N=2000 RAMP=5s BOUNDS="512 0" RUNS=1 scripts/storm.sh
#
# Each run is bounded (DEADLINE, 180s) and stops what it started by PID.
set -euo pipefail
n=${N:-10000}
ramp=${RAMP:-30s}
bounds=${BOUNDS:-512 128 0}
runs=${RUNS:-3}
hold=${HOLD:-0}
deadline=${DEADLINE:-180}
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
go build -o "$tmp/reverse-http" ./cmd/reverse-http
go build -o "$tmp/fleet" ./e2e/fleet
"$tmp/reverse-http" certs --dir "$tmp/certs" >/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# stats prints "connected connections ended" from the fleet's /stats.
stats() {
  curl -fsS "http://$1/stats" | python3 -c 'import json,sys
d=json.load(sys.stdin); m=d["messages"]
print(d["connected"], m.get("connected to proxy",0), sum(v for k,v in m.items() if k!="connected to proxy"), int(d.get("sched_latency_max_ms",0)))'
}

printf '%-8s %-4s %-12s %-16s %-16s %s\n' bound run "all in (s)" "failed attempts" "dropped agents" "load generator's longest scheduling wait (ms)"
for bound in $bounds; do
  for run in $(seq 1 "$runs"); do
    port=$(free_port); http=$(free_port); statsaddr=127.0.0.1:$(free_port)
    "$tmp/reverse-http" proxy --agent-server.listen-address="127.0.0.1:$port" \
      --agent-server.tcp.listen-address= --http-proxy.listen-address="127.0.0.1:$http" \
      --agent-server.tls.file.cert="$tmp/certs/proxy.pem" --agent-server.tls.file.key="$tmp/certs/proxy-key.pem" \
      --limits.agent-handshakes-in-flight="$bound" 2>"$tmp/proxy.log" &
    proxy=$!; pids+=("$proxy")
    sleep 1
    "$tmp/fleet" -server "127.0.0.1:$port" -ca "$tmp/certs/ca.pem" -n "$n" -prefix storm- -ramp "$ramp" \
      -per-socket 50 -stats "$statsaddr" -duration "${deadline}s" >/dev/null 2>&1 &
    fleet=$!; pids+=("$fleet")
    start=$(date +%s.%N)
    took=timeout
    while (( $(date +%s) - ${start%.*} < deadline )); do
      sleep 1
      read -r connected conns ended wait < <(stats "$statsaddr" 2>/dev/null || echo "0 0 0 0")
      if [[ $connected == "$n" ]]; then
        took=$(python3 -c "import time; print(f'{time.time()-$start:.1f}')")
        break
      fi
    done
    read -r connected conns ended wait < <(stats "$statsaddr")
    # Attempts that failed: the agents' log lines other than "connected",
    # less one "connection to proxy ended" per connection that ended.
    dropped=$((conns - connected))
    printf '%-8s %-4s %-12s %-16s %-16s %s\n' "$bound" "$run" "$took" "$((ended - dropped))" "$dropped" "$wait"
    if (( hold > 0 )); then
      sleep "$hold"
      read -r connected2 conns2 ended2 wait2 < <(stats "$statsaddr")
      echo "  idle ${hold}s: $((conns2 - conns)) reconnections, $connected2 connected at the end, longest wait to run ${wait2}ms"
    fi
    kill "$fleet" "$proxy" 2>/dev/null || true
    wait "$fleet" "$proxy" 2>/dev/null || true
    pids=()
  done
done
