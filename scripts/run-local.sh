#!/usr/bin/env bash
# Starts a proxy and agent 4711 on this machine with a fresh local CA, in the
# foreground. Ctrl-C stops both. Used by `make run`.
set -euo pipefail
bin=${1:-bin/reverse-http}
dir=.run
mkdir -p "$dir"
"$bin" certs --dir "$dir/certs" >/dev/null

pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped proxy and agent"
  exit 0
}
trap stop INT TERM EXIT

"$bin" proxy \
  --agent-server.listen-address=localhost:4242 \
  --agent-server.tls.file.cert="$dir/certs/proxy.pem" \
  --agent-server.tls.file.key="$dir/certs/proxy-key.pem" \
  --http-proxy.listen-address=localhost:3128 \
  --metrics.listen-address=localhost:9090 &
pids+=($!)
"$bin" agent \
  --auth.noauth.agent-id=4711 \
  --agent-client.server-address=localhost:4242 \
  --agent-client.tls.file.root-ca="$dir/certs/ca.pem" &
pids+=($!)

cat <<'MSG'

  reverse-http is running: proxy on localhost:3128 (clients) and UDP localhost:4242 (agents), agent 4711.
  Try it (this one goes through agent 4711 to the proxy's own metrics endpoint, no internet needed):

    curl -x http://4711:noauth@localhost:3128 http://localhost:9090/metrics

  or, with internet access:

    curl -x http://4711:noauth@localhost:3128 https://example.com/

  Ctrl-C stops both.

MSG
wait -n "${pids[@]}"
